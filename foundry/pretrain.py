"""Pretraining: from a run config to a trained model directory.

``PretrainWorkload`` is what the one loop (``foundry.train``) trains here: packed token batches,
the modality's registered objective (or ``objective.name``), validation loss against the unigram
baseline. Everything that can fail on bad input (data, tokenizer, preset, config) is checked before
the run directory is created, so a failed start never leaves something that looks like a run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_directory, atomic_write_text
from .checkpoint import latest_checkpoint
from .config import RunConfig, resolve_for_run
from .corpus import RunData, load_run_data
from .data.packing import Batch, PackedStream, evaluation_batches
from .distributed import process_state
from .errors import FoundryError
from .loading import model_from_preset
from .modality import Modality
from .objectives import IGNORE_INDEX, PACKED_TOKENS, Objective, build_objective, objective_class, objectives_for, unigram_log_probs
from .plugins import get_manager
from .rundir import checkpoint_to_resume, writing
from .train import StepLoss, StreamWorkload, run_training

UNIGRAM_SAMPLE_DOCS = 5000
EVAL_SEED_OFFSET = 1_000_003  # keeps validation masking apart from training masking


class PretrainWorkload(StreamWorkload):
    """Self-supervised training on packed token batches; the best model is the lowest val loss."""

    metric, higher_is_better = "val_loss", False

    def __init__(self, cfg: RunConfig, model, tokenizer, objective: Objective, stream: PackedStream, eval_batches: list[Batch],
                 unigram_counts: torch.Tensor, modality: Modality):
        self.cfg, self.model, self.tokenizer, self.objective = cfg, model, tokenizer, objective
        self.stream, self.eval_batches, self.modality = stream, eval_batches, modality
        self.weight_decay = cfg.train.weight_decay
        self.log_probs = unigram_log_probs(unigram_counts)

    def _objective_loss(self, model, batch: Batch, seed: int, device, train: bool):
        generator = torch.Generator().manual_seed(seed * self.objective.seed_stride + batch.index)
        return self.objective(model, batch.tokens, batch.document_ids, generator=generator, train=train, device=device)

    def loss(self, model, batch: Batch, seed: int, device) -> StepLoss:
        loss, _ = self._objective_loss(model, batch, seed, device, train=True)
        return StepLoss(loss, batch.real_tokens, batch.tokens.numel())

    @torch.no_grad()
    def evaluate(self, model, accelerator) -> dict[str, float]:
        """Validation loss on fixed batches (fixed masking) and the unigram baseline on the same targets."""
        import math

        model.eval()
        log_probs = self.log_probs.to(accelerator.device)
        totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, baseline sum, count
        for i, batch in enumerate(self.eval_batches[: self.cfg.train.eval_batches]):
            if i % accelerator.num_processes != accelerator.process_index:
                continue
            with accelerator.autocast():
                loss, labels = self._objective_loss(model, batch, self.cfg.train.seed + EVAL_SEED_OFFSET, accelerator.device, train=False)
            targets = labels[labels != IGNORE_INDEX].to(accelerator.device)
            count = torch.tensor(float(len(targets)), dtype=torch.float64, device=accelerator.device)
            totals += torch.stack([loss.double() * len(targets), -log_probs[targets].sum().double(), count])
        totals = accelerator.reduce(totals, reduction="sum")
        count = max(1.0, float(totals[2]))
        val_loss = float(totals[0]) / count
        return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0)), "baseline_loss": float(totals[1]) / count,
                "val_targets": int(count)}

    def describe_evaluation(self, step: int, result: dict[str, float]) -> str:
        return f"step {step}: val_loss {result['val_loss']:.4f} (unigram baseline {result['baseline_loss']:.4f})"

    def save_model(self, model, directory: Path) -> None:
        from .model.store import save_model

        save_model(directory, model, self.tokenizer, self.modality.name)

    def restore_model(self, model, directory: Path) -> None:
        from .model.store import load_model

        model.load_state_dict(load_model(directory).model.state_dict())


def unigram_counts(dataset, vocab_size: int) -> torch.Tensor:
    n = min(len(dataset), UNIGRAM_SAMPLE_DOCS)
    picks = np.linspace(0, len(dataset) - 1, n).astype(int) if n else []
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i in picks:
        counts += np.bincount(np.asarray(dataset[int(i)], dtype=np.int64), minlength=vocab_size)[:vocab_size]
    return torch.from_numpy(counts)


def objective_name(cfg: RunConfig, modality: Modality) -> str:
    return cfg.objective.name or modality.objective


def _model_and_tokenizer(cfg: RunConfig, modality: Modality, checkpoint: Path | None):
    """The model to train (None: build from the preset once the tokenizer exists) and its tokenizer."""
    if checkpoint is not None:
        from .model.store import load_model

        loaded = load_model(checkpoint / "model")
        return loaded.model, loaded.tokenizer
    if cfg.model.init_from:
        from .loading import load_for_modality

        model, tokenizer, _ = load_for_modality(cfg.model.init_from, modality)
        return model, tokenizer
    return None, None


def build_workload(cfg: RunConfig, modality: Modality, checkpoint: Path | None) -> tuple[PretrainWorkload, RunData]:
    model, tokenizer = _model_and_tokenizer(cfg, modality, checkpoint)
    data: RunData = load_run_data(cfg, modality, tokenizer)
    tokenizer = data.tokenizer
    name = objective_name(cfg, modality)
    kind = objective_class(name).batch_kind
    if kind != PACKED_TOKENS:  # sft, dpo, a plugin's objective for its own data: another command trains it
        raise FoundryError(f"objective {name}: trains on {kind} batches, not a pretraining corpus; pretraining objectives: "
                           f"{', '.join(objectives_for(PACKED_TOKENS))} (`foundry {modality.name} --help` lists the commands for the others)")
    objective = build_objective(name, tokenizer, cfg.objective)
    if model is None:
        torch.manual_seed(cfg.train.seed)  # the initial weights are part of what the seed fixes
        model = model_from_preset(modality, cfg.model.preset, tokenizer, cfg.model.overrides)
    if bool(model.config.causal) != objective.causal:
        kind = "causal" if model.config.causal else "masked"
        raise FoundryError(f"objective {objective.name} needs a {'causal' if objective.causal else 'masked'} model; this one is {kind}")
    from .data.dataset import check_fits_vocab

    check_fits_vocab(data.train, model.config.vocab_size, "training")
    check_fits_vocab(data.valid, model.config.vocab_size, "validation")
    if cfg.data.max_len > model.config.max_position:
        raise FoundryError(f"data.max_len {cfg.data.max_len}: the model has {model.config.max_position} positions; "
                           f"set data.max_len <= {model.config.max_position}")
    stream = PackedStream(data.train, max_len=cfg.data.max_len, batch_tokens=cfg.data.batch_tokens, pad_id=tokenizer.pad_id,
                          seed=cfg.train.seed, pack=cfg.data.pack, order=data.order)
    eval_batches = evaluation_batches(data.valid, max_len=cfg.data.max_len, batch_tokens=cfg.data.batch_tokens, pad_id=tokenizer.pad_id,
                                      limit=cfg.train.eval_batches)
    workload = PretrainWorkload(cfg, model, tokenizer, objective, stream, eval_batches, unigram_counts(data.train, tokenizer.vocab_size), modality)
    return workload, data


def pretrain(cfg: RunConfig, resume: Path | None = None) -> dict[str, Any]:
    modality = get_manager().modality(cfg.modality)
    cfg = resolve_for_run(cfg, modality)
    run_dir = Path(resume or cfg.out)
    main_process = process_state().is_main_process
    checkpoint = checkpoint_to_resume(run_dir, resume, main_process)
    with writing(run_dir, fresh=checkpoint is None, main_process=main_process):
        workload, data = build_workload(cfg, modality, checkpoint)
        if main_process:
            atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        result = run_training(workload, cfg.train, run_dir, resume_from=checkpoint, tracker_config=cfg.to_dict())
        summary = {
            **result,
            "modality": modality.name,
            "objective": workload.objective.name,
            "train_documents": len(data.train),
            "valid_documents": len(data.valid),
            "parameters": sum(p.numel() for p in workload.model.parameters()),
            "final_model": str(run_dir / "final"),
            "checkpoint": str(latest_checkpoint(run_dir).relative_to(run_dir)),
        }
        if main_process:
            _publish_final(run_dir)
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


def _publish_final(run_dir: Path) -> None:
    """``OUT/final`` becomes a copy of the last checkpoint's model dir, replaced atomically: a crash
    leaves the old ``final`` or the new one, never neither."""
    with atomic_directory(run_dir / "final") as tmp:
        shutil.copytree(latest_checkpoint(run_dir) / "model", tmp, dirs_exist_ok=True)
