"""Catastrophic forgetting of image fine-tuning, measured as the engine measures it for tokens
(``foundry.finetune.forgetting``): the pretraining objective on held-out pretraining images, before
and after fine-tuning.

When ``--from`` is a model of ``foundry image pretrain`` (``OUT/final``, ``OUT/best``, a
checkpoint's model), the probe rebuilds that model with its objective's own parts (MAE's decoder,
through the registry) and scores the objective with fixed masks (``pretrain.objective_loss``).
"Before" is the pretrained encoder, "after" the best fine-tuned encoder (LoRA merged, head unused)
in the same place, with the same pretrained decoder and the same masks: any difference is the
encoder. The images are the pretraining run's held-out split (rebuilt from its ``config.yaml``, as
pretraining split them) when the run and its data are still there, else the fine-tuning
validation images; the report says which. A timm checkpoint or a fine-tuned classifier given as
``--from`` has no pretraining objective here: no report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from foundry.errors import FoundryError

PROBE_IMAGES = 256  # a measurement, not an evaluation: the first held-out images are enough


@dataclass
class ImageProbe:
    model: nn.Module  # the pretrained model with its objective's parts (MAE: encoder + decoder)
    objective: object
    images: torch.Tensor  # [0, 1], fixed
    source: str  # one line for the report: which images and why
    batch_size: int = 64

    @property
    def objective_name(self) -> str:
        return self.objective.name

    @property
    def loss_name(self) -> str:
        return self.objective.loss_name

    def loss(self, encoder: nn.Module | None = None) -> tuple[float, int]:
        """(loss, units scored) with ``encoder`` in the pretrained encoder's place (None: the pretrained one)."""
        from .pretrain import objective_loss

        original, mode = self.model.encoder, None if encoder is None else encoder.training
        if encoder is not None:
            self.model.encoder = encoder
        try:
            loss, scored = objective_loss(self.model, self.objective, self.images, self.batch_size)
        finally:
            self.model.encoder = original
            if encoder is not None:
                encoder.train(mode)
        return loss, int(scored)


def _pretraining_run(model_dir: Path) -> dict | None:
    """The settings of the ``image pretrain`` run that wrote ``model_dir``, or None."""
    from .common import read_run_settings

    for run in (model_dir.parent, model_dir.parents[2] if len(model_dir.parents) > 2 else None):
        if run is not None and (run / "config.yaml").is_file():
            try:
                return read_run_settings(run, "pretrain")
            except FoundryError:
                return None
    return None


def _pretraining_held_out(data: Path, fraction: float, size: int, channels: int) -> torch.Tensor:
    """The first ``PROBE_IMAGES`` images pretraining held out of ``data``; from a folder only those
    files are read (a pretraining folder may hold far more images than fit in memory at once)."""
    from .imagedata import _stack, image_files, load_image, read_images
    from .pretrain import held_out_indices, split_valid

    if data.is_dir():
        files = image_files(data)
        if len(files) < 2:
            raise FoundryError(f"{data}: fewer than 2 images")
        picked = [files[i] for i in held_out_indices(len(files), fraction)[:PROBE_IMAGES]]
        return _stack([load_image(f, size) for f in picked], [str(f) for f in picked], channels)
    return split_valid(read_images(data, size, channels), fraction)[1].images[:PROBE_IMAGES]


def _held_out(model_dir: Path, size: int, channels: int, fallback: torch.Tensor, fallback_name: str) -> tuple[torch.Tensor, str]:
    run = _pretraining_run(model_dir)
    if run is not None and Path(run["data"]).exists():
        try:
            held = _pretraining_held_out(Path(run["data"]), run["valid_fraction"], size, channels)
            return held, f"{len(held)} held-out pretraining images of {run['data']}"
        except FoundryError:
            pass  # the data changed since: fall back, and say so
    return fallback[:PROBE_IMAGES], (f"{min(len(fallback), PROBE_IMAGES)} validation images of {fallback_name} "
                                     "(the pretraining run's held-out images are not available)")


def build_probe(source: str | None, valid_images: torch.Tensor, valid_name: str, batch_size: int) -> ImageProbe | None:
    """The probe for a fine-tuning run from ``source`` (``--from``), or None when it has no image
    pretraining objective (a timm file, a classifier, no ``--from``) or no longer loads (resume)."""
    from .evaluate import load_pretrained, pretrained_dir

    if not source or not Path(source).is_dir():
        return None
    try:
        model, objective, spec = load_pretrained(Path(source))
    except FoundryError:
        return None
    directory = pretrained_dir(Path(source))
    images, description = _held_out(directory, spec["encoder"]["img_size"], spec["encoder"]["in_chans"], valid_images, valid_name)
    return ImageProbe(model, objective, images, description, batch_size)


def forgetting_summary(probe: ImageProbe, before: tuple[float, int], after: tuple[float, int]) -> dict:
    return {"objective": probe.objective_name, "loss_name": probe.loss_name, "data": probe.source, "targets": before[1],
            "before": before[0], "after": after[0], "increase": after[0] - before[0]}
