"""``predict``: a fine-tuned model directory + sequences -> ``id,sequence,prediction`` CSV.

Per-residue tasks write the predicted state string (as long as the sequence); classification
writes the label name and one ``p_<label>`` probability column per class; regression the value.
Input: a CSV/TSV table with a sequence column (and optional id), a file the modality reads
(FASTA), or whatever the model's task reads itself (``Task.read_split``).

Nothing is cut: sequences longer than the model's window are read in overlapping windows
(``foundry.finetune.evaluation``), so every residue gets a prediction. A table that also has the
model's label column is scored: the metrics (and, for classification, per-class precision / recall
and the confusion matrix) are printed and written to ``<output>_metrics.json``; the CSV keeps
the columns of an unlabelled input. ``probabilities=True`` writes, for per-residue classification,
``<output>_residues.csv``: one row per residue (id, position, residue, prediction, [label],
p_<state> ...), a table a spreadsheet opens and filters by id.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..errors import DataError, FoundryError
from ..plugins import get_manager
from . import metrics as M
from .data import Columns, encode_records, is_table, read_table, special_layout
from .evaluation import UNCUT, predict_logits, score
from .store import FinetunedModel, load_finetuned
from .tasks import IGNORE, probabilities as class_probabilities


def load_for_prediction(model_dir: Path, tokenizer_path: str | None = None) -> FinetunedModel:
    from .run import load_trunk
    from .store import read_finetuned_meta

    meta = read_finetuned_meta(model_dir)
    modality = get_manager().modality(meta["modality"])
    return load_finetuned(model_dir, load_base=lambda spec: load_trunk(modality, spec, None, {}, tokenizer_path, 0))


def predict_file(model_dir: Path, input_path: Path, output: Path, *, sequence_column: str | None = None, id_column: str | None = None,
                 batch_size: int = 16, tokenizer_path: str | None = None, warn=None, say=None, probabilities: bool = False) -> int:
    """Write predictions for every record of ``input_path``; returns how many.

    ``warn(message)`` receives what the user should know (default: a line on stderr); ``say(text)``
    the metrics of a labelled input (default: stdout)."""
    warn, say = warn or _stderr, say or print
    ft = load_for_prediction(Path(model_dir), tokenizer_path)
    meta, task = ft.meta, ft.task
    if probabilities and task.regression:
        raise FoundryError(f"--probabilities: {model_dir} is a {task.name} model; it predicts numbers, not classes")
    modality = get_manager().modality(meta["modality"])
    readers = get_manager().reader_objects(modality.readers)
    task.configure(meta.get("task_options", {}), readers)
    columns = Columns(sequence_column or meta.get("sequence_column", "sequence"), meta.get("label_column", "label"),
                      id_column or meta.get("id_column", "id"))
    examples, labelled = _read_examples(ft, Path(input_path), columns, readers, warn)
    max_len, layout = meta.get("max_len", 1024), special_layout(ft.tokenizer)
    note = None if getattr(task, "scored_whole", False) else window_note(examples, max_len - sum(layout), max_len)
    if note:
        warn(note)
    if labelled:
        scores = score(ft.model, task, ft.labels, examples, batch_size, ft.tokenizer.pad_id, max_len=max_len, layout=layout)
        logits = scores.logits
    else:
        logits = predict_logits(ft.model, examples, batch_size, ft.tokenizer.pad_id, task.level, max_len=max_len, layout=layout,
                                whole=getattr(task, "scored_whole", False))
    rows, maps = prediction_rows(task, ft.labels, examples, logits, layout)
    out_columns = list(rows[0]) if rows else ["id", "sequence", "prediction"]
    write_csv(Path(output), out_columns, rows)
    if maps:
        write_maps(map_folder(Path(output)), [r["id"] for r in rows], maps)
    if probabilities and task.level == "residue":
        write_residue_table(residue_table_path(Path(output)), ft.labels, examples, logits, layout, task)
    if labelled:
        say(metrics_text(scores.metrics, scores.report, f"{len(examples)} labelled records of {input_path} (column {columns.label!r})"))
        atomic_write_text(metrics_path(Path(output)), json.dumps({"input": str(input_path), "records": len(examples), "metrics": scores.metrics,
                                                                   "classes": scores.report}, indent=1) + "\n")
    return len(rows)


def _read_examples(ft: FinetunedModel, path: Path, columns: Columns, readers, warn) -> tuple[list, bool]:
    """The input's examples, never cut; with their targets when the input is a table holding the
    model's label column and every label encodes (else a warning says why they are not scored)."""
    task = ft.task
    if is_table(path) and columns.label in read_table(path)[0]:
        try:
            records = task.read_split(path, None, columns, readers, labelled=True)
            return encode_records(records, ft.tokenizer, task, ft.labels, UNCUT), True
        except DataError as exc:
            warn(f"warning: the {columns.label!r} column is not scored: {exc}")
    records = task.read_split(path, None, columns, readers, labelled=False)
    return encode_records(records, ft.tokenizer, task, None, UNCUT), False


