"""``foundry protein embed`` and ``foundry protein contacts``: run a protein LM over sequences.

    foundry protein embed --model esm2_t6_8M.pt proteins.fasta -o emb/ --layers 0,6,-1
    foundry protein contacts --model esm2_t6_8M.pt 1a8o.pdb -o contacts/      # prints P@L/5 etc.
    foundry protein contacts --model runs/protein/final --fit train_pdbs/    # fit + save a contact head
    foundry protein contacts --model runs/protein/final test_pdbs/ -o c/     # then use it

``--model`` takes a foundry model directory, a fair-esm ``.pt`` (its ``-contact-regression.pt``
beside it gives the contact head) or an HF ESM directory. The work is in ``embed.py`` and
``contact_fit.py``.
"""

from __future__ import annotations

from pathlib import Path

import click

from foundry.errors import FoundryError

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _parse_layers(values: tuple[str, ...]) -> list[int]:
    layers = []
    for value in values:
        for part in value.replace(",", " ").split():
            try:
                layers.append(int(part))
            except ValueError:
                raise FoundryError(f"--layers {value!r}: expected integers such as 0,6,-1") from None
    return layers or [-1]


def _model(model, device, dtype):
    import torch

    from .embed import load_protein_model, pick_device

    dev = pick_device(device)
    if dev.type == "cpu" and dtype != "float32":
        raise FoundryError(f"--dtype {dtype} is for CUDA; on CPU use float32")
    return load_protein_model(model, dev, getattr(torch, _DTYPES[dtype]))


def _common(fn):
    fn = click.option("--dtype", type=click.Choice(list(_DTYPES)), default="float32", show_default=True,
                      help="Weights and activations precision (bfloat16/float16 on CUDA).")(fn)
    fn = click.option("--device", default="auto", show_default=True, help="auto (CUDA if available), cpu, cuda, cuda:1 ...")(fn)
    fn = click.option("--batch-tokens", type=click.IntRange(min=1), default=4096, show_default=True,
                      help="Padded tokens per batch (sequences are sorted by length first).")(fn)
    fn = click.option("--model", "model", required=True, help="Model dir, fair-esm .pt or HF ESM dir.")(fn)
    return fn


