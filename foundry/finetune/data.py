"""Labelled data for fine-tuning: tables or modality files (+ a labels file) -> encoded examples.

Inputs, per split (``--train``, ``--valid``, ``--test``):

- a table, ``.csv`` / ``.tsv`` (optionally ``.gz``), with a header row: a sequence column, a label
  column and optionally an ``id`` column (names are options);
- any file the modality reads (FASTA for proteins) plus a labels file: a table with ``id`` and
  label columns, a FASTA-style file of labels keyed by record id (FLIP's layout), or one label per
  line in record order;
- FLIP's files as they come: ``sequences.fasta`` + a labels FASTA whose headers say which split a
  record belongs to (``>1es5-A SET=train VALIDATION=False``: the train split takes SET=train with
  VALIDATION=False, valid VALIDATION=True, test SET=test) + optionally ``mask.fasta`` (a 0/1
  string per record, 0 = residue to ignore: its label becomes ``.``, unlabelled);
- anything else a task reads itself (``Task.read_split``: the protein plugin's variant-effect
  task reads its own tables with ``read_table`` and ``table_column``).

Every problem is one ``DataError`` naming the file and the line (tables) or record (FASTA).
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError
from .tasks import IGNORE, LabelInfo, Task

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".csv.gz", ".tsv.gz", ".tab.gz")


@dataclass(frozen=True)
class Columns:
    """How a split is read: which table columns hold the sequence, the label and the id; which
    split it is (FLIP's labels FASTA says per record); the mask FASTA of its per-residue labels."""

    sequence: str = "sequence"
    label: str = "label"
    id: str = "id"
    split: str | None = None  # train / valid / test
    mask: str | None = None  # --train-mask …: FLIP's mask.fasta (0 = ignore the residue's label)

    def as_dict(self) -> dict[str, str]:
        return {"sequence_column": self.sequence, "label_column": self.label, "id_column": self.id}


@dataclass
class Record:
    """One input row before its label is encoded."""

    id: str
    sequence: str
    label: str | None
    where: str  # "FILE: line 12" / "FILE: record 3 'P12345'", for messages
    # Body tokens [start, end) that every training window must hold (variant-effect: the mutated
    # positions; for proteins one token per residue); None: any window will do.
    focus: tuple[int, int] | None = None


@dataclass
class Example:
    id: str
    sequence: str
    tokens: np.ndarray  # (T,) int64 with the tokenizer's special tokens
    target: np.ndarray | None  # per task level: (k,), (T,) or (T, T); IGNORE where unlabelled
    where: str = ""
    window: int | None = None  # tokens a training step reads (max_len); longer examples are served in random windows
    layout: tuple[int, int] = (0, 0)  # special tokens before / after the body (<cls> ... <eos>: (1, 1))
    focus: tuple[int, int] | None = None  # body tokens [start, end) every training window holds (``Record.focus``)


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, T) long, padded with pad_id
    targets: torch.Tensor | None  # (B, k) | (B, T) | (B, T, T)
    index: list[int]  # positions of the examples in their split


# -- reading ------------------------------------------------------------------------------------


def is_table(path: Path) -> bool:
    return path.name.lower().endswith(TABLE_SUFFIXES)


def _open_text(path: Path) -> io.TextIOBase:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    # utf-8-sig: a spreadsheet's byte-order mark must not become part of the first column's name
    return gzip.open(path, "rt", encoding="utf-8-sig", newline="") if gz else open(path, encoding="utf-8-sig", newline="")


