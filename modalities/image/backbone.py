"""timm Vision Transformers as foundry image backbones: build one from plain keyword arguments,
read one from a local timm checkpoint, and write weights back in a form timm loads.

The encoder is always a ``timm.models.vision_transformer.VisionTransformer`` with ``num_classes=0``
(it returns pooled features). Its keyword arguments (``ENCODER_KEYS``) are what a model directory
records, so the same network is rebuilt in a fresh process without pickles. Weights travel as
safetensors with timm's own parameter names, so an exported file loads into timm unchanged:

    timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0,
                      pretrained_cfg_overlay=dict(file="encoder.safetensors"))
    # or, for any preset: VisionTransformer(**json.load(open("encoder.json"))["kwargs"])
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from foundry.errors import CheckpointError

#: the VisionTransformer arguments a saved model records (enough for timm's standard ViTs)
ENCODER_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                "class_token", "global_pool", "fc_norm")
#: MAE encoders and classifiers built from our presets: mean-pooled tokens after the last norm
#: (MAE's fine-tuning pools the same way), a class token as in timm's ViTs
PRESET_DEFAULTS = dict(qkv_bias=True, class_token=True, global_pool="avg", fc_norm=False)


def encoder_kwargs(preset: dict, in_chans: int, img_size: int | None = None) -> dict:
    """The encoder of ``preset`` for images with ``in_chans`` channels (``img_size`` overrides)."""
    kwargs = {k: preset[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")}
    if img_size:
        kwargs["img_size"] = img_size
    if kwargs["img_size"] % kwargs["patch_size"]:
        raise CheckpointError(f"image size {kwargs['img_size']} is not a multiple of the patch size {kwargs['patch_size']}")
    return {**kwargs, "in_chans": in_chans, **PRESET_DEFAULTS}


def build_encoder(kwargs: dict) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**kwargs, num_classes=0)


def kwargs_of(model: nn.Module) -> dict:
    """The ``ENCODER_KEYS`` of a timm VisionTransformer (e.g. one made by ``timm.create_model``)."""
    block = model.blocks[0]
    return {
        "img_size": int(model.patch_embed.img_size[0]), "patch_size": int(model.patch_embed.patch_size[0]),
        "in_chans": int(model.patch_embed.proj.in_channels), "embed_dim": int(model.embed_dim), "depth": len(model.blocks),
        "num_heads": int(block.attn.num_heads), "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None, "class_token": model.cls_token is not None,
        "global_pool": model.global_pool, "fc_norm": not isinstance(model.fc_norm, nn.Identity),
    }


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's state dict without the classifier (``head.*``): what the encoder file holds."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}


def save_encoder(path: Path, encoder: nn.Module, kwargs: dict, timm_name: str | None, extra: dict | None = None,
                 head: nn.Linear | None = None) -> None:
    """``path`` (safetensors, timm's names) and ``path.with_suffix('.json')`` (how to rebuild it).
    With ``head``, the file is a whole timm classifier (``head.weight``/``head.bias``)."""
    from safetensors.torch import save_file

    state = encoder_state(encoder)
    spec = {"format": "timm-vision-transformer", "timm_name": timm_name, "kwargs": {**kwargs, "num_classes": 0}, **(extra or {})}
    if head is not None:
        state.update({"head.weight": head.weight.detach().contiguous(), "head.bias": head.bias.detach().contiguous()})
        spec["kwargs"]["num_classes"] = head.out_features
    save_file(state, str(path))
    path.with_suffix(".json").write_text(json.dumps(spec, indent=1) + "\n")


def load_encoder_file(path: Path) -> tuple[nn.Module, dict, str | None]:
    """An encoder written by ``save_encoder`` (its ``.json`` beside it): (model, kwargs, timm name)."""
    from safetensors.torch import load_file

    spec_path = path.with_suffix(".json")
    try:
        spec = json.loads(spec_path.read_text())
        kwargs = {k: spec["kwargs"][k] for k in ENCODER_KEYS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{spec_path}: not a foundry image encoder description ({exc})") from None
    model = build_encoder(kwargs)
    try:
        state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("head.")}
        model.load_state_dict(state)
    except Exception as exc:  # safetensors and torch raise several kinds for a bad file
        raise CheckpointError(f"{path}: weights do not fit {spec_path.name}: {str(exc).splitlines()[0]}") from None
    return model, kwargs, spec.get("timm_name")


def import_timm(path: Path, timm_name: str | None, in_chans: int | None = None) -> tuple[nn.Module, dict, str | None]:
    """A local timm checkpoint (``.safetensors``, ``.pth``, ``.bin``) of architecture ``timm_name``,
    loaded by timm itself (``pretrained_cfg_overlay=dict(file=...)``: no network), then rebuilt from
    its ``kwargs_of`` so a saved run needs no timm name. A file with our ``.json`` beside it needs no name.
    ``in_chans``: timm adapts the patch embedding of an RGB checkpoint to grayscale (summing the
    colour filters) or more channels, as its ``adapt_input_conv`` does for any pretrained model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model directory or checkpoint file")
    if timm_name is None:
        if path.with_suffix(".json").is_file():
            return load_encoder_file(path)
        raise CheckpointError(f"{path}: a timm checkpoint needs --timm-model NAME, the timm architecture it was saved from "
                              "(e.g. vit_tiny_patch16_224)")
    import timm
    from timm.models.vision_transformer import VisionTransformer

    try:
        extra = {"in_chans": in_chans} if in_chans else {}
        model = timm.create_model(timm_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path)), **extra)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not load as timm {timm_name}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # unknown model name, unreadable file
        raise CheckpointError(f"{path}: cannot load as timm {timm_name!r}: {exc}") from None
    if not isinstance(model, VisionTransformer):
        raise CheckpointError(f"--timm-model {timm_name}: a {type(model).__name__}; the image modality trains VisionTransformer models")
    kwargs = kwargs_of(model)
    rebuilt = build_encoder(kwargs)
    try:
        rebuilt.load_state_dict(model.state_dict())
    except RuntimeError:
        raise CheckpointError(f"--timm-model {timm_name}: a ViT variant (register tokens, layer scale, …) that foundry does not "
                              "rebuild; use a plain ViT such as vit_tiny_patch16_224") from None
    return rebuilt, kwargs, timm_name
