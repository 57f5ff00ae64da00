"""``foundry image evaluate``: a pretrained model's own objective (MAE: MSE on masked patches) on
held-out images, as validation scores it: the objective's randomness (which patches are dropped)
comes from a fixed seed, by default the one validation uses, so two models are scored on the same
masks and the loss compares with the run's ``val_loss``.

    foundry image evaluate --model runs/image/final held_out/ more.csv   # last stdout line: JSON

The objective is rebuilt from the registry by the name the model directory records
(``image_model.json``: ``objective`` and its settings), so a plugin's image objective is
evaluated the same way. ``load_pretrained`` is also what the forgetting report of fine-tuning uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from foundry.errors import CheckpointError, DataError, FoundryError

from .common import load_module_state, read_model_spec
from .components import ImageObjective, image_objective


def pretrained_dir(path: Path) -> Path:
    """A model directory; a pretraining run directory means its ``final``."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory (give OUT/final of `foundry image pretrain`)")
    if not (path / "image_model.json").is_file() and (path / "final" / "image_model.json").is_file():
        return path / "final"
    return path


def load_pretrained(path: Path) -> tuple[torch.nn.Module, ImageObjective, dict[str, Any]]:
    """(model with its objective's parts, e.g. MAE's decoder; the objective; the model spec)."""
    from .backbone import build_encoder

    directory = pretrained_dir(path)
    spec = read_model_spec(directory)
    if spec.get("kind") == "classifier":
        raise CheckpointError(f"{directory}: a fine-tuned classifier (no pretraining objective to score); "
                              "give a pretrained model, OUT/final of `foundry image pretrain`")
    objective = image_objective(spec.get("objective") or spec.get("kind", "mae"))(spec)
    model = objective.build(build_encoder(spec["encoder"]))
    load_module_state(model, directory)
    return model.eval(), objective, spec


def read_held_out(paths: Sequence[Path], size: int, channels: int):
    """Every image of ``paths`` (folders, image files, CSVs) at the model's size and channels."""
    from .imagedata import ImageSet, read_images

    if not paths:
        raise FoundryError("image evaluate: give one or more held-out images, folders or CSV files to score")
    sets = []
    for path in map(Path, paths):
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        sets.append(read_images(path, size, channels))
    return ImageSet(torch.cat([s.images for s in sets]), [i for s in sets for i in s.ids])


def run_evaluate(model_path: Path, paths: Sequence[Path], *, batch_size: int, seed: int | None, device: str | None) -> dict[str, Any]:
    from foundry.evaluate import pick_device

    from .pretrain import EVAL_SEED, objective_loss

    if batch_size < 1:
        raise FoundryError(f"--batch-size: must be at least 1, got {batch_size}")
    model, objective, spec = load_pretrained(model_path)
    images = read_held_out(paths, spec["encoder"]["img_size"], spec["encoder"]["in_chans"])
    target = pick_device(device)
    loss, scored = objective_loss(model.to(target), objective, images.images, batch_size, target, seed=EVAL_SEED if seed is None else seed)
    return {"loss": loss, "images": len(images), "scored": int(scored), "objective": objective.name,
            "loss_name": objective.loss_name, "model": str(pretrained_dir(model_path))}