def read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(columns, [(line number, row)]) of a CSV/TSV file with a header row; the one table reader
    (fine-tuning splits, labels files, ``protein score-variants``)."""
    text = _table_text(path)
    reader = csv.DictReader(io.StringIO(text), delimiter=_delimiter(path, text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if not columns:
        raise DataError(f"{path}: empty file (expected a header row naming the columns)")
    reader.fieldnames = columns
    rows = []
    for row in reader:
        if None in row:  # more fields than header columns
            raise DataError(f"{path}: line {reader.line_num}: {len(columns) + len(row[None])} fields, the header has {len(columns)}")
        if all(v is None or not v.strip() for v in row.values()):
            continue
        rows.append((reader.line_num, {k: (v or "") for k, v in row.items()}))
    return columns, rows


def table_delimiter(path: Path) -> str:
    """The delimiter ``read_table`` uses for ``path``: tab or comma (to write a table back alike)."""
    return _delimiter(path, _table_text(path))


def _table_text(path: Path) -> str:
    try:
        with _open_text(path) as handle:
            return handle.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text table ({exc.reason} at byte {exc.start})") from None


def _delimiter(path: Path, text: str) -> str:
    """Tab for .tsv/.tab names or a header with tabs and no commas, else comma."""
    first = text.split("\n", 1)[0]
    tsv = path.name.lower().removesuffix(".gz").endswith((".tsv", ".tab"))
    return "\t" if tsv or ("\t" in first and "," not in first) else ","


def table_column(path: Path, columns: list[str], wanted: str, what: str, fallbacks: Sequence[str] = ()) -> str:
    for name in (wanted, *fallbacks):
        if name in columns:
            return name
    raise DataError(f"{path}: no {what} column {wanted!r}; the columns are: {', '.join(columns)} "
                    f"(choose one with --{what}-column)")


def read_records(
    path: Path,
    *,
    readers: Sequence[Any] = (),
    sequence_column: str = "sequence",
    label_column: str | None = "label",
    id_column: str = "id",
    labels_path: Path | None = None,
    mask_path: Path | None = None,
    split: str | None = None,
) -> list[Record]:
    """The records of one split. ``label_column=None``: no labels (prediction input).

    ``split`` (train / valid / test) picks a labels FASTA's records by FLIP's ``SET=`` and
    ``VALIDATION=`` header attributes; ``mask_path`` blanks (``.``) the labels of residues its 0/1
    strings mark 0."""
    path = Path(path)
    if is_table(path):
        records = _table_records(path, sequence_column, label_column, id_column)
    else:
        records = _reader_records(path, readers)
        if label_column is not None:
            if labels_path is None:
                raise DataError(f"{path}: sequence files carry no labels; give a labels file too (e.g. --train-labels), "
                                "or use a CSV/TSV table with sequence and label columns")
            records = _attach_labels(records, Path(labels_path), label_column, id_column, split)
    if not records:
        raise DataError(f"{path}: no rows (an empty split)")
    if mask_path is not None and label_column is not None:
        _apply_mask(records, Path(mask_path))
    return records


def _table_records(path, sequence_column, label_column, id_column) -> list[Record]:
    columns, rows = read_table(path)
    seq_col = table_column(path, columns, sequence_column, "sequence")
    label_col = table_column(path, columns, label_column, "label") if label_column is not None else None
    records = []
    for line, row in rows:
        rid = row.get(id_column, "").strip() or f"{path.name}:{line}"
        where = f"{path}: line {line}" + (f" (id {rid!r})" if id_column in row else "")
        seq = row[seq_col].strip()
        if not seq:
            raise DataError(f"{where}: empty sequence")
        records.append(Record(rid, seq, row[label_col] if label_col else None, where))
    return records


def _reader_records(path: Path, readers) -> list[Record]:
    from ..readers import read_documents

    return [Record(doc.id, doc.text, None, f"{path}: record {i} {doc.id!r}") for i, doc in enumerate(read_documents([path], readers), 1)]


def _attach_labels(records: list[Record], labels_path: Path, label_column: str, id_column: str,
                   split: str | None = None) -> list[Record]:
    """Labels by id (a table or a '>id' file) or by position (one per line); the labelled records
    of ``split`` when the '>id' headers carry FLIP's SET= attributes, else all of them."""
    if is_table(labels_path):
        columns, rows = read_table(labels_path)
        id_col = table_column(labels_path, columns, id_column, "id")
        label_col = table_column(labels_path, columns, label_column, "label")
        by_id = {row[id_col].strip(): row[label_col] for _, row in rows}
    else:
        with _open_text(labels_path) as handle:
            lines = handle.read().splitlines()
        if not any(line.startswith(">") for line in lines[:1]):
            values = [line.strip() for line in lines if line.strip()]
            if len(values) != len(records):
                raise DataError(f"{labels_path}: {len(values)} labels for {len(records)} records (one label per line, in record order)")
            for record, value in zip(records, values):
                record.label = value
            return records
        by_id, attributes = read_fasta_strings(labels_path, lines)
        if split is not None and any("SET" in a for a in attributes.values()):
            records = _flip_split(records, attributes, labels_path, split)
    for record in records:
        if record.id not in by_id:
            raise DataError(f"{record.where}: no label for this id in {labels_path}")
        record.label = by_id[record.id]
    return records


