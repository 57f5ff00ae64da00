"""Scoring a fine-tuned model: head outputs per example (``predict_logits``) and the task's
metrics with the task loss (``evaluate``). Used by validation in the loop, by the final scores of
``finetune`` and by ``predict``."""

from __future__ import annotations

import numpy as np
import torch

from .data import Example, batches
from .heads import FinetuneModel
from .tasks import LabelInfo, Task


@torch.no_grad()
def predict_logits(model: FinetuneModel, examples: list[Example], batch_size: int, pad_id: int, level: str, device="cpu") -> list[np.ndarray]:
    """Head outputs per example, in input order, cut to the example's own length."""
    was_training = model.training
    model.eval()
    out: list[np.ndarray | None] = [None] * len(examples)
    for batch in batches(examples, batch_size, pad_id, level):
        logits = model(batch.tokens.to(device)).float().cpu().numpy()
        for row, i in enumerate(batch.index):
            n = len(examples[i].tokens)
            out[i] = logits[row] if level == "sequence" else (logits[row, :n] if level == "residue" else logits[row, :n, :n])
    model.train(was_training)
    return out  # type: ignore[return-value]


def evaluate(model, task: Task, labels: LabelInfo, examples: list[Example], batch_size: int, pad_id: int, device="cpu") -> dict[str, float]:
    """The task's metrics on ``examples`` and the task loss, for the record."""
    logits = predict_logits(model, examples, batch_size, pad_id, task.level, device)
    targets = [e.target for e in examples]
    result = task.metrics(logits, targets, labels)
    with torch.no_grad():
        losses = [float(task.loss(torch.from_numpy(lg)[None], torch.from_numpy(t)[None], labels)) for lg, t in zip(logits, targets)]
    result["loss"] = float(np.mean(losses))
    return result
