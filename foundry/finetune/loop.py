"""Fine-tuning: the pretraining loop's order and pieces with a different setup.

Per optimizer step, in reading order: learning-rate schedule (``foundry.train.learning_rate``:
warmup then cosine, times each group's layer-decay scale) → forward trunk + head → task loss
(+ L2-SP, + replayed pretraining loss) → backward → clip → step → log → evaluate on the
validation split → keep the best model (``OUT/best/``) → stop early after ``patience``
evaluations without improvement.

Then the best model is read back from disk and scored on valid and test, and the pretraining
objective is measured on held-out pretraining data before vs after (forgetting).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import RunConfig, TrainSection
from ..distributed import make_accelerator
from ..metrics import MetricsLog
from ..train import learning_rate
from . import metrics as M
from .data import Example, batches
from .forgetting import ForgettingProbe, ReplayStream
from .heads import FinetuneModel
from .strategies import L2SP, base_transformer, param_groups
from .tasks import LabelInfo, Task


@dataclass
class LoopSettings:
    lr: float = 1e-4
    epochs: int = 10
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 16
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    layer_decay: float = 1.0
    l2sp: float = 0.0
    replay: float = 0.0
    metric: str | None = None  # default: the task's
    patience: int | None = None  # evaluations without improvement before stopping
    eval_every: int | None = None  # steps; default one epoch
    clip_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"
    progress: bool = True


@dataclass
class LoopInputs:
    model: FinetuneModel
    task: Task
    labels: LabelInfo
    train: list[Example]
    valid: list[Example]
    pad_id: int
    save_best: Callable[[FinetuneModel, dict], None]  # writes OUT/best/
    run_dir: Path
    probe: ForgettingProbe | None = None
    replay: ReplayStream | None = None
    strategy: str = "full"
    extra: dict[str, Any] = field(default_factory=dict)


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
    logits = predict_logits(model, examples, batch_size, pad_id, task.level, device)
    targets = [e.target for e in examples]
    result = task.metrics(logits, targets, labels)
    with torch.no_grad():  # the task loss on the split, for the record
        losses = [float(task.loss(torch.from_numpy(lg)[None], torch.from_numpy(t)[None], labels)) for lg, t in zip(logits, targets)]
    result["loss"] = float(np.mean(losses))
    return result


def _schedule(s: LoopSettings, max_steps: int) -> RunConfig:
    warmup = max(1, int(round(s.warmup_fraction * max_steps)))
    return RunConfig(train=TrainSection(max_steps=max_steps, lr=s.lr, warmup_steps=warmup, min_lr_ratio=0.0))


def train_loop(inputs: LoopInputs, s: LoopSettings) -> dict[str, Any]:
    """Train; returns {"best_step", "best": metrics of the best evaluation, "steps", "stopped_early"}."""
    model, task, labels = inputs.model, inputs.task, inputs.labels
    accelerator = make_accelerator(s.mixed_precision)
    device = accelerator.device
    torch.manual_seed(s.seed)
    n_layer = base_transformer(model.trunk).config.n_layer
    l2sp = L2SP(model, s.l2sp) if s.l2sp > 0 else None
    groups = param_groups(model, n_layer, s.weight_decay, s.layer_decay, l2sp=l2sp is not None)
    optimizer = torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.98), eps=1e-8)
    model, optimizer = accelerator.prepare(model, optimizer)
    steps_per_epoch = math.ceil(len(inputs.train) / s.batch_size)
    max_steps = s.max_steps or s.epochs * steps_per_epoch
    eval_every = s.eval_every or steps_per_epoch
    schedule = _schedule(s, max_steps)
    metric = s.metric or task.default_metric
    log = MetricsLog(inputs.run_dir / "metrics.jsonl")
    replay_weight = s.replay if inputs.replay is not None else 0.0

    best, best_value, best_step, bad_evals, stopped_early = None, None, 0, 0, False
    epoch, queue, step = 0, [], 0
    bar = tqdm(total=max_steps, disable=not s.progress, dynamic_ncols=True, unit="step")
    start = time.perf_counter()
    unwrapped = accelerator.unwrap_model(model)
    if inputs.strategy == "frozen":
        unwrapped.trunk.eval()  # no dropout in a trunk that does not train
    while step < max_steps:
        if not queue:
            queue = batches(inputs.train, s.batch_size, inputs.pad_id, task.level, seed=s.seed, epoch=epoch)
            epoch += 1
        batch = queue.pop(0)
        lr = learning_rate(step, schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]

        model.train()
        if inputs.strategy == "frozen":
            unwrapped.trunk.eval()
        with accelerator.autocast():
            logits = model(batch.tokens.to(device))
            task_loss = task.loss(logits, batch.targets.to(device), labels)
            loss = (1.0 - replay_weight) * task_loss
            replay_loss = None
            if replay_weight > 0:
                replay_loss = inputs.replay.loss(unwrapped.trunk, device)
                loss = loss + replay_weight * replay_loss
            if l2sp is not None:
                loss = loss + l2sp(unwrapped)
        accelerator.backward(loss)
        if s.clip_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), s.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        record = {"step": step, "epoch": epoch, "loss": float(task_loss.detach()), "lr": lr}
        if replay_loss is not None:
            record["replay_loss"] = float(replay_loss.detach())
        log.write(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        bar.update(1)

        if step % eval_every == 0 or step == max_steps:
            result = evaluate(unwrapped, task, labels, inputs.valid, s.batch_size, inputs.pad_id, device)
            if metric not in result:
                raise ValueError(f"--metric {metric}: not computed for {task.name}; available: {', '.join(sorted(result))}")
            log.write({"step": step, "split": "valid", **result, "elapsed_s": time.perf_counter() - start})
            bar.write(f"step {step}: valid {metric} {result[metric]:.4f} (loss {result['loss']:.4f})")
            if M.is_better(metric, result[metric], best_value):
                best, best_value, best_step, bad_evals = result, result[metric], step, 0
                inputs.save_best(unwrapped, {"step": step, "valid": result})
            else:
                bad_evals += 1
                if s.patience is not None and bad_evals >= s.patience:
                    stopped_early = True
                    bar.write(f"stopping early: no better valid {metric} for {bad_evals} evaluations")
                    break
    bar.close()
    log.close()
    if best is None:  # every evaluation was nan: keep the last model so there is one
        inputs.save_best(unwrapped, {"step": step, "valid": result})
        best, best_step = result, step
    return {"best_step": best_step, "best": best, "steps": step, "stopped_early": stopped_early, "metric": metric, "max_steps": max_steps}