def read_fasta_strings(path: Path, lines: list[str] | None = None) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """({id: string}, {id: header attributes}) of a FASTA-style file of per-record strings (labels,
    masks): ``>id KEY=value ...`` then the string, possibly over several lines."""
    if lines is None:
        with _open_text(path) as handle:
            lines = handle.read().splitlines()
    strings: dict[str, str] = {}
    attributes: dict[str, dict[str, str]] = {}
    current = None
    for number, line in enumerate(lines, 1):
        if line.startswith(">"):
            words = line[1:].split()
            if not words:
                raise DataError(f"{path}: line {number}: a '>' header without an id")
            current = words[0]
            if current in strings:
                raise DataError(f"{path}: line {number}: id {current!r} appears twice")
            strings[current] = ""
            attributes[current] = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        elif current is not None:
            strings[current] += line.strip()
        elif line.strip():
            raise DataError(f"{path}: line {number}: text before the first '>id' header")
    return strings, attributes


def _flip_split(records: list[Record], attributes: dict[str, dict[str, str]], labels_path: Path, split: str) -> list[Record]:
    """FLIP's convention: train = SET=train VALIDATION=False, valid = SET=train VALIDATION=True
    (sequences set aside for early stopping), test = SET=test."""
    def member(attrs: dict[str, str]) -> bool:
        held_out = attrs.get("VALIDATION", "False").lower() == "true"
        if split == "test":
            return attrs.get("SET") == "test"
        return attrs.get("SET") == "train" and held_out == (split == "valid")

    chosen = [r for r in records if r.id in attributes and member(attributes[r.id])]
    if not chosen:
        want = {"train": "SET=train VALIDATION=False", "valid": "SET=train VALIDATION=True", "test": "SET=test"}[split]
        raise DataError(f"{labels_path}: no record of the {split} split ({want} in the '>id' header) among the sequences")
    return chosen


def _apply_mask(records: list[Record], mask_path: Path) -> None:
    """FLIP's mask FASTA: per residue 1 = use, 0 = ignore (unresolved in the structure); masked
    residues get the unlabelled mark '.'."""
    masks, _ = read_fasta_strings(mask_path)
    for record in records:
        if record.id not in masks:
            raise DataError(f"{record.where}: no mask for this id in {mask_path}")
        mask, label = masks[record.id], record.label or ""
        bad = next((c for c in mask if c not in "01"), None)
        if bad is not None:
            raise DataError(f"{mask_path}: record {record.id!r}: mask character {bad!r} (expected 0 = ignore, 1 = use)")
        if len(mask) != len(label):
            raise DataError(f"{mask_path}: record {record.id!r}: mask of {len(mask)} residues for a label of {len(label)} "
                            "(a mask applies to per-residue labels, one 0/1 per residue)")
        record.label = "".join(c if m == "1" else "." for c, m in zip(label, mask))


# -- encoding -----------------------------------------------------------------------------------


def special_layout(tokenizer) -> tuple[int, int]:
    """How many special tokens ``encode`` puts before and after the body (e.g. <cls> ... <eos>)."""
    bare = tokenizer.encode("", add_special_tokens=True)
    front = 1 if len(bare) and tokenizer.bos_id is not None and int(bare[0]) == tokenizer.bos_id else 0
    return front, len(bare) - front


