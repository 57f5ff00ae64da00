"""The one training loop, on accelerate: pretraining, fine-tuning (and later SFT, DPO) alike, on a
laptop CPU, one GPU, or ``accelerate launch`` / ``--processes N`` across processes.

Before the first step, with ``train.eval_at_start``: one evaluation of the untrained model (step 0).
Per optimizer step, in reading order: learning-rate schedule → micro-batches (forward, loss,
backward; gradient sync only on the last) → non-finite check → clip → optimizer step → log →
evaluate → keep the best model → early stop → checkpoint.

What differs between pretraining and fine-tuning is a ``Workload`` (``foundry.pretrain``,
``foundry.finetune.workload``): what trains, how batches are drawn, the loss, the evaluation and
how a model directory is written. The loop never names an objective or a task.

The data stream, the corruption randomness and the schedule are functions of (seed, step), and all
of their state is in the checkpoint, so an interrupted run resumed from step k produces the same
losses, step for step, as one that never stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .checkpoint import load_trainer_files, save_checkpoint
from .config import TrainSection
from .distributed import Sharded, check_shardable, is_sharded, make_accelerator, prepare_model
from .errors import FoundryError
from .metrics import MetricsLog
from .signals import StopSignals

#: consecutive skipped (non-finite) steps after which ``train.on_nonfinite=skip`` gives up
MAX_SKIPPED_IN_A_ROW = 10


class TrainingDiverged(FoundryError):
    """The loss or the gradients stopped being finite."""


class TrainingInterrupted(FoundryError):
    """SIGTERM/SIGINT arrived; carries the exit status the CLI should use."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class StepLoss:
    """One micro-batch's loss and what it consumed (``tokens``: real tokens, ``slots``: tokens
    including padding), plus any extra numbers to log (e.g. a replayed pretraining loss)."""

    loss: torch.Tensor
    tokens: int
    slots: int
    extra: dict[str, float] = field(default_factory=dict)


class Workload(Protocol):
    """What the loop trains. Pretraining, fine-tuning, SFT and DPO differ only here.
    ``StreamWorkload`` below gives the stream and parameter-group methods to subclass."""

    model: torch.nn.Module
    #: the evaluation key that picks the best model and drives early stopping
    metric: str
    higher_is_better: bool

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups, each with ``weight_decay`` and optionally ``lr_scale``."""

    def next_batch(self, rank: int, world: int) -> Any:
        """This process's next micro-batch; every process advances the stream identically."""

    def data_state(self) -> dict:
        """The stream position, stored in checkpoints."""

    def load_data_state(self, state: dict) -> None: ...

    def loss(self, model: torch.nn.Module, batch: Any, seed: int, device: Any) -> StepLoss: ...

    def train_mode(self, model: torch.nn.Module) -> None:
        """Put the model in training mode (a frozen trunk may stay in eval mode)."""

    def evaluate(self, model: torch.nn.Module, accelerator: Accelerator) -> dict[str, float]:
        """Validation numbers, including ``metric``; called on every process."""

    def describe_evaluation(self, step: int, result: dict[str, float]) -> str:
        """The line printed after an evaluation."""

    def save_model(self, model: torch.nn.Module, directory: Path) -> None:
        """Write a usable model directory (checkpoints hold one, and ``OUT/best``)."""

    def restore_model(self, model: torch.nn.Module, directory: Path) -> None:
        """Load a checkpoint's model directory back into ``model`` (for --resume)."""


