"""Scoring a fine-tuned model: head outputs per example (``predict_logits``), the task's metrics
with the task loss (``evaluate``), and the same with everything a report needs (``score``: the
outputs, per-class precision / recall and the confusion matrix). Used by validation in the loop,
by the final scores of ``finetune`` and by ``predict``.

Evaluation and prediction never cut a sequence. One longer than the model's window (``max_len``
tokens, at most the trunk's ``max_position``) is read in overlapping windows, as ESM does for long
proteins: windows of the full width, each starting half a window after the last (the last one
ends at the sequence's end), every window with the tokenizer's special tokens around its residues.
Then, per level:

    residue    each residue's logits are the mean over the windows that hold it
    pair       each pair's logits are the mean over the windows that hold both residues; a pair
               further apart than any window reaches (more than half a window) never is: it gets
               the lowest logit of its map (ranked as the least likely pair)
    sequence   the head's outputs of the windows, averaged with weights = residues per window

so every labelled residue is scored. Training reads random windows of long sequences (``data.training_window``).

A task whose outputs windows cannot stitch (``Task.scored_whole``: fold's per-residue structure
and pair channels) has every example read whole instead, up to the trunk's positions whatever
``max_len`` says; a longer one is a ``DataError`` naming it, never a window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError
from .data import Example, batches
from .heads import FinetuneModel
from .strategies import base_transformer
from .tasks import LabelInfo, Task

#: ``encode_records`` max_len that keeps every residue: for the splits that are scored, not trained on
UNCUT = 1 << 62


@dataclass
class Scores:
    """One split scored: the flat metrics (+ ``loss``), the per-class report (classification, else
    None) and the head outputs per example (token positions, as ``predict_logits`` returns them)."""

    metrics: dict[str, float]
    report: dict | None
    logits: list[np.ndarray]


def window_starts(n: int, width: int) -> list[int]:
    """Starts of the windows of ``width`` residues over ``n``: half a window apart, the last one
    ending at ``n``. One window (start 0) when the sequence fits."""
    if n <= width:
        return [0]
    stride = max(1, width // 2)
    starts = list(range(0, n - width, stride))
    return starts + [n - width]


def model_window(model: FinetuneModel, max_len: int | None) -> int | None:
    """Tokens the model reads at once: ``max_len`` (the run's), never more than the trunk's positions."""
    config = getattr(base_transformer(model.trunk), "config", None)
    limit = getattr(config, "max_position", None)
    if max_len is None:
        return limit
    return min(max_len, limit) if limit else max_len


def infer_layout(tokens: np.ndarray, special_ids) -> tuple[int, int]:
    """(special tokens before, after) the residues of an encoded example, e.g. (1, 1) for <cls> … <eos>."""
    special = set(int(i) for i in special_ids)
    front = 1 if len(tokens) and int(tokens[0]) in special else 0
    back = 1 if len(tokens) > front and int(tokens[-1]) in special else 0
    return front, back


@torch.no_grad()
def predict_logits(model: FinetuneModel, examples: list[Example], batch_size: int, pad_id: int, level: str, device="cpu", *,
                   max_len: int | None = None, layout: tuple[int, int] | None = None, batch_tokens: int | None = None,
                   whole: bool = False) -> list[np.ndarray]:
    """Head outputs per example, in input order, over the example's own tokens: (C,) for a
    sequence, (T, C) per residue, (T, T) per pair. Examples longer than the window (``max_len``
    tokens, default the trunk's ``max_position``) are read in overlapping windows (module doc).
    ``layout``: special tokens (before, after) the residues; default read from the first example.
    ``whole`` (``Task.scored_whole``): no windows; every example in one piece, at most the trunk's positions."""
    window = model_window(model, None if whole else max_len)
    if layout is None and examples:
        layout = infer_layout(examples[0].tokens, model.special_ids)
    front, back = layout or (0, 0)
    width = None if window is None else max(1, window - front - back)
    pieces, owners = [], []  # window examples, and (example index, residue start, residues)
    for i, example in enumerate(examples):
        n = len(example.tokens) - front - back
        if width is None or n <= width:  # the model reads tokens only: no targets to collate
            pieces.append(Example(example.id, example.sequence, example.tokens, None))
            owners.append((i, 0, n))
            continue
        if whole:
            raise DataError(f"{example.where or example.id}: {n} residues; the model reads at most {width} at once and this task "
                            "scores an example whole, never in windows")
        head, body, tail = example.tokens[:front], example.tokens[front : front + n], example.tokens[front + n :]
        for s in window_starts(n, width):
            pieces.append(Example(example.id, example.sequence, np.concatenate([head, body[s : s + width], tail]), None))
            owners.append((i, s, min(width, n - s)))
    was_training = model.training
    model.eval()
    outputs: list[np.ndarray | None] = [None] * len(pieces)
    for batch in batches(pieces, batch_size, pad_id, level, batch_tokens=batch_tokens):
        logits = model(batch.tokens.to(device)).float().cpu().numpy()
        for row, k in enumerate(batch.index):
            t = len(pieces[k].tokens)
            outputs[k] = logits[row] if level == "sequence" else (logits[row, :t] if level == "residue" else logits[row, :t, :t])
    model.train(was_training)
    return _assemble(examples, outputs, owners, level, front, back)


def _assemble(examples, outputs, owners, level: str, front: int, back: int) -> list[np.ndarray]:
    """Window outputs back to one output per example (averages where windows overlap)."""
    groups: dict[int, list[tuple[int, int, np.ndarray]]] = {}
    for (i, start, n), out in zip(owners, outputs):
        groups.setdefault(i, []).append((start, n, out))
    result = []
    for i, example in enumerate(examples):
        parts = groups[i]
        if len(parts) == 1:
            result.append(parts[0][2])
            continue
        t = len(example.tokens)
        if level == "sequence":
            weights = np.array([n for _, n, _ in parts], np.float64)
            result.append((np.stack([o for _, _, o in parts]) * (weights / weights.sum()).reshape(-1, *[1] * parts[0][2].ndim)).sum(0))
            continue
        first = parts[0][2]
        shape = (t, t) + first.shape[2:] if level == "pair" else (t,) + first.shape[1:]
        total, count = np.zeros(shape, np.float64), np.zeros(shape[:2] if level == "pair" else shape[:1], np.float64)
        for start, n, out in parts:
            # window position -> example position: specials stay at the ends, residues shift by start
            pos = np.r_[np.arange(front), front + start + np.arange(n), t - back + np.arange(back)]
            if level == "residue":
                total[pos] += out
                count[pos] += 1
            else:
                total[np.ix_(pos, pos)] += out
                count[np.ix_(pos, pos)] += 1
        seen = count > 0
        expand = count.reshape(count.shape + (1,) * (total.ndim - count.ndim))
        mean = np.divide(total, np.maximum(expand, 1))
        if not seen.all():  # pairs no window holds together: ranked below every predicted pair
            mean[~seen] = mean[seen].min()
        result.append(mean.astype(np.float32))
    return result


def score(model, task: Task, labels: LabelInfo, examples: list[Example], batch_size: int, pad_id: int, device="cpu", *,
          max_len: int | None = None, layout: tuple[int, int] | None = None, batch_tokens: int | None = None) -> Scores:
    """``examples`` (with targets) scored: metrics, the task loss, the per-class report, the outputs."""
    logits = predict_logits(model, examples, batch_size, pad_id, task.level, device, max_len=max_len, layout=layout,
                            batch_tokens=batch_tokens, whole=getattr(task, "scored_whole", False))
    targets = [e.target for e in examples]
    metrics = task.metrics(logits, targets, labels)
    with torch.no_grad():
        losses = [float(task.loss(torch.from_numpy(lg)[None], torch.from_numpy(t)[None], labels)) for lg, t in zip(logits, targets)]
    metrics["loss"] = float(np.mean(losses))
    report = getattr(task, "class_report", None)  # tasks written before it existed have none
    return Scores(metrics, report(logits, targets, labels) if report else None, logits)


def evaluate(model, task: Task, labels: LabelInfo, examples: list[Example], batch_size: int, pad_id: int, device="cpu", *,
             max_len: int | None = None, layout: tuple[int, int] | None = None, batch_tokens: int | None = None) -> dict[str, float]:
    """The task's metrics on ``examples`` and the task loss, for the record."""
    return score(model, task, labels, examples, batch_size, pad_id, device, max_len=max_len, layout=layout,
                 batch_tokens=batch_tokens).metrics
