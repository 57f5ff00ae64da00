"""How much of the trunk a fine-tuning run changes, and how fast.

- ``full``: every trunk weight trains (optionally with layer-wise LR decay).
- ``frozen``: the trunk is fixed (and kept in eval mode); only the head trains.
- ``lora``: low-rank adapters through ``peft`` on the attention projections and the MLP linears;
  the trunk's own weights are fixed, adapters and head train. ``--merge`` folds the adapters
  into the trunk weights when the model is saved.

Layer-wise LR decay (ELECTRA / BEiT): parameters of layer ``l`` (embeddings = 0, blocks 1..L,
final norm, LM head and task head = L+1) get ``lr * decay ** (L + 1 - l)``, so the layers nearest
the input, whose features are most general, move least.

L2-SP (Li et al. 2018) adds ``weight/2 * ||w - w_pretrained||²`` over the trunk's trainable
weights: the fine-tuned model is pulled toward its starting point instead of toward zero.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from ..errors import FoundryError

STRATEGIES = ("full", "frozen", "lora")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up", "down", "gate"]


def apply_strategy(trunk: nn.Module, strategy: str, *, lora_rank: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                   lora_targets: list[str] | None = None) -> nn.Module:
    """Return the trunk to train (a peft wrapper for ``lora``), with ``requires_grad`` set.
    ``lora_targets``: module-name suffixes for the adapters when the trunk is not foundry's
    ``Transformer`` (a plugin's backbone, e.g. timm's ``qkv``/``fc1``); default ``LORA_TARGETS``."""
    if strategy not in STRATEGIES:
        raise FoundryError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "full":
        trunk.requires_grad_(True)
        return trunk
    if strategy == "frozen":
        trunk.requires_grad_(False)
        return trunk
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, m in trunk.named_modules() if isinstance(m, nn.Linear)}
    targets = list(lora_targets) if lora_targets else [t for t in LORA_TARGETS if t in present]
    config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets, bias="none")
    return get_peft_model(trunk, config)  # freezes every non-adapter weight of the trunk


def base_transformer(trunk: nn.Module) -> nn.Module:
    """The ``Transformer`` inside a peft wrapper (or the trunk itself)."""
    return trunk.get_base_model() if hasattr(trunk, "get_base_model") else trunk


def layer_of(name: str, n_layer: int) -> int:
    """Depth of a parameter for LR decay: embeddings 0, ``blocks.i`` i+1, everything after L+1."""
    match = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    if re.search(r"(?:^|\.)(embed|pos_embed)\.", name):
        return 0
    return n_layer + 1


def layer_decay_scale(n_layer: int, decay: float):
    """``name -> lr scale`` for layer-wise LR decay: the head and final norm 1, block ``k`` (1-based)
    ``decay ** (n_layer + 1 - k)``, embeddings ``decay ** (n_layer + 1)``. Names of a
    ``FinetuneModel`` (``trunk.…`` / ``head.…``)."""

    def scale(name: str) -> float:
        depth = layer_of(name.removeprefix("trunk."), n_layer) if name.startswith("trunk.") else n_layer + 1
        return decay ** (n_layer + 1 - depth)

    return scale


class L2SP:
    """Squared distance of the trainable trunk weights to their values at the start."""

    def __init__(self, model: nn.Module, weight: float):
        self.weight = weight
        self.anchors = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and n.startswith("trunk.")}

    def __call__(self, model: nn.Module) -> torch.Tensor:
        total = None
        for name, param in model.named_parameters():
            anchor = self.anchors.get(name)
            if anchor is None:
                continue
            term = (param - anchor.to(param.device)).pow(2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.weight * total


def count_trainable(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