class StreamWorkload:
    """The part of a ``Workload`` that every workload shares: subclass it and write what differs
    (``metric``, ``higher_is_better``, ``loss``, ``evaluate``, ``describe_evaluation``,
    ``save_model``, ``restore_model``).

    It expects ``self.model`` (the module that trains), ``self.weight_decay`` (for the one
    weight-decay rule, ``param_groups``) and ``self.stream``, a resumable stream with
    ``next_for_rank(rank, world)`` (this process's next batch; every process advances the stream
    identically), ``state_dict()`` and ``load_state_dict(state)``. Override a default where a
    workload differs (fine-tuning: layer-wise LR decay, a frozen trunk left in eval mode).
    """

    model: torch.nn.Module
    stream: Any
    weight_decay: float

    def param_groups(self) -> list[dict]:
        return param_groups(self.model.named_parameters(), self.weight_decay)

    def next_batch(self, rank: int, world: int) -> Any:
        return self.stream.next_for_rank(rank, world)

    def data_state(self) -> dict:
        return self.stream.state_dict()

    def load_data_state(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def train_mode(self, model: torch.nn.Module) -> None:
        model.train()


def param_groups(named_parameters, weight_decay: float, lr_scale=None, no_decay=None) -> list[dict]:
    """The one weight-decay rule: no decay on 1-D tensors (biases, norms) and embeddings.
    ``lr_scale(name) -> float`` (layer-wise LR decay) and ``no_decay(name) -> bool`` (e.g. L2-SP
    replaces decay toward zero) refine it; groups are keyed by (scale, decay)."""
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and "embed" not in name and not (no_decay and no_decay(name))
        scale = float(lr_scale(name)) if lr_scale else 1.0
        group = groups.setdefault((scale, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale})
        group["params"].append(param)
    return [groups[key] for key in sorted(groups, key=lambda k: (-k[0], k[1]))]


def learning_rate(step: int, *, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    floor = lr * min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class LoopState:
    """Everything about the run's progress that a checkpoint must carry besides weights."""

    step: int = 0
    tokens: int = 0
    best_value: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    skipped_steps: int = 0

    def is_better(self, value: float, higher: bool) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return self.best_value is None or (value > self.best_value if higher else value < self.best_value)


def run_training(workload: Workload, t: TrainSection, run_dir: Path, *, resume_from: Path | None = None,
                 tracker_config: dict | None = None) -> dict[str, Any]:
    """Train ``workload`` for ``t.max_steps`` optimizer steps. Returns the final loop state as a
    dict plus the last evaluation (keys ``step``, ``tokens``, ``best_step``, ``stopped_early``, …)."""
    run_dir = Path(run_dir)
    accelerator = make_accelerator(t.mixed_precision, t.report_to, run_dir)
    if t.report_to:
        accelerator.init_trackers(run_dir.name, config=_flat(tracker_config or {}))
    torch.manual_seed(t.seed)
    optimizer = torch.optim.AdamW(workload.param_groups(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    state = LoopState()
    if resume_from is not None:
        state = _restore(workload, optimizer, resume_from)
    if is_sharded(accelerator):
        check_shardable(workload.model, accelerator.num_processes)
    sharded = Sharded(accelerator, workload.model)
    restored_optimizer = sharded.before_prepare(workload.model, optimizer)
    prepare_model(workload.model, compile=t.compile, backend=t.compile_backend, activation_checkpointing=t.activation_checkpointing)
    model, optimizer = accelerator.prepare(workload.model, optimizer)
    sharded.after_prepare(model, optimizer, restored_optimizer)
    reporter = Reporter(run_dir, t, accelerator, state.step)
    checkpoints = Checkpointer(workload, accelerator, run_dir, t.keep_checkpoints, sharded)
    evaluator = _EveryProcess(accelerator) if is_sharded(accelerator) else accelerator
    last_eval: dict[str, float] | None = None
    stopped_early = False
    if t.eval_at_start and resume_from is None:  # a resumed run has its step-0 row (and best) already
        last_eval = _evaluate_at_start(workload, model, evaluator, accelerator, run_dir, t, state, reporter, sharded)
    with StopSignals() as signals:
        while state.step < t.max_steps:
            record = _optimizer_step(workload, model, optimizer, accelerator, t, state, signals)
            reporter.step(record, write=state.step % t.log_every == 0 or state.step == t.max_steps or state.step == 1)
            if state.step % t.eval_every == 0 or state.step == t.max_steps:
                last_eval = workload.evaluate(model, evaluator)
                reporter.evaluation(state.step, state.tokens, last_eval, workload.describe_evaluation(state.step, last_eval))
                stopped_early = _keep_best(workload, model, accelerator, run_dir, t, state, last_eval, reporter, sharded)
            if record["stop_signal"]:
                _stop_on_signal(checkpoints, model, optimizer, state, t, signals, reporter)
            if state.step % t.save_every == 0 or state.step == t.max_steps or stopped_early:
                checkpoints.save(model, optimizer, state)
            if stopped_early:
                break
    reporter.close()
    if last_eval is None:  # resumed at or past max_steps: still report where the model stands
        last_eval = workload.evaluate(model, evaluator)
    sharded_over = accelerator.num_processes if is_sharded(accelerator) else 0
    return {**vars(state), "stopped_early": stopped_early, "max_steps": t.max_steps, "fsdp_processes": sharded_over, **last_eval}


def _optimizer_step(workload: Workload, model, optimizer, accelerator: Accelerator, t: TrainSection, state: LoopState, signals) -> dict:
    lr = learning_rate(state.step, lr=t.lr, warmup_steps=t.warmup_steps, max_steps=t.max_steps, min_lr_ratio=t.min_lr_ratio)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    workload.train_mode(model)
    rank, world = accelerator.process_index, accelerator.num_processes
    losses, tokens, slots, extras = [], 0, 0, {}
    for micro in range(t.grad_accum):
        batch = workload.next_batch(rank, world)
        sync = micro == t.grad_accum - 1
        with (contextlib.nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
            out = workload.loss(model, batch, t.seed, accelerator.device)
        accelerator.backward(out.loss / t.grad_accum)
        losses.append(out.loss.detach().float())
        tokens, slots = tokens + out.tokens, slots + out.slots
        for key, value in out.extra.items():
            extras[key] = extras.get(key, 0.0) + value / t.grad_accum
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.clip_norm if t.clip_norm > 0 else float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor

    # Sums over all processes: loss, tokens, slots, a non-finite flag, a stop-signal flag.
    loss_value = torch.stack(losses).mean().item()
    # fp16 (loss scaling): an overflowing gradient is expected while the scale settles; the scaler
    # skips that step and lowers the scale, so only a non-finite loss means divergence there.
    scaled = accelerator.scaler is not None
    finite = math.isfinite(loss_value) and (scaled or math.isfinite(float(grad_norm)))
    stats = torch.tensor([loss_value if finite else 0.0, tokens, slots, 0.0 if finite else 1.0, float(signals.received is not None)],
                         dtype=torch.float64, device=accelerator.device)
    stats = accelerator.reduce(stats, reduction="sum")
    if stats[3] > 0:
        _non_finite(state, t, lr, loss_value, float(grad_norm))
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.skipped_steps = 0
    state.step += 1
    state.tokens += int(stats[1])
    world_size = accelerator.num_processes
    return {
        "step": state.step, "loss": float(stats[0]) / world_size if stats[3] == 0 else None, "lr": lr, "tokens": state.tokens,
        "grad_norm": float(grad_norm) if t.clip_norm > 0 and stats[3] == 0 and math.isfinite(float(grad_norm)) else None,
        "new_tokens": int(stats[1]), "new_slots": int(stats[2]), "stop_signal": bool(stats[4] > 0), **extras,
    }


def _non_finite(state: LoopState, t: TrainSection, lr: float, loss: float, grad_norm: float) -> None:
    what = f"loss {loss:g}" if not math.isfinite(loss) else f"gradient norm {grad_norm:g}"
    if t.on_nonfinite == "skip" and state.skipped_steps + 1 < MAX_SKIPPED_IN_A_ROW:
        state.skipped_steps += 1
        return
    reason = (f"{MAX_SKIPPED_IN_A_ROW} steps in a row were not finite" if t.on_nonfinite == "skip"
              else "set train.on_nonfinite=skip to skip such steps")
    raise TrainingDiverged(f"training diverged at step {state.step + 1}: {what} (lr {lr:g}); stopped without saving "
                           f"non-finite weights, earlier checkpoints are kept. Lower train.lr, or {reason}")


def _keep_best(workload: Workload, model, accelerator: Accelerator, run_dir: Path, t: TrainSection, state: LoopState,
               result: dict[str, float], reporter: "Reporter", sharded: Sharded) -> bool:
    """Update the best model (``OUT/best`` when ``train.keep_best``); True when it is time to stop early."""
    if workload.metric not in result:
        raise FoundryError(f"metric {workload.metric}: not computed by this run; available: {', '.join(sorted(result))}")
    if state.is_better(result[workload.metric], workload.higher_is_better):
        state.best_value, state.best_step, state.bad_evals = result[workload.metric], state.step, 0
        if t.keep_best:
            full = sharded.full_model(model)  # every process takes part in gathering a sharded model
            _on_main(accelerator, lambda: workload.save_model(full, run_dir / "best"))
        return False
    state.bad_evals += 1
    if t.patience is not None and state.bad_evals >= t.patience:
        reporter.say(f"stopping early: no better {workload.metric} for {state.bad_evals} evaluations")
        return True
    return False


def _evaluate_at_start(workload: Workload, model, evaluator, accelerator: Accelerator, run_dir: Path, t: TrainSection, state: LoopState,
                       reporter: "Reporter", sharded: Sharded) -> dict[str, float]:
    """Step 0: the untrained model evaluated and logged like any evaluation, so metrics.jsonl shows
    what training changed. It is the first candidate for keep-best: a run whose steps never beat it
    keeps the model as it started (OUT/best at best_step 0), and patience counts from it. It cannot
    stop the run: a non-finite metric there (no best yet) is not a failed evaluation of training."""
    result = workload.evaluate(model, evaluator)
    reporter.evaluation(0, 0, result, workload.describe_evaluation(0, result))
    if workload.metric not in result or state.is_better(result[workload.metric], workload.higher_is_better):
        _keep_best(workload, model, accelerator, run_dir, t, state, result, reporter, sharded)  # best so far (or: no such metric)
    return result


def _stop_on_signal(checkpoints: "Checkpointer", model, optimizer, state: LoopState, t: TrainSection, signals, reporter) -> None:
    name = signals.received or "a stop signal"
    saved = ""
    if t.save_on_signal:
        path = checkpoints.save(model, optimizer, state)
        saved = f"; checkpoint saved at step {state.step} ({path.name}), continue with --resume"
    reporter.close()
    raise TrainingInterrupted(f"stopped by {name} at step {state.step}{saved}", signals.exit_code)


class Checkpointer:
    """Writes checkpoints on the main process; refuses to write weights that are not finite."""

    def __init__(self, workload: Workload, accelerator: Accelerator, run_dir: Path, keep: int, sharded: Sharded):
        self.workload, self.accelerator, self.run_dir, self.keep, self.sharded = workload, accelerator, run_dir, keep, sharded

    def save(self, model, optimizer, state: LoopState) -> Path:
        from .checkpoint import checkpoint_path

        bad = _first_non_finite(self.accelerator, self.accelerator.unwrap_model(model))
        if bad is not None:
            raise TrainingDiverged(f"training diverged by step {state.step}: parameter {bad} is not finite; "
                                   "not saving it, earlier checkpoints are kept. Lower train.lr")
        optimizer_ = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        # A sharded (FSDP) run is gathered here, on every process, into plain weights and state.
        full_model = self.sharded.full_model(model)
        optimizer_state = _State(self.sharded.optimizer_state(model, optimizer_))
        _on_main(self.accelerator, lambda: save_checkpoint(
            self.run_dir, state.step, write_model=lambda directory: self.workload.save_model(full_model, directory),
            optimizer=optimizer_state, trainer_state={**vars(state), "stream": self.workload.data_state()}, keep=self.keep))
        return checkpoint_path(self.run_dir, state.step)


class _EveryProcess:
    """The accelerator as an evaluation sees it under FSDP: one process. Every forward of a sharded
    model is collective (it gathers each block's weights), so a workload that splits its
    validation batches over processes would leave one waiting for the others; here every process
    evaluates every batch, and there is nothing left to reduce."""

    num_processes, process_index = 1, 0

    def __init__(self, accelerator: Accelerator):
        self._accelerator = accelerator

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def __getattr__(self, name):
        return getattr(self._accelerator, name)


class _State:
    """An optimizer state already gathered, handed to ``save_checkpoint`` as an optimizer."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _first_non_finite(accelerator: Accelerator, model) -> str | None:
    """The name of a parameter that is not finite on any process (FSDP: each checks its shard)."""
    def local(p):
        return p.to_local() if hasattr(p, "to_local") else p

    bad = next((name for name, p in model.named_parameters() if not torch.isfinite(local(p)).all()), None)
    if accelerator.num_processes == 1:
        return bad
    anywhere = accelerator.reduce(torch.tensor([0.0 if bad is None else 1.0], device=accelerator.device), reduction="sum")
    return (bad or "(on another process)") if float(anywhere[0]) > 0 else None


def _on_main(accelerator: Accelerator, action) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        action()
    accelerator.wait_for_everyone()


def _restore(workload: Workload, optimizer: torch.optim.Optimizer, checkpoint: Path) -> LoopState:
    optimizer_state, trainer, rng = load_trainer_files(checkpoint)
    workload.restore_model(workload.model, checkpoint / "model")
    optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(rng["torch"])
    workload.load_data_state(trainer["stream"])
    known = set(vars(LoopState()))
    return LoopState(**{k: v for k, v in trainer.items() if k in known})


class Reporter:
    """Where a run's numbers go: metrics.jsonl, the progress bar, accelerate trackers (main
    process only), with tokens/s measured over each logging window."""

    def __init__(self, run_dir: Path, t: TrainSection, accelerator: Accelerator, step: int):
        self.accelerator, self.trackers = accelerator, bool(t.report_to)
        main = accelerator.is_main_process
        self.log = MetricsLog(run_dir / "metrics.jsonl", truncate_after_step=step) if main else None
        self.bar = tqdm(total=t.max_steps, initial=step, disable=not (t.progress and main), dynamic_ncols=True, unit="step")
        self.window_tokens, self.window_slots, self.window_start = 0, 0, time.perf_counter()
        self.closed = False

    def step(self, record: dict[str, Any], write: bool) -> None:
        """Count one optimizer step; ``write``: log the window since the last written line
        (tokens/s and the padding fraction over the window, not the last step alone)."""
        self.window_tokens += record["new_tokens"]
        self.window_slots += record["new_slots"]
        record = {k: v for k, v in record.items() if k not in ("new_tokens", "new_slots", "stop_signal")}
        self.bar.update(1)
        if not write or self.log is None:
            return
        elapsed = time.perf_counter() - self.window_start
        record["tokens_per_s"] = self.window_tokens / elapsed if elapsed > 0 else float("nan")
        record["padding_fraction"] = 1.0 - self.window_tokens / max(1, self.window_slots)
        self._write(record)
        self.window_tokens, self.window_slots, self.window_start = 0, 0, time.perf_counter()
        loss = record["loss"]
        self.bar.set_postfix(loss="skipped" if loss is None else f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}")

    def evaluation(self, step: int, tokens: int, result: dict[str, float], line: str) -> None:
        if self.log is None:
            return
        self._write({"step": step, "tokens": tokens, "split": "valid", **result})
        self.bar.write(line)

    def say(self, line: str) -> None:
        if self.log is not None:
            self.bar.write(line)

    def _write(self, record: dict[str, Any]) -> None:
        self.log.write(record)
        if self.trackers:
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step" and v is not None}
            self.accelerator.log(numbers, step=record["step"])

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.bar.close()
        if self.log is not None:
            self.log.close()
        if self.trackers:
            self.accelerator.end_training()


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config as flat ``a.b`` keys with scalar values, as trackers want hyperparameters."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
