"""``foundry image pretrain``: self-supervised pretraining on unlabelled images with a registered
image objective (``--objective``, default ``mae``: masked patches; ``components.ImageObjective``),
trained by the one loop (``foundry.train.run_training``: checkpoints, exact resume, metrics.jsonl, SIGTERM).

    OUT/config.yaml       the run's settings (--resume OUT needs nothing else)
    OUT/metrics.jsonl    loss per step, validation loss (fixed masks on held-out images)
    OUT/checkpoints/     model dir + optimizer + RNG + stream position
    OUT/final/           the last model dir: --from for `foundry image finetune`, `foundry image export`
    OUT/summary.json     written last: the run finished
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from foundry.atomic import atomic_directory, atomic_write_text
from foundry.checkpoint import latest_checkpoint
from foundry.config import TrainSection
from foundry.errors import FoundryError
from foundry.rundir import checkpoint_to_resume, writing
from foundry.train import StepLoss, StreamWorkload, run_training

from .common import ImageStream, load_module_state, read_run_settings, resolve_encoder, write_model_dir, write_run_settings
from .imagedata import ImageSet, normalise, read_images
from .components import ImageObjective, image_objective
from .presets import PRESETS

EVAL_SEED = 7_777_777  # fixed masks for validation (and `foundry image evaluate`), apart from training's


@torch.no_grad()
def objective_loss(model, objective: ImageObjective, images: torch.Tensor, batch_size: int, device=None,
                   seed: int = EVAL_SEED) -> tuple[float, float]:
    """(loss, units scored) of ``objective`` over ``images`` ([0, 1], in order) with fixed randomness
    (``seed``): validation, ``foundry image evaluate`` and the forgetting report all use this."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0.0
    for start in range(0, len(images), batch_size):
        loss, scored = objective(model, normalise(images[start : start + batch_size]), generator=generator, train=False, device=device)
        total, count = total + float(loss) * scored, count + scored
    return total / max(count, 1.0), count


class MAEWorkload(StreamWorkload):
    """What the loop trains: an image objective (MAE by default) on a fixed set of images; the
    best model is the lowest val loss."""

    metric, higher_is_better = "val_loss", False

    def __init__(self, model, objective: ImageObjective, train: ImageSet, valid: ImageSet, settings: dict, train_cfg: TrainSection):
        self.model, self.objective, self.train, self.valid, self.settings, self.t = model, objective, train, valid, settings, train_cfg
        self.stream = ImageStream(len(train), settings["batch_size"], train_cfg.seed)
        self.weight_decay = train_cfg.weight_decay

    def loss(self, model, batch, seed: int, device) -> StepLoss:
        images = normalise(self.train.images[torch.as_tensor(batch.indices)])
        generator = torch.Generator().manual_seed(seed * self.objective.seed_stride + batch.index)
        loss, scored = self.objective(model, images, generator=generator, train=True, device=device)
        return StepLoss(loss, len(images), len(images), {"scored": scored})

    def evaluate(self, model, accelerator) -> dict[str, float]:
        loss, count = objective_loss(model, self.objective, self.valid.images, self.settings["batch_size"], accelerator.device)
        return {"val_loss": loss, "val_scored": int(count)}

    def describe_evaluation(self, step: int, result: dict[str, float]) -> str:
        return f"step {step}: val_loss {result['val_loss']:.4f} ({self.objective.loss_name})"

    def save_model(self, model, directory: Path) -> None:
        s = self.settings
        spec = {"kind": self.objective.name, "preset": s["preset"], **self.objective.spec()}
        write_model_dir(directory, model, spec, model.encoder, s["encoder"], s.get("timm_name"))

    def restore_model(self, model, directory: Path) -> None:
        load_module_state(model, directory)


def held_out_indices(n: int, fraction: float) -> list[int]:
    """Which of ``n`` images validation holds out: every k-th (k = 1/fraction), at least one."""
    step = max(2, int(round(1.0 / max(fraction, 1e-6))))
    return list(range(step - 1, n, step)) or [n - 1]