def encode_records(records: list[Record], tokenizer, task: Task, info: LabelInfo | None, max_len: int) -> list[Example]:
    """Tokenize and encode labels. Every example keeps all its tokens and labels; ``max_len`` is the
    window a training step reads (``training_window``: a random window of a longer example each
    epoch, so training sees every residue over the epochs). Scored splits pass ``UNCUT``."""
    front, back = special_layout(tokenizer)
    width = max_len - front - back  # residues in a window
    examples = []
    for record in records:
        try:
            body = np.asarray(tokenizer.encode(record.sequence, add_special_tokens=False), dtype=np.int64)
        except DataError as exc:
            raise DataError(f"{record.where}: {exc}") from None
        if len(body) == 0:
            raise DataError(f"{record.where}: empty sequence")
        target = None
        if info is not None and record.label is not None:
            target = task.encode(record.label, len(body), record.where, info)
        if record.focus is not None and record.focus[1] - record.focus[0] > width:
            lo, hi = record.focus
            raise DataError(f"{record.where}: the mutated positions span residues {lo + 1}..{hi} ({hi - lo} residues), more than "
                            f"a training window of --max-len {max_len} tokens holds ({width}); raise --max-len")
        full = np.asarray(tokenizer.encode(record.sequence, add_special_tokens=True), dtype=np.int64)
        tokens = np.concatenate([full[:front], body, full[len(full) - back:]])
        if target is not None:
            target = _align(task.level, target, front, len(tokens))
        examples.append(Example(record.id, record.sequence, tokens, target, record.where, window=max_len, layout=(front, back),
                                focus=record.focus))
    return examples


def _align(level: str, target: np.ndarray, front: int, length: int) -> np.ndarray:
    """Per-residue / per-pair targets placed at their token positions, IGNORE on special tokens."""
    n = target.shape[0]
    if level == "residue":  # (n,) or (n, K): a task may give each residue several numbers
        out = np.full((length, *target.shape[1:]), IGNORE, dtype=target.dtype)
        out[front : front + n] = target
        return out
    if level == "pair":
        out = np.full((length, length), IGNORE, dtype=target.dtype)
        out[front : front + n, front : front + n] = target
        return out
    return target


# -- training windows ---------------------------------------------------------------------------

#: mixed into the window's seed so its random stream is not the batch plan's (which draws from (seed, epoch))
_WINDOW_STREAM = 0x77696E


def served_length(example: Example) -> int:
    """Tokens a training step reads of ``example``: all of them, or its window (what a batch pays for)."""
    n = len(example.tokens)
    return n if example.window is None else min(n, example.window)


def training_window(example: Example, level: str, seed: int, epoch: int, index: int) -> Example:
    """What training reads of ``example`` (``index``: its place in the split) in ``epoch``: the
    example itself when it fits its window, else ``window`` tokens of it: the special tokens at both
    ends (<cls> ... <eos>, as the model reads whole sequences) around a random run of residues, as
    ESM crops long proteins. Targets follow: per-residue labels with their tokens, per-pair labels on
    both axes, a sequence label unchanged. The start is uniform over the windows that hold the
    example's ``focus`` (variant-effect: every mutated position), drawn from (seed, epoch, index)
    alone, so a resumed run and any number of processes read the same windows."""
    t = len(example.tokens)
    if example.window is None or t <= example.window:
        return example
    front, back = example.layout
    n, width = t - front - back, example.window - front - back
    first, last = 0, n - width  # window starts
    if example.focus is not None:
        first, last = max(first, example.focus[1] - width), min(last, example.focus[0])
    start = first + int(np.random.default_rng([seed, epoch, index, _WINDOW_STREAM]).integers(last - first + 1))
    keep = np.r_[np.arange(front), front + start + np.arange(width), t - back + np.arange(back)]
    target = example.target
    if target is not None and level == "residue":
        target = target[keep]
    elif target is not None and level == "pair":
        target = target[np.ix_(keep, keep)]
    return replace(example, tokens=example.tokens[keep], target=target)


# -- batching -----------------------------------------------------------------------------------


