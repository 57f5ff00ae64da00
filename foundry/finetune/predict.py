"""``predict``: a fine-tuned model directory + sequences -> ``id,sequence,prediction`` CSV.

Per-residue tasks write the predicted state string (as long as the sequence); classification
writes the label name and one ``p_<label>`` probability column per class; regression the value.
Input: a CSV/TSV table with a sequence column (and optional id), a file the modality reads
(FASTA), or for variant-effect models a table of mutations of the stored wild type.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..plugins import get_manager
from .data import Columns, encode_records, special_layout
from .evaluation import predict_logits
from .store import FinetunedModel, load_finetuned


def load_for_prediction(model_dir: Path, tokenizer_path: str | None = None) -> FinetunedModel:
    from .run import load_trunk
    from .store import read_finetuned_meta

    meta = read_finetuned_meta(model_dir)
    modality = get_manager().modality(meta["modality"])
    return load_finetuned(model_dir, load_base=lambda spec: load_trunk(modality, spec, None, {}, tokenizer_path, 0))


def predict_file(model_dir: Path, input_path: Path, output: Path, *, sequence_column: str | None = None, id_column: str | None = None,
                 batch_size: int = 16, tokenizer_path: str | None = None, warn=None) -> int:
    """Write predictions for every record of ``input_path``; returns how many.

    ``warn(message)`` receives what the user should know (default: a line on stderr)."""
    ft = load_for_prediction(Path(model_dir), tokenizer_path)
    meta = ft.meta
    modality = get_manager().modality(meta["modality"])
    readers = get_manager().reader_objects(modality.readers)
    ft.task.configure(meta.get("task_options", {}), readers)
    columns = Columns(sequence_column or meta.get("sequence_column", "sequence"), meta.get("label_column", "label"),
                      id_column or meta.get("id_column", "id"))
    records = ft.task.read_split(Path(input_path), None, columns, readers, labelled=False)
    max_len = meta.get("max_len", 1024)
    examples = encode_records(records, ft.tokenizer, ft.task, None, max_len)
    front, back = special_layout(ft.tokenizer)
    note = truncation_note(examples, max_len - front - back, max_len, ft.task.level)
    if note:
        (warn or _stderr)(note)
    logits = predict_logits(ft.model, examples, batch_size, ft.tokenizer.pad_id, ft.task.level)
    rows, maps = [], []
    for example, out in zip(examples, logits):
        if ft.task.level != "sequence":  # drop the special tokens: one output per residue
            n = len(example.tokens) - len(ft.tokenizer.encode("", add_special_tokens=True))
            out = out[front : front + n] if ft.task.level == "residue" else out[front : front + n, front : front + n]
        rows.append({"id": example.id, "sequence": example.sequence, **ft.task.describe(np.asarray(out), ft.labels)})
        if ft.task.level == "pair":
            maps.append(1.0 / (1.0 + np.exp(-np.asarray(out, dtype=np.float64))))
    columns = list(rows[0]) if rows else ["id", "sequence", "prediction"]
    _write_csv(Path(output), columns, rows)
    if maps:
        write_maps(map_folder(Path(output)), [r["id"] for r in rows], maps)
    return len(rows)


def truncation_note(examples, window: int, max_len: int, level: str) -> str | None:
    """Sequences longer than the model's window are cut, never silently: how many, by how much.
    ``window``: residues that fit in ``max_len`` tokens beside the special tokens."""
    cut = [e for e in examples if e.cut]
    if not cut:
        return None
    longest = max(cut, key=lambda e: e.cut)
    what = {"residue": "their predicted state strings stop there, shorter than the sequences",
            "pair": "their contact maps cover only those residues"}.get(level, "their predictions see only those residues")
    return (f"warning: {len(cut)} of {len(examples)} sequences are longer than the model's window of {window} residues "
            f"(max_len {max_len} tokens); {what} ({sum(e.cut for e in cut)} residues left out; longest: "
            f"{longest.id!r}, {window + longest.cut} residues)")


def map_folder(output: Path) -> Path:
    """Pairwise predictions go beside the CSV: ``preds.csv`` -> ``preds_maps/``."""
    return output.with_name(output.stem + "_maps")


def write_maps(folder: Path, ids: list[str], maps: list[np.ndarray]) -> None:
    """One ``<id>.npy`` (L, L) probability map and ``<id>.png`` picture per record, written into a
    temporary folder that replaces ``folder`` only when complete."""
    import shutil
    import tempfile

    from ..images import contact_image, safe_names, write_png

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for name, probs in zip(safe_names(ids), maps):
            np.save(tmp / f"{name}.npy", probs.astype(np.float32))
            write_png(tmp / f"{name}.png", contact_image(probs))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