def prediction_rows(task, labels, examples, logits, layout: tuple[int, int], with_labels: bool = False) -> tuple[list[dict], list[np.ndarray]]:
    """One CSV row per example (id, sequence, the task's prediction columns, and with ``with_labels``
    a ``label`` column where the task can write the target back); per-pair probability maps for pair tasks."""
    rows, maps = [], []
    for example, out in zip(examples, logits):
        out, target = residues_only(task.level, out, example, layout), example.target
        row = {"id": example.id, "sequence": example.sequence, **task.describe(np.asarray(out), labels)}
        if with_labels and target is not None and task.level != "pair":
            text = task.label_text(residues_only(task.level, target, example, layout), labels)
            if text is not None:
                row["label"] = text
        rows.append(row)
        if task.level == "pair":
            maps.append(1.0 / (1.0 + np.exp(-np.asarray(out, dtype=np.float64))))
    return rows, maps


def write_predictions(path: Path, task, labels, examples: list, logits: list, layout: tuple[int, int]) -> None:
    """The CSV of a scored split (``finetune --test``: ``OUT/test_predictions.csv``): the prediction
    columns with the true ``label`` beside each prediction."""
    rows, _ = prediction_rows(task, labels, examples, logits, layout, with_labels=True)
    write_csv(path, list(rows[0]) if rows else ["id", "sequence", "prediction"], rows)


def residues_only(level: str, values: np.ndarray, example, layout: tuple[int, int]) -> np.ndarray:
    """Per-token (or per-pair) values without the special tokens: one per residue."""
    if level == "sequence":
        return values
    front, back = layout
    n = len(example.tokens) - front - back
    return values[front : front + n] if level == "residue" else values[front : front + n, front : front + n]


def window_note(examples, window: int, max_len: int) -> str | None:
    """Sequences longer than the model's window are read in overlapping windows: say so, with counts."""
    long = [e for e in examples if len(e.tokens) > max_len]
    if not long:
        return None
    longest = max(long, key=lambda e: len(e.tokens))
    return (f"note: {len(long)} of {len(examples)} sequences are longer than the model's window of {window} residues "
            f"(max_len {max_len} tokens); they are read in overlapping windows and every residue is predicted "
            f"(longest: {longest.id!r}, {len(longest.tokens) - (max_len - window)} residues)")


def metrics_path(output: Path) -> Path:
    """Metrics of a labelled input go beside the CSV: ``preds.csv`` -> ``preds_metrics.json``."""
    return output.with_name(output.stem + "_metrics.json")


def residue_table_path(output: Path) -> Path:
    """Per-residue probabilities go beside the CSV: ``preds.csv`` -> ``preds_residues.csv``."""
    return output.with_name(output.stem + "_residues.csv")


def metrics_text(metrics: dict[str, float], report: dict | None, what: str) -> str:
    """The metrics on one line, then the per-class table (classification)."""
    values = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    lines = [f"metrics on {what}: {values}"]
    if report:
        lines.append(M.format_class_report(report))
    return "\n".join(lines)


def write_residue_table(path: Path, labels, examples, logits, layout: tuple[int, int], task) -> None:
    """One row per residue: id, position (1-based), residue, prediction, [label], p_<state>..."""
    names = labels.names
    columns = ["id", "position", "residue", "prediction"] + (["label"] if any(e.target is not None for e in examples) else [])
    columns += [f"p_{n}" for n in names]
    rows = []
    for example, out in zip(examples, logits):
        probs = class_probabilities(residues_only("residue", out, example, layout), labels)
        target = residues_only("residue", example.target, example, layout) if example.target is not None else None
        same = len(example.sequence) == len(probs)  # one residue per token (proteins); else no residue letter
        for i, p in enumerate(probs):
            row = {"id": example.id, "position": i + 1, "residue": example.sequence[i] if same else "", "prediction": names[int(p.argmax())]}
            if "label" in columns:
                row["label"] = "" if target is None or target[i] == IGNORE else names[int(target[i])]
            row.update({f"p_{n}": f"{float(v):.4f}" for n, v in zip(names, p)})
            rows.append(row)
    write_csv(path, columns, rows)


def map_folder(output: Path) -> Path:
    """Pairwise predictions go beside the CSV: ``preds.csv`` -> ``preds_maps/``."""
    return output.with_name(output.stem + "_maps")


def write_maps(folder: Path, ids: list[str], maps: list[np.ndarray]) -> None:
    """One ``<id>.npy`` (L, L) probability map and ``<id>.png`` picture per record, written into a
    temporary folder that replaces ``folder`` only when complete."""
    import shutil
    import tempfile

    from ..images import pair_map_image, safe_names, write_png

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for name, probs in zip(safe_names(ids), maps):
            np.save(tmp / f"{name}.npy", probs.astype(np.float32))
            write_png(tmp / f"{name}.png", pair_map_image(probs))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr)


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