def collate(examples: list[Example], index: list[int], pad_id: int, level: str) -> Batch:
    width = max(len(e.tokens) for e in examples)
    tokens = torch.full((len(examples), width), pad_id, dtype=torch.long)
    for row, e in enumerate(examples):
        tokens[row, : len(e.tokens)] = torch.from_numpy(e.tokens)
    targets = None
    if examples[0].target is not None:
        if level == "sequence":
            targets = torch.from_numpy(np.stack([e.target for e in examples]))
        elif level == "residue":
            first = torch.from_numpy(examples[0].target)
            targets = torch.full((len(examples), width, *first.shape[1:]), IGNORE, dtype=first.dtype)
            for row, e in enumerate(examples):
                targets[row, : len(e.target)] = torch.from_numpy(e.target)
        else:
            targets = torch.full((len(examples), width, width), IGNORE, dtype=torch.float32)
            for row, e in enumerate(examples):
                n = len(e.target)
                targets[row, :n, :n] = torch.from_numpy(e.target)
    return Batch(tokens, targets, index)


#: batches' worth of examples sorted together: enough that neighbours have similar lengths, few
#: enough that each epoch still mixes examples into new batches
BUCKET_BATCHES = 100


def batch_plan(lengths: Sequence[int], *, batch_size: int = 16, batch_tokens: int | None = None, seed: int | None = None,
               epoch: int = 0) -> list[list[int]]:
    """Which examples make each batch (indices into ``lengths``, the examples' token counts).

    ``batch_tokens`` None: ``batch_size`` rows per batch. Else a token budget: a batch holds as many
    rows as fit ``rows * longest <= batch_tokens`` (what a padded batch costs); an example longer
    than the budget gets a batch of its own.

    Training (``seed`` given) is drawn from (seed, epoch) alone, so every process computes the same
    plan and a resumed run the plan it left. Rows are a per-epoch shuffle; with a budget, the shuffle
    is cut into chunks of about ``BUCKET_BATCHES`` batches, each chunk sorted by length and cut into
    batches (members of a batch have similar lengths: little padding), and the batches are shuffled
    again (no run of short batches, then long ones). Evaluation (``seed`` None): sorted by length."""
    if seed is None:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        return _cut(order, lengths, batch_size, batch_tokens)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if batch_tokens is None:
        return _cut(order, lengths, batch_size, None)
    plan: list[list[int]] = []
    for chunk in _chunks(order, lengths, BUCKET_BATCHES * batch_tokens):
        plan += _cut(sorted(chunk, key=lambda i: lengths[i]), lengths, batch_size, batch_tokens)  # stable: ties keep the shuffle
    return [plan[i] for i in rng.permutation(len(plan))]


def _chunks(order: list[int], lengths: Sequence[int], tokens: int) -> list[list[int]]:
    chunks, current, total = [], [], 0
    for i in order:
        current.append(i)
        total += lengths[i]
        if total >= tokens:
            chunks.append(current)
            current, total = [], 0
    return chunks + [current] if current else chunks


def _cut(order: list[int], lengths: Sequence[int], batch_size: int, batch_tokens: int | None) -> list[list[int]]:
    """Consecutive runs of ``order``: ``batch_size`` rows, or within ``batch_tokens`` padded tokens."""
    if batch_tokens is None:
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    plan, current, longest = [], [], 0
    for i in order:
        wider = max(longest, lengths[i])
        if current and wider * (len(current) + 1) > batch_tokens:
            plan.append(current)
            current, wider = [], lengths[i]
        current.append(i)
        longest = wider
    return plan + [current] if current else plan


def batches(examples: list[Example], batch_size: int, pad_id: int, level: str, *, seed: int | None = None, epoch: int = 0,
            batch_tokens: int | None = None) -> list[Batch]:
    """The collated batches of ``batch_plan`` (training with ``seed``: each example's window of
    ``epoch``; else evaluation order, whole examples); predictions go back to input order by ``Batch.index``."""
    if seed is None:
        plan = batch_plan([len(e.tokens) for e in examples], batch_size=batch_size, batch_tokens=batch_tokens)
        return [collate([examples[i] for i in idx], idx, pad_id, level) for idx in plan]
    plan = batch_plan([served_length(e) for e in examples], batch_size=batch_size, batch_tokens=batch_tokens, seed=seed, epoch=epoch)
    return [collate([training_window(examples[i], level, seed, epoch, i) for i in idx], idx, pad_id, level) for idx in plan]
