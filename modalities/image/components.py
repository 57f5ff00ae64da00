"""The image plugin's registered components: the objective ``mae`` and the task
``image-classification`` (``plugin.py`` registers them through ``register_objectives`` /
``register_tasks``, as "module:Class" strings, so listing plugins imports no torch).

An image objective consumes ``IMAGE_BATCHES`` (``batch_kind``): normalised float images
(B, C, H, W), not packed tokens, so token pretraining refuses it and ``foundry image pretrain
--objective NAME`` offers every registered objective of this kind — a third-party plugin adds one
by subclassing ``ImageObjective`` and registering it. An image task names ``"image"`` in its
``modalities``; ``foundry image finetune --task NAME`` offers every such task.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from foundry.errors import ConfigError, DataError
from foundry.finetune.tasks import LabelInfo, Task
from foundry.objectives import Objective, objective_class, objectives_for

#: what an image objective trains on: normalised float images (B, C, H, W)
IMAGE_BATCHES = "image-tensors"
MODALITY = "image"


class ImageObjective(Objective):
    """Self-supervised training on images around a timm encoder.

    ``settings`` is the run's settings dict (the keys this objective reads); ``build(encoder)``
    returns the module that trains (it keeps the timm encoder as ``.encoder``); ``spec()`` is what
    a saved model keeps so that ``cls(spec).build(encoder)`` rebuilds it; ``__call__`` returns
    ``(mean loss, how many units it scored)``: evaluation weights batches by that count.
    """

    batch_kind = IMAGE_BATCHES
    #: what ``spec`` saves from the settings (and what ``--resume`` and ``evaluate`` need back)
    keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: dict[str, Any]):
        super().__init__(None, settings)

    def spec(self) -> dict[str, Any]:
        return {"objective": self.name, **{k: self.settings[k] for k in self.keys}}

    def build(self, encoder: nn.Module) -> nn.Module:
        raise NotImplementedError

    def __call__(self, model, images: torch.Tensor, *, generator: torch.Generator, train: bool = True,
                 device: Any = "cpu") -> tuple[torch.Tensor, float]:
        raise NotImplementedError


class MaskedPatches(ImageObjective):
    name = "mae"
    description = "masked-patch autoencoding (MAE): drop mask_ratio of the patches, MSE on the dropped ones"
    loss_name = "masked-patch MSE"
    seed_stride = 1_000_003
    keys = ("mask_ratio", "norm_pix_loss", "decoder")

    def check(self) -> None:
        ratio = self.settings.get("mask_ratio")
        if not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
            raise ConfigError(f"objective mae: mask_ratio must be between 0 and 1 (exclusive), got {ratio!r}")

    def build(self, encoder: nn.Module) -> nn.Module:
        from .mae import MaskedAutoencoder

        s, d = self.settings, self.settings["decoder"]
        return MaskedAutoencoder(encoder, d["dim"], d["depth"], d["heads"], s["mask_ratio"], s["norm_pix_loss"])

    def __call__(self, model, images, *, generator, train=True, device="cpu"):
        loss, _, mask = model(images.to(device), generator)
        return loss, float(mask.sum())


def image_objective(name: str) -> type[ImageObjective]:
    """The registered objective ``name``, which must train on images (else the image ones are listed)."""
    cls = objective_class(name)
    if cls.batch_kind != IMAGE_BATCHES:
        raise ConfigError(f"objective {name} trains on {cls.batch_kind} batches, not images; "
                          f"image objectives: {', '.join(objectives_for(IMAGE_BATCHES))}")
    return cls


# -- tasks -----------------------------------------------------------------------------------------


class ImageClassification(Task):
    """One class per image: pooled encoder features -> dropout -> linear head, cross-entropy;
    accuracy (the metric that picks the best model), macro-F1, balanced accuracy."""

    name = "image-classification"
    level = "image"
    modalities = (MODALITY,)
    default_metric = "accuracy"

    def fit(self, labels: list[str], where: list[str]) -> LabelInfo:
        names = sorted(set(labels))
        if len(names) < 2:
            raise DataError(f"{where[0] if where else 'training split'}: one class ({names[0]!r}); classification needs at least two")
        return LabelInfo(names)

    def build_model(self, trunk: nn.Module, n_classes: int, dropout: float) -> nn.Module:
        from .classify import ImageClassifier

        return ImageClassifier(trunk, n_classes, dropout)

    def loss(self, logits, targets, info=None):
        return nn.functional.cross_entropy(logits.float(), targets)

    def metrics(self, logits, targets, info):
        from foundry.finetune.metrics import accuracy, balanced_accuracy, f1

        targets, n = np.asarray(targets), len(info.names)
        pred = logits.argmax(-1).numpy()
        loss = float(nn.functional.cross_entropy(logits.float(), torch.as_tensor(targets)))
        return {"accuracy": accuracy(targets, pred), "macro_f1": f1(targets, pred, n),
                "balanced_accuracy": balanced_accuracy(targets, pred, n), "loss": loss}


def image_task_names() -> list[str]:
    """The registered tasks whose ``modalities`` name images, in registration order."""
    from foundry.plugins import get_manager

    manager = get_manager()
    return [n for n in manager.tasks.names() if MODALITY in (manager.task_class(n).modalities or ())]


def image_task(name: str) -> Task:
    from foundry.plugins import get_manager

    offered = image_task_names()
    if name not in offered:
        raise ConfigError(f"--task {name}: not an image task; image tasks: {', '.join(offered) or '(none registered)'}")
    return get_manager().task_class(name)()
