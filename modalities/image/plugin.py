"""The image plugin: timm Vision Transformers, masked-patch (MAE) pretraining, image classification.

    foundry image presets                                  # vit-micro (default, CPU), vit-tiny, vit-small
    foundry image pretrain --data DIR --out OUT            # MAE on unlabelled images (folders or CSV)
    foundry image evaluate --model OUT/final HELD_OUT      # the pretraining objective, fixed masks: JSON
    foundry image finetune --from OUT/final --task image-classification --train T --valid V --test X --out FT
    foundry image predict --model FT/best --data DIR --out predictions.csv
    foundry image export FT/best --out model.safetensors   # a file timm loads

The objective ``mae`` and the task ``image-classification`` are registered like any plugin's
(``components.py``); the image commands offer every registered objective and task for images.
Images do not go through the token path (tokenizer, shards, packing): the plugin brings its own
workloads (``pretrain.MAEWorkload``, ``classify.ClassifierWorkload``), which the engine's one loop
(``foundry.train.run_training``) trains like any other. Nothing here is imported at listing time
except click and the presets (plain data).
"""

from __future__ import annotations

from foundry.hookspecs import hookimpl


@hookimpl
def register_objectives(register):
    register("mae", "modalities.image.components:MaskedPatches")


@hookimpl
def register_tasks(register):
    register("image-classification", "modalities.image.components:ImageClassification")


@hookimpl
def register_commands(cli):
    from .commands import image_group

    cli.add_command(image_group)