@click.command(name="embed")
@_common
@click.argument("fasta", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--layers", multiple=True, help="Layers: 0 = embeddings, -1 = last. '0,6,-1' or repeated. Default -1.")
@click.option("--format", "fmt", type=click.Choice(["safetensors", "npy"]), default="safetensors", show_default=True)
@click.option("--per-residue/--no-per-residue", default=True, show_default=True, help="Also write (L, D) per-residue arrays.")
@click.option("--truncate", type=click.IntRange(min=1), default=None, help="Keep only the first N residues (esm-extract uses 1022).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory (only once the new one is complete).")
def embed_command(model, batch_tokens, device, dtype, fasta, out, layers, fmt, per_residue, truncate, overwrite):
    """Per-residue and mean-pooled embeddings of every FASTA record, keyed by record id."""
    from .embed import run_embed

    if out.exists() and not overwrite:
        raise FoundryError(f"{out}: already exists (pass --overwrite to replace it)")
    layer_list = _parse_layers(layers)
    pm = _model(model, device, dtype)
    index = run_embed(pm, fasta, out, layer_list, fmt, per_residue, batch_tokens, truncate)
    n = len(index["records"])
    click.echo(f"{n} sequences, layers {index['layers']}, dim {index['dim']} on {pm.device} -> {out}")


@click.command(name="contacts")
@_common
@click.argument("input_path", metavar="[INPUT]", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output directory (with INPUT).")
@click.option("--chain", default=None, help="Structure input: author chain id (default: first protein chain).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--fit", "fit_path", type=click.Path(path_type=Path),
              help="Fit the contact head on these PDB/mmCIF files (a file or folder; a handful suffices) and save it "
                   "in the --model directory (Rao et al. 2020: L1 logistic regression on APC-corrected attention).")
@click.option("--l1", type=click.FloatRange(min=0), default=None,
              help="--fit: L1 strength on standardised attention features (larger keeps fewer maps); default: "
                   "chosen by cross-validation over the fit chains.")
@click.option("--replace-head", is_flag=True, help="--fit: replace the model's existing contact head.")
def contacts_command(model, batch_tokens, device, dtype, input_path, out, chain, overwrite, fit_path, l1, replace_head):
    """Predicted contact maps (.npy + .png) for FASTA records or PDB/mmCIF chains; with --fit,
    first fit the model's contact head on structures and save it with the model.

    For structures the true contacts (Cβ < 8 Å) are marked in the lower triangle of the picture
    and precision at L, L/2, L/5 by separation range is printed and written to metrics.tsv, each
    range beside its random rate (the fraction of contacts among its scored pairs).
    """
    from .embed import contact_inputs, run_contacts

    if fit_path is None and (l1 is not None or replace_head):
        raise FoundryError("--l1 and --replace-head apply to --fit")
    if input_path is None and fit_path is None:
        raise FoundryError("give INPUT (FASTA or structures) to predict, or --fit STRUCTURES to fit a contact head")
    if input_path is not None and out is None:
        raise FoundryError("-o/--out is required with INPUT (the folder for the maps)")
    if out is not None and input_path is None:
        raise FoundryError("-o/--out needs INPUT (FASTA or structures) to predict")
    if out is not None and out.exists() and not overwrite:
        raise FoundryError(f"{out}: already exists (pass --overwrite to replace it)")
    items = contact_inputs(input_path, chain) if input_path is not None else []
    pm = _model(model, device, dtype)
    if fit_path is not None:
        _fit(pm, model, fit_path, l1, replace_head)
    if input_path is not None:
        run_contacts(pm, items, out, batch_tokens, echo=click.echo)
        click.echo(f"{len(items)} contact maps -> {out}")


def _fit(pm, model, fit_path: Path, l1, replace_head: bool) -> None:
    from foundry.convert import detect_format
    from foundry.model.store import save_attachment

    from .contact_fit import fit_contact_head
    from .contact_head import ATTACHMENT, attach_contact_head, contact_head_of
    from .structures import read_structures

    directory = Path(pm.source)
    if detect_format(directory) != "foundry":
        raise FoundryError(f"--fit saves the contact head with the model, so --model must be a foundry model directory; "
                           f"{model} is not one (convert it first: foundry protein import {model} -o DIR)")
    if contact_head_of(pm.model) is not None and not replace_head:
        raise FoundryError(f"{directory}: the model already has a contact head; pass --replace-head to fit a new one")
    structures = list(read_structures(fit_path))
    head, report = fit_contact_head(pm, structures, l1)
    for note in report.notes + _signal_notes(report):
        click.echo(f"note: {note}", err=True)
    path = save_attachment(directory, ATTACHMENT, head)
    attach_contact_head(pm.model, head)
    how = ("chosen by cross-validation over chains" if report.l1_chosen_by_cv
           else "given" if l1 is not None else "the default: too few chains with long-range pairs to cross-validate")
    click.echo(f"fitted a contact head on {report.n_structures} structures ({report.n_pairs} residue pairs, "
               f"{report.n_contacts} contacts): {report.n_selected} of {report.n_features} attention maps kept "
               f"(L1 {report.l1:g}, {how}) -> {path}")
    if report.cv_long_precision is not None:
        click.echo(f"cross-validated long-range P@L/5 on the fit chains: {report.cv_long_precision:.3f} "
                   f"(random {_shown(report.random_long)}, sequence separation alone {_shown(report.separation_long)})")


def _shown(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _signal_notes(report) -> list[str]:
    """Say it when the attention carries no contact signal that carries over between chains."""
    cv, rate = report.cv_long_precision, report.random_long
    if cv is None or rate is None or cv >= 1.5 * rate:
        return []
    return [f"the head finds long-range contacts of chains it was not fitted on at about the random rate "
            f"({cv:.3f} vs {rate:.3f}): this model's attention carries little contact signal yet; train it longer "
            "(configs/protein/pretrain_small.yaml) before trusting its contact maps"]
