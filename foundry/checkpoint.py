"""Run directories and checkpoints that a crash can never leave half-written.

    OUT/config.yaml                  the resolved run config
    OUT/metrics.jsonl                one JSON object per logged step / evaluation
    OUT/checkpoints/step-000200/     model/ (a model dir: usable with --from, export, finetune)
                                     optimizer.pt, trainer.json (step, tokens, scheduler, data
                                     stream position), rng.pt
    OUT/checkpoints/LATEST           name of the newest complete checkpoint
    OUT/final/                       the model dir written when training ends
    OUT/summary.json                 written last: the run finished

A checkpoint is written under a temporary name, flushed, then renamed; LATEST is replaced
atomically after that. Tensors are stored with safetensors or as tensor-only ``.pt`` files that
load with ``weights_only=True``: loading a checkpoint never runs pickled code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_directory, atomic_write_text
from .errors import CheckpointError

CHECKPOINTS = "checkpoints"
LATEST = "LATEST"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    write_model,  # callable(directory) that writes the model dir
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    root = Path(run_dir) / CHECKPOINTS
    final = checkpoint_path(run_dir, step)
    name = final.name
    with atomic_directory(final) as tmp:
        write_model(tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1))
    atomic_write_text(root / LATEST, name + "\n")
    _prune(root, keep, protect=name)
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[: max(0, len(steps) - keep)]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir}: not a foundry run (no config.yaml)")
    marker = run_dir / CHECKPOINTS / LATEST
    if not marker.is_file():
        raise CheckpointError(f"{run_dir}: the run has no complete checkpoint to resume from ({marker} missing)")
    path = run_dir / CHECKPOINTS / marker.read_text().strip()
    for required in ("model", "optimizer.pt", "trainer.json", "rng.pt"):
        if not (path / required).exists():
            raise CheckpointError(f"{path}: incomplete checkpoint ({required} missing)")
    return path


def load_trainer_files(path: Path) -> tuple[dict, dict, dict]:
    """(optimizer state, trainer.json, rng states) of a checkpoint, without executing pickles."""
    try:
        optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
        trainer = json.loads((path / "trainer.json").read_text())
    except Exception as exc:  # noqa: BLE001 - any corruption is reported with the file
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    return optimizer, trainer, rng