def split_valid(images: ImageSet, fraction: float) -> tuple[ImageSet, ImageSet]:
    """Every k-th image (k = 1/fraction, at least one image) is held out for validation."""
    n = len(images)
    if n < 2:
        raise FoundryError(f"{n} image(s): pretraining needs at least 2 (one is held out for validation)")
    held = set(held_out_indices(n, fraction))
    keep = [i for i in range(n) if i not in held]
    pick = lambda idx: ImageSet(images.images[idx], [images.ids[i] for i in idx])  # noqa: E731
    return pick(keep), pick(sorted(held))


def build_model(settings: dict, channels: int, objective: ImageObjective):
    from .backbone import build_encoder, encoder_kwargs

    torch.manual_seed(settings["train"]["seed"])  # the initial weights are part of what the seed fixes
    if "encoder" in settings:  # resuming: the checkpoint brings the weights
        kwargs = settings["encoder"]
        encoder = build_encoder(kwargs)
    elif settings.get("from"):
        encoder, kwargs, timm_name = resolve_encoder(settings["from"], settings.get("timm_model"), channels if settings.get("timm_model") else None)
        settings["timm_name"] = timm_name
    else:
        preset = PRESETS[settings["preset"]]
        kwargs = encoder_kwargs(preset, channels, settings.get("image_size"))
        encoder = build_encoder(kwargs)
        settings["timm_name"] = preset["timm_name"] if kwargs["img_size"] == preset["img_size"] else None
    if kwargs["in_chans"] != channels:
        raise FoundryError(f"the model takes {kwargs['in_chans']}-channel images; the data has {channels} channel(s)")
    settings["encoder"] = kwargs
    return objective.build(encoder)


def pretrain_images(settings: dict, resume: Path | None = None, max_steps: int | None = None) -> dict[str, Any]:
    """Run (or resume) an image MAE pretraining; ``settings`` as ``commands.pretrain`` builds them.
    Resuming, ``max_steps`` trains on to that step (saved with the run, so a later resume keeps it)."""
    if resume is not None:
        settings = read_run_settings(resume, "pretrain")
        if max_steps is not None:
            settings["train"]["max_steps"] = max_steps
    out = Path(resume or settings["out"])
    checkpoint = checkpoint_to_resume(out, resume, True)
    objective = image_objective(settings.setdefault("objective", "mae"))(settings)  # an unknown name fails before any reading
    size = settings["encoder"]["img_size"] if "encoder" in settings else _image_size(settings)
    images = read_images(Path(settings["data"]), size, settings["encoder"]["in_chans"] if "encoder" in settings else None)
    train, valid = split_valid(images, settings["valid_fraction"])
    model = build_model(settings, images.channels, objective)
    t = TrainSection(**settings["train"])
    workload = MAEWorkload(model, objective, train, valid, settings, t)
    with writing(out, fresh=checkpoint is None, main_process=True):
        write_run_settings(out, settings)
        result = run_training(workload, t, out, resume_from=checkpoint, tracker_config=settings)
        summary = {**result, "modality": "image", "objective": objective.name, "train_images": len(train), "valid_images": len(valid),
                   "channels": images.channels, "image_size": settings["encoder"]["img_size"],
                   "parameters": sum(p.numel() for p in model.parameters()),
                   "encoder_parameters": sum(p.numel() for p in model.encoder.parameters()),
                   "final_model": str(out / "final"), "checkpoint": str(latest_checkpoint(out).relative_to(out))}
        with atomic_directory(out / "final") as tmp:
            shutil.copytree(latest_checkpoint(out) / "model", tmp, dirs_exist_ok=True)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def _image_size(settings: dict) -> int:
    if settings.get("from"):  # the imported model's own size
        _, kwargs, _ = resolve_encoder(settings["from"], settings.get("timm_model"))
        return kwargs["img_size"]
    return settings.get("image_size") or PRESETS[settings["preset"]]["img_size"]
