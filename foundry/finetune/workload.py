"""Fine-tuning as a ``Workload`` of the one loop (``foundry.train``): labelled example batches,
the task's loss (+ replayed pretraining loss, + L2-SP), the task's metrics on the validation split.

Batches come from ``ExampleStream``: a per-epoch shuffle drawn from (seed, epoch), so its whole
state is (epoch, batch position) and a resumed run sees exactly the batches it would have seen.
With several processes each takes its own share of every round of batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..train import StepLoss, param_groups
from . import metrics as M
from .data import Batch, Example, batches
from .evaluation import evaluate, predict_logits  # noqa: F401  (moved; kept importable from here)
from .heads import FinetuneModel
from .strategies import L2SP, layer_decay_scale
from .tasks import LabelInfo, Task


class ExampleStream:
    """Endless training batches over ``examples``, epoch after epoch."""

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, level: str, seed: int):
        if not examples:
            raise ValueError("no training examples")
        self.examples, self.batch_size, self.pad_id, self.level, self.seed = examples, batch_size, pad_id, level, seed
        self.epoch, self.position = 0, 0
        self._epoch_batches: list[Batch] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def _next(self) -> Batch:
        if self._epoch_batches is None:
            self._epoch_batches = batches(self.examples, self.batch_size, self.pad_id, self.level, seed=self.seed, epoch=self.epoch)
        batch = self._epoch_batches[self.position]
        self.position += 1
        if self.position == len(self._epoch_batches):
            self.epoch, self.position, self._epoch_batches = self.epoch + 1, 0, None
        return batch

    def next_for_rank(self, rank: int, world: int) -> Batch:
        mine = None
        for r in range(world):
            batch = self._next()
            if r == rank:
                mine = batch
        return mine

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._epoch_batches = int(state["epoch"]), int(state["position"]), None


@dataclass
class FinetuneSettings:
    """The numbers the workload needs (a view of the run config's ``finetune`` and ``train``)."""

    batch_size: int
    weight_decay: float
    layer_decay: float
    l2sp: float
    replay: float
    strategy: str
    metric: str


class FinetuneWorkload:
    def __init__(self, model: FinetuneModel, task: Task, labels: LabelInfo, train: list[Example], valid: list[Example], pad_id: int,
                 settings: FinetuneSettings, seed: int, save_model: Callable[[FinetuneModel, Path], None],
                 restore_model: Callable[[FinetuneModel, Path], None], replay=None):
        self.model, self.task, self.labels, self.valid, self.pad_id = model, task, labels, valid, pad_id
        self.settings, self._save, self._restore, self.replay = settings, save_model, restore_model, replay
        self.metric = settings.metric
        self.higher_is_better = self.metric not in M.LOWER_IS_BETTER
        self.stream = ExampleStream(train, settings.batch_size, pad_id, task.level, seed)
        self.l2sp = L2SP(model, settings.l2sp) if settings.l2sp > 0 else None
        self.replay_weight = settings.replay if replay is not None else 0.0

    def param_groups(self) -> list[dict]:
        # L2-SP pulls the trunk toward its pretrained weights; decay toward zero would fight it.
        no_decay = (lambda name: name.startswith("trunk.")) if self.l2sp is not None else None
        return param_groups(self.model.named_parameters(), self.settings.weight_decay,
                            lr_scale=layer_decay_scale(self.model.n_layer, self.settings.layer_decay), no_decay=no_decay)

    def next_batch(self, rank: int, world: int) -> Batch:
        # Each process takes its own batch of every round of ``world`` batches; the batch's place in
        # the stream seeds its dropout (``loss``), so 2 processes draw the masks 1 process with
        # grad_accum=2 draws, and a resumed run the masks of an uninterrupted one.
        mine = None
        for r in range(world):
            place = (self.stream.epoch, self.stream.position)
            batch = self.stream.next_for_rank(0, 1)
            if r == rank:
                mine, self._place = batch, place
        return mine

    def data_state(self) -> dict:
        return self.stream.state_dict()

    def load_data_state(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def train_mode(self, model) -> None:
        model.train()
        if self.settings.strategy == "frozen":
            _unwrap(model).trunk.eval()  # no dropout in a trunk that does not train

    def loss(self, model, batch: Batch, seed: int, device) -> StepLoss:
        epoch, position = self._place
        torch.manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + position)  # dropout: a function of (seed, batch)
        logits = model(batch.tokens.to(device))
        task_loss = self.task.loss(logits, batch.targets.to(device), self.labels)
        loss, extra = (1.0 - self.replay_weight) * task_loss, {}
        if self.replay_weight > 0:
            replay_loss = self.replay.loss(_unwrap(model).trunk, device, index=self.stream.epoch * 1_000_003 + self.stream.position)
            loss = loss + self.replay_weight * replay_loss
            extra["replay_loss"] = float(replay_loss.detach())
        if self.l2sp is not None:
            loss = loss + self.l2sp(_unwrap(model))
        real = int(batch.tokens.ne(self.pad_id).sum())
        # What is logged as "loss" is the task's loss: the number a user compares across runs.
        return StepLoss(loss, real, batch.tokens.numel(), {"task_loss": float(task_loss.detach()), **extra})

    def evaluate(self, model, accelerator) -> dict[str, float]:
        unwrapped = accelerator.unwrap_model(model)
        result = evaluate(unwrapped, self.task, self.labels, self.valid, self.settings.batch_size, self.pad_id, accelerator.device)
        if not np.isfinite(result["loss"]):
            # Outputs that overflowed still "score" (the argmax of NaN logits is class 0); such a
            # model must never become OUT/best.
            result[self.metric] = float("nan")
        return result

    def describe_evaluation(self, step: int, result: dict[str, float]) -> str:
        return f"step {step}: valid {self.metric} {result.get(self.metric, float('nan')):.4f} (loss {result['loss']:.4f})"

    def save_model(self, model, directory: Path) -> None:
        self._save(model, directory)

    def restore_model(self, model, directory: Path) -> None:
        self._restore(model, directory)


def _unwrap(model) -> Any:
    return getattr(model, "module", model)
