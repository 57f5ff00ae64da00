"""Pretraining: from a run config to a trained model directory.

Everything that can fail on bad input (data, tokenizer, preset, config) is checked before the run
directory is created, so a failed start never leaves something that looks like a run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write_text
from .checkpoint import latest_checkpoint
from .config import RunConfig
from .corpus import RunData, load_run_data
from .data.packing import PackedStream, evaluation_batches
from .distributed import process_state
from .errors import FoundryError
from .loading import model_from_preset
from .modality import Modality
from .plugins import get_manager
from .train import TrainSetup, run_training

UNIGRAM_SAMPLE_DOCS = 5000


def build_model(cfg: RunConfig, modality: Modality, tokenizer):
    return model_from_preset(modality, cfg.model.preset, tokenizer, cfg.model.overrides)


def model_saver(tokenizer, modality: Modality):
    from .model.store import save_model

    return lambda model, directory: save_model(directory, model, tokenizer, modality.name)


def unigram_counts(dataset, vocab_size: int) -> torch.Tensor:
    n = min(len(dataset), UNIGRAM_SAMPLE_DOCS)
    picks = np.linspace(0, len(dataset) - 1, n).astype(int) if n else []
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i in picks:
        counts += np.bincount(np.asarray(dataset[int(i)], dtype=np.int64), minlength=vocab_size)[:vocab_size]
    return torch.from_numpy(counts)


def check_run_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise FoundryError(f"{out}: already holds files; continue it with --resume {out} or choose another --out")


def pretrain(cfg: RunConfig, resume: Path | None = None) -> dict[str, Any]:
    modality = get_manager().modality(cfg.modality)
    run_dir = Path(resume or cfg.out)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is None:
        check_run_dir(run_dir)

    model, tokenizer = None, None
    if checkpoint is not None:
        from .model.store import load_model

        loaded = load_model(checkpoint / "model")
        model, tokenizer = loaded.model, loaded.tokenizer
    elif cfg.model.init_from:
        from .loading import load_for_modality

        model, tokenizer, _ = load_for_modality(cfg.model.init_from, modality)

    data: RunData = load_run_data(cfg, modality, tokenizer)
    tokenizer = data.tokenizer
    if model is None:
        torch.manual_seed(cfg.train.seed)  # the initial weights are part of what the seed fixes
        model = build_model(cfg, modality, tokenizer)

    stream = PackedStream(data.train, max_len=cfg.data.max_len, batch_tokens=cfg.data.batch_tokens, pad_id=tokenizer.pad_id,
                          seed=cfg.train.seed, pack=cfg.data.pack, order=data.order)
    eval_batches = evaluation_batches(data.valid, max_len=cfg.data.max_len, batch_tokens=cfg.data.batch_tokens, pad_id=tokenizer.pad_id, limit=cfg.train.eval_batches)

    fresh = checkpoint is None
    main_process = process_state().is_main_process
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        if main_process:
            atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        setup = TrainSetup(
            cfg=cfg, run_dir=run_dir, model=model, tokenizer=tokenizer, objective=modality.objective,
            stream=stream, eval_batches=eval_batches, unigram_counts=unigram_counts(data.train, tokenizer.vocab_size),
            save_model=model_saver(tokenizer, modality), resume_from=checkpoint,
        )
        result = run_training(setup)
    except BaseException:
        # A run that failed before its first checkpoint leaves nothing behind that looks like a run.
        if main_process and fresh and not (run_dir / "checkpoints" / "LATEST").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise

    latest = latest_checkpoint(run_dir)
    final = run_dir / "final"
    summary = {
        **result,
        "modality": modality.name,
        "train_documents": len(data.train),
        "valid_documents": len(data.valid),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_model": str(final),
        "checkpoint": str(latest.relative_to(run_dir)),
    }
    if main_process:
        # The final model is a plain copy of the last checkpoint's model dir, made atomically.
        tmp = run_dir / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(latest / "model", tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary
