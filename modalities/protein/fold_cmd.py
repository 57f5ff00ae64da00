"""``foundry protein fold``: predicted structures for the records of a FASTA file.

    foundry protein fold --model runs/fold/best proteins.fasta -o pred/      # a foundry fold model
    foundry protein fold --model esmfold_v1/ proteins.fasta -o pred/         # transformers ESMFold dir

writes, for every record, ``pred/<record id>.pdb`` (one residue per input residue, numbered 1..L,
pLDDT in the B-factor column) and ``pred/<record id>.png`` (contact probability map and pLDDT
along the sequence), plus ``pred/summary.csv`` (id, length, mean_plddt) in input order. The record
id is the first word of the header, kept as it is (``d1or4a_``); characters unsafe in a file name
(``sp|P69905|HBA``) become ``_`` (``foundry.images.safe_names``), and summary.csv keeps the id.

``--model`` is a directory (or a hub id such as ``facebook/esmfold_v1`` already in the local
Hugging Face cache; nothing is downloaded): with a config.json naming ``EsmForProteinFolding`` it is run through
transformers (``fold/hf_folder.py``), otherwise it is a ``finetune --task fold`` model
(``fold/predictor.py``). The output folder is written complete or not at all; an existing folder
is refused unless empty or ``--overwrite``. A record longer than the model's limit is refused
before anything is folded, naming the record and the limit.
"""

from __future__ import annotations

from pathlib import Path

import click

from foundry.errors import CheckpointError, DataError, FoundryError

#: residue letters a folder accepts: the 20 standard ones and the ambiguous/rare ones (folded as X)
FOLDABLE = set("ACDEFGHIKLMNPQRSTVWY") | set("XBZUO")


def read_records(path: Path) -> list[tuple[str, str]]:
    """(id, SEQUENCE) per FASTA record, upper case, a final ``*`` (stop) dropped; other letters refused."""
    from .fasta import read_fasta

    records = []
    for number, doc in enumerate(read_fasta(path), start=1):
        seq = "".join(doc.text.split()).upper()
        seq = seq[:-1] if seq.endswith("*") else seq
        for pos, letter in enumerate(seq, start=1):
            if letter not in FOLDABLE:
                raise DataError(f"{path}: record {number} {doc.id!r}: {letter!r} at residue {pos} cannot be folded "
                                "(amino-acid letters only: the 20 standard ones and X, B, Z, U, O)")
        if not seq:
            raise DataError(f"{path}: record {number} {doc.id!r} has no residues")
        records.append((doc.id, seq))
    return records


def load_any_folder(model: Path, device, chunk_size: int | None):
    """The ``Folder`` for ``--model``: a transformers ESMFold directory or a foundry fold model."""
    from foundry.convert import resolve_model_path

    from .fold.hf_folder import HFEsmFolder, is_hf_esmfold

    model = resolve_model_path(model)  # a local path, or a hub id found in the local Hugging Face cache
    if not model.is_dir():
        raise CheckpointError(f"--model {model}: expected a model directory (a fine-tuned fold model or an "
                              "EsmForProteinFolding folder)")
    if is_hf_esmfold(model):
        return HFEsmFolder(model, device, chunk_size=chunk_size)
    try:
        from .fold.predictor import load_folder
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.fold.predictor":
            raise
        raise CheckpointError(f"--model {model}: not an EsmForProteinFolding directory, and this foundry "
                              "cannot load fine-tuned fold models") from None
    folder = load_folder(model, device)
    if chunk_size is not None and hasattr(folder, "chunk_size"):
        folder.chunk_size = chunk_size
    return folder


def check_lengths(records: list[tuple[str, str]], limit: int, fasta: Path, model: Path) -> None:
    for number, (rid, seq) in enumerate(records, start=1):
        if len(seq) > limit:
            raise DataError(f"{fasta}: record {number} {rid!r} has {len(seq)} residues; the model {model} folds "
                            f"at most {limit} (split the sequence into domains)")


def check_coordinates(prediction, model: Path) -> None:
    """Every residue needs a Cα: a PDB missing residues would break "one residue per input residue"."""
    import numpy as np

    missing = int((~np.isfinite(prediction.atoms[:, 1]).all(-1)).sum())
    if missing:
        raise CheckpointError(f"--model {model}: no Cα coordinates for {missing} of {len(prediction.sequence)} "
                              f"residues of record {prediction.id!r} (a model trained on distograms only, "
                              "without its structure module, cannot write structures)")


@click.command(name="fold")
@click.option("--model", "model", required=True, type=click.Path(path_type=Path),
              help="Fine-tuned fold model dir (OUT/best) or a transformers EsmForProteinFolding dir.")
@click.argument("fasta", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Records folded together (padding can change ESMFold's numbers slightly; 1 is exact).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Chunk the folding trunk's axial attention (less memory for long sequences, same result).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory (once the new one is complete).")
def fold_command(model, fasta, out, device, batch_size, chunk_size, overwrite):
    """Predict a structure per FASTA record: <id>.pdb (pLDDT as B-factor), <id>.png and summary.csv."""
    from foundry.atomic import atomic_directory
    from foundry.images import safe_names, write_png

    from .embed import pick_device
    from .fold.prediction import prediction_image, write_pdb, write_summary_csv

    if out.exists() and not out.is_dir():
        raise FoundryError(f"-o {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FoundryError(f"-o {out}: already exists and is not empty (pass --overwrite to replace it)")
    records = read_records(fasta)
    folder = load_any_folder(model, pick_device(device), chunk_size)
    check_lengths(records, folder.max_length, fasta, model)
    names = safe_names([rid for rid, _ in records])
    predictions = []
    with atomic_directory(out) as tmp:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            folded = folder.fold([rid for rid, _ in batch], [seq for _, seq in batch])
            for name, prediction in zip(names[start : start + batch_size], folded):
                check_coordinates(prediction, model)
                write_pdb(prediction, tmp / f"{name}.pdb")
                write_png(tmp / f"{name}.png", prediction_image(prediction))
                predictions.append(prediction)
        write_summary_csv(predictions, tmp / "summary.csv")
    mean = sum(float(p.plddt.mean()) for p in predictions) / len(predictions)
    click.echo(f"{len(predictions)} structures, mean pLDDT {mean:.1f} -> {out}")
