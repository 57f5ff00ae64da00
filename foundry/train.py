"""The one training loop, on accelerate: the same code runs on a laptop CPU, one GPU, or
``accelerate launch`` across processes.

Per optimizer step, in reading order: learning-rate schedule → micro-batches (forward, loss,
backward; gradient sync only on the last) → clip → optimizer step → log → evaluate → checkpoint.

The data stream, the masking randomness and the schedule are functions of (seed, step), and all
of their state is in the checkpoint, so an interrupted run resumed from step k produces the same
losses, step for step, as one that never stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .checkpoint import load_trainer_files, save_checkpoint
from .config import RunConfig
from .data.packing import Batch, PackedStream, next_batch_for_rank
from .errors import ConfigError
from .fim import apply_fim, fim_sentinels
from .distributed import make_accelerator
from .metrics import MetricsLog
from .objectives import IGNORE_INDEX, causal_labels, lm_loss, mask_tokens

EVAL_SEED_OFFSET = 1_000_003  # keeps validation masking apart from training masking


@dataclass
class TrainSetup:
    cfg: RunConfig
    run_dir: Path
    model: torch.nn.Module
    tokenizer: Any
    objective: str  # "mlm" | "clm"
    stream: PackedStream
    eval_batches: list[Batch]
    unigram_counts: torch.Tensor  # token frequencies of the training data, for the baseline
    save_model: Callable[[torch.nn.Module, Path], None]  # writes a model dir
    resume_from: Path | None = None
    extra_summary: dict[str, Any] = field(default_factory=dict)


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW; biases, norms and embeddings are not weight-decayed (1-D tensors and embeddings)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "embed" in name else decay).append(param)
    t = cfg.train
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)


def learning_rate(step: int, cfg: RunConfig) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    floor = t.lr * t.min_lr_ratio
    return floor + (t.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ObjectiveRunner:
    """Applies the objective to a packed batch and returns (loss, labels)."""

    def __init__(self, objective: str, tokenizer, cfg: RunConfig):
        self.objective = objective
        self.tokenizer = tokenizer
        self.cfg = cfg
        if objective == "mlm" and tokenizer.mask_id is None:
            raise ConfigError("the masked-LM objective needs a tokenizer with a mask token")
        self.fim_ids = fim_sentinels(tokenizer) if objective == "clm" and cfg.objective.fim_rate > 0 else None

    def __call__(self, model, batch: Batch, seed: int, device, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = batch.tokens
        if self.fim_ids is not None and train:
            # Fill-in-the-middle on a share of the documents; validation stays plain next-token.
            generator = torch.Generator().manual_seed(seed * 1_000_000_009 + batch.index)
            special = tuple(i for i in (self.tokenizer.bos_id, self.tokenizer.eos_id) if i is not None)
            tokens = apply_fim(tokens, batch.document_ids, **self.fim_ids, rate=self.cfg.objective.fim_rate, generator=generator, keep_ids=special)
        if self.objective == "mlm":
            generator = torch.Generator().manual_seed(seed * 1_000_000_007 + batch.index)
            o = self.cfg.objective
            inputs, labels = mask_tokens(
                tokens,
                special_ids=self.tokenizer.special_ids,
                maskable_ids=self.tokenizer.maskable_ids,
                mask_id=self.tokenizer.mask_id,
                generator=generator,
                mask_prob=o.mask_prob,
                mask_replace=o.mask_replace,
                random_replace=o.random_replace,
            )
        else:
            inputs, labels = tokens, causal_labels(tokens, batch.document_ids, self.tokenizer.pad_id)
        # Padding is its own "document" 0; the model masks it out of attention.
        out = model(inputs.to(device), document_ids=batch.document_ids.to(device))
        loss, _ = lm_loss(out.logits, labels.to(device))
        return loss, labels


class Reporter:
    """Where a run's numbers go: metrics.jsonl, the progress bar, accelerate trackers (main
    process only), with tokens/s measured over each logging window."""

    def __init__(self, setup: TrainSetup, accelerator: Accelerator, step: int):
        t = setup.cfg.train
        self.accelerator, self.trackers = accelerator, bool(t.report_to)
        main = accelerator.is_main_process
        self.log = MetricsLog(setup.run_dir / "metrics.jsonl", truncate_after_step=step) if main else None
        self.bar = tqdm(total=t.max_steps, initial=step, disable=not (t.progress and main), dynamic_ncols=True, unit="step")
        self.window_tokens, self.window_start = 0, time.perf_counter()

    def step(self, record: dict[str, Any], new_tokens: int, write: bool) -> None:
        self.window_tokens += new_tokens
        self.bar.update(1)
        if not write or self.log is None:
            return
        elapsed = time.perf_counter() - self.window_start
        record["tokens_per_s"] = self.window_tokens / elapsed if elapsed > 0 else float("nan")
        self._write(record)
        self.window_tokens, self.window_start = 0, time.perf_counter()
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}")

    def evaluation(self, step: int, tokens: int, result: dict[str, float]) -> None:
        if self.log is None:
            return
        self._write({"step": step, "tokens": tokens, **result})
        self.bar.write(f"step {step}: val_loss {result['val_loss']:.4f} (unigram baseline {result['baseline_loss']:.4f})")

    def _write(self, record: dict[str, Any]) -> None:
        self.log.write(record)
        if self.trackers:
            numbers = {k: v for k, v in record.items() if k not in ("step", "val_targets") and v is not None}
            self.accelerator.log(numbers, step=record["step"])

    def close(self) -> None:
        self.bar.close()
        if self.log is not None:
            self.log.close()
        if self.trackers:
            self.accelerator.end_training()


def run_training(setup: TrainSetup) -> dict[str, Any]:
    cfg, t = setup.cfg, setup.cfg.train
    accelerator = make_accelerator(t.mixed_precision, t.report_to, setup.run_dir)
    if t.report_to:
        accelerator.init_trackers(setup.run_dir.name, config=_flat(cfg.to_dict()))
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(t.seed)
    optimizer = build_optimizer(setup.model, cfg)
    step, tokens_seen = 0, 0
    if setup.resume_from is not None:
        step, tokens_seen = _restore(setup, optimizer)
    model, optimizer = accelerator.prepare(setup.model, optimizer)
    runner = ObjectiveRunner(setup.objective, setup.tokenizer, cfg)
    reporter = Reporter(setup, accelerator, step)
    last_eval = None
    while step < t.max_steps:
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        model.train()
        losses, real, padded = [], 0, 0
        for micro in range(t.grad_accum):
            batch = next_batch_for_rank(setup.stream, rank, world)
            sync = micro == t.grad_accum - 1
            with (contextlib.nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
                loss, _ = runner(model, batch, t.seed, accelerator.device)
            accelerator.backward(loss / t.grad_accum)
            losses.append(loss.detach().float())
            real += batch.real_tokens
            padded += batch.tokens.numel()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.clip_norm) if t.clip_norm > 0 else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        # Averages and token counts over all processes.
        stats = torch.tensor([torch.stack(losses).mean().item(), real, padded], dtype=torch.float64, device=accelerator.device)
        stats = accelerator.reduce(stats, reduction="sum")
        tokens_seen += int(stats[1])
        record = {
            "step": step, "loss": float(stats[0]) / world, "lr": lr, "tokens": tokens_seen,
            "padding_fraction": 1.0 - float(stats[1]) / float(stats[2]),
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
        }
        reporter.step(record, int(stats[1]), write=step % t.log_every == 0 or step == t.max_steps or step == 1)

        if step % t.eval_every == 0 or step == t.max_steps:
            last_eval = evaluate(model, setup, runner, accelerator)
            reporter.evaluation(step, tokens_seen, last_eval)
        if step % t.save_every == 0 or step == t.max_steps:
            _save(setup, accelerator, model, optimizer, step, tokens_seen)
    reporter.close()
    if last_eval is None:  # resumed at or past max_steps: still report where the model stands
        last_eval = evaluate(model, setup, runner, accelerator)
    return {"step": step, "tokens": tokens_seen, **last_eval}


@torch.no_grad()
def evaluate(model, setup: TrainSetup, runner: ObjectiveRunner, accelerator: Accelerator) -> dict[str, float]:
    """Validation loss on fixed batches (fixed masking) and the unigram baseline on the same targets."""
    model.eval()
    log_probs = _unigram_log_probs(setup.unigram_counts).to(accelerator.device)
    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, baseline sum, count
    for i, batch in enumerate(setup.eval_batches[: setup.cfg.train.eval_batches]):
        if i % accelerator.num_processes != accelerator.process_index:
            continue
        with accelerator.autocast():
            loss, labels = runner(model, batch, setup.cfg.train.seed + EVAL_SEED_OFFSET, accelerator.device, train=False)
        targets = labels[labels != IGNORE_INDEX].to(accelerator.device)
        totals += torch.stack([loss.double() * len(targets), -log_probs[targets].sum().double(), torch.tensor(float(len(targets)), dtype=torch.float64, device=accelerator.device)])
    totals = accelerator.reduce(totals, reduction="sum")
    count = max(1.0, float(totals[2]))
    val_loss = float(totals[0]) / count
    return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0)), "baseline_loss": float(totals[1]) / count, "val_targets": int(count)}


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config as flat ``a.b`` keys with scalar values, as trackers want hyperparameters."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _unigram_log_probs(counts: torch.Tensor) -> torch.Tensor:
    smoothed = counts.double() + 1.0
    return (smoothed / smoothed.sum()).log()


def _save(setup: TrainSetup, accelerator: Accelerator, model, optimizer, step: int, tokens: int) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_checkpoint(
            setup.run_dir,
            step,
            write_model=lambda directory: setup.save_model(unwrapped, directory),
            optimizer=optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
            trainer_state={"step": step, "tokens": tokens, "stream": setup.stream.state_dict()},
            keep=setup.cfg.train.keep_checkpoints,
        )
    accelerator.wait_for_everyone()


def _restore(setup: TrainSetup, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    optimizer_state, trainer, rng = load_trainer_files(setup.resume_from)
    optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(rng["torch"])
    setup.stream.load_state_dict(trainer["stream"])
    return int(trainer["step"]), int(trainer["tokens"])
