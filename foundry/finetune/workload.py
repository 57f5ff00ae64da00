"""Fine-tuning as a ``Workload`` of the one loop (``foundry.train``): labelled example batches,
the task's loss (+ replayed pretraining loss, + L2-SP), the task's metrics on the validation split.

Batches come from ``ExampleStream``: a per-epoch plan drawn from (seed, epoch) (a shuffle cut into
``batch_size`` rows, or into ``batch_tokens`` padded tokens with length bucketing), so its whole
state is (epoch, batch position) and a resumed run sees exactly the batches it would have seen.
An example longer than ``max_len`` is served as a random window of it, drawn anew each epoch from
(seed, epoch, example) (``data.training_window``). With several processes each takes its own share
of every round of batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..train import StepLoss, StreamWorkload, param_groups
from . import metrics as M
from .data import Batch, Example, batch_plan, collate, served_length, training_window
from .evaluation import evaluate, predict_logits  # noqa: F401  (moved; kept importable from here)
from .heads import FinetuneModel
from .strategies import L2SP, layer_decay_scale
from .tasks import LabelInfo, Task


class ExampleStream:
    """Endless training batches over ``examples``, epoch after epoch.

    Each epoch's plan (``batch_plan``: ``batch_size`` rows, or ``batch_tokens`` padded tokens per
    batch with length bucketing) is drawn from (seed, epoch) alone, so (epoch, position) is the
    whole state and every process computes the same plan. Batches are collated as they are taken:
    an epoch of per-pair targets would not fit in memory at once. An example longer than its window
    is served as that epoch's window of it (``training_window``) and the plan counts the window's
    tokens, not the example's."""

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, level: str, seed: int, batch_tokens: int | None = None):
        if not examples:
            raise ValueError("no training examples")
        self.examples, self.batch_size, self.pad_id, self.level, self.seed = examples, batch_size, pad_id, level, seed
        self.batch_tokens = batch_tokens
        self.lengths = [served_length(e) for e in examples]
        self.epoch, self.position = 0, 0
        self._plan: list[list[int]] | None = None

    def plan(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch``, as lists of example indices."""
        return batch_plan(self.lengths, batch_size=self.batch_size, batch_tokens=self.batch_tokens, seed=self.seed, epoch=epoch)

    @property
    def batches_per_epoch(self) -> int:
        """Batches in the first epoch (with a token budget later epochs may differ by a few)."""
        return len(self.plan(0))

    def _take(self) -> tuple[int, list[int]]:
        """(epoch, example indices) of the next batch."""
        if self._plan is None:
            self._plan = self.plan(self.epoch)
        epoch, index = self.epoch, self._plan[self.position]
        self.position += 1
        if self.position == len(self._plan):
            self.epoch, self.position, self._plan = self.epoch + 1, 0, None
        return epoch, index

    def next_for_rank(self, rank: int, world: int) -> Batch:
        """This process's batch of the next round of ``world`` batches (each process its own)."""
        epoch, mine = [self._take() for _ in range(world)][rank]
        served = [training_window(self.examples[i], self.level, self.seed, epoch, i) for i in mine]
        return collate(served, mine, self.pad_id, self.level)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._plan = int(state["epoch"]), int(state["position"]), None


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
    batch_tokens: int | None = None  # a token budget per micro-batch instead of batch_size rows
    max_len: int | None = None  # validation reads longer sequences in windows of this many tokens


class FinetuneWorkload(StreamWorkload):
    """A task's head (and trunk, by strategy) on labelled examples. ``StreamWorkload`` gives the
    stream state; parameter groups (layer decay, L2-SP), batch seeding and train mode are its own."""

    def __init__(self, model: FinetuneModel, task: Task, labels: LabelInfo, train: list[Example], valid: list[Example], pad_id: int,
                 settings: FinetuneSettings, seed: int, save_model: Callable[[FinetuneModel, Path], None],
                 restore_model: Callable[[FinetuneModel, Path], None], replay=None):
        self.model, self.task, self.labels, self.valid, self.pad_id = model, task, labels, valid, pad_id
        self.settings, self._save, self._restore, self.replay = settings, save_model, restore_model, replay
        self.metric = settings.metric
        self.higher_is_better = self.metric not in M.LOWER_IS_BETTER | set(getattr(task, "lower_is_better", ()))
        self.stream = ExampleStream(train, settings.batch_size, pad_id, task.level, seed, settings.batch_tokens)
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

    def train_mode(self, model) -> None:
        super().train_mode(model)
        if self.settings.strategy == "frozen":
            _unwrap(model).trunk.eval()  # no dropout in a trunk that does not train

    def loss(self, model, batch: Batch, seed: int, device) -> StepLoss:
        epoch, position = self._place
        torch.manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + position)  # dropout: a function of (seed, batch)
        batch = self.task.training_batch(batch)
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
        result = evaluate(unwrapped, self.task, self.labels, self.valid, self.settings.batch_size, self.pad_id, accelerator.device,
                          max_len=self.settings.max_len, batch_tokens=self.settings.batch_tokens)
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
