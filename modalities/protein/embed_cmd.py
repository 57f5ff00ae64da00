"""``foundry protein embed`` and ``foundry protein contacts``: run a protein LM over sequences.

    foundry protein embed --model esm2_t6_8M.pt proteins.fasta -o emb/ --layers 0,6,-1
    foundry protein contacts --model esm2_t6_8M.pt 1a8o.pdb -o contacts/      # prints P@L/5 etc.

``--model`` takes a foundry model directory, a fair-esm ``.pt`` (its ``-contact-regression.pt``
beside it gives the contact head) or an HF ESM directory. The work is in ``embed.py``.
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
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--chain", default=None, help="Structure input: author chain id (default: first protein chain).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
def contacts_command(model, batch_tokens, device, dtype, input_path, out, chain, overwrite):
    """Predicted contact maps (.npy + .png) for FASTA records or PDB/mmCIF chains.

    For structures the true contacts (Cβ < 8 Å) are drawn in the lower triangle of the picture
    and precision at L, L/2, L/5 by separation range is printed and written to metrics.tsv.
    """
    from .embed import contact_inputs, run_contacts

    if out.exists() and not overwrite:
        raise FoundryError(f"{out}: already exists (pass --overwrite to replace it)")
    items = contact_inputs(input_path, chain)
    pm = _model(model, device, dtype)
    run_contacts(pm, items, out, batch_tokens, echo=click.echo)
    click.echo(f"{len(items)} contact maps -> {out}")
