"""Task heads on top of the trunk's last hidden states, and ``FinetuneModel`` = trunk + head.

    SequenceHead   pool the residues/tokens (mean, <cls>, or the last real token for causal
                   trunks) -> dropout -> Linear -> GELU -> dropout -> Linear(n_out)
    ResidueHead    every token: dropout -> Linear -> GELU -> Linear(n_out)
    PairwiseHead   token embeddings projected to P dims; pair (i, j) -> [a_i * a_j, |a_i - a_j|]
                   -> Linear(1): symmetric contact logits (B, T, T)
    AttentionContactLogits
                   ESM's contact regression (Rao et al. 2020): every layer's and head's attention
                   map, symmetrized and APC-corrected, -> Linear(L*H, 1): contact logits (B, T, T).
                   With ``--strategy frozen`` this is exactly ESM's logistic regression on
                   attention; special and padded positions are zeroed first, as ESM crops them.

A head is rebuilt from ``describe()`` (kind + sizes), which the fine-tuned model directory stores
next to the head's safetensors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError


def residue_mask(tokens: torch.Tensor, special_ids) -> torch.Tensor:
    """(B, T) True on real, non-special tokens (residues / word pieces)."""
    special = torch.as_tensor(sorted(special_ids), dtype=tokens.dtype, device=tokens.device)
    return ~torch.isin(tokens, special)


def pool(hidden: torch.Tensor, tokens: torch.Tensor, real: torch.Tensor, residues: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, D) -> (B, D). ``real``: non-padding positions; ``residues``: non-special ones."""
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        last = real.long().cumsum(1).argmax(1)  # index of the last real token of each row
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = residues.to(hidden.dtype)[..., None]  # mean over residues, specials excluded
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class SequenceHead(nn.Module):
    kind = "sequence"

    def __init__(self, d_model: int, n_out: int, pooling: str = "mean", hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        if pooling not in ("mean", "cls", "last"):
            raise ValueError(f"pooling must be mean, cls or last, got {pooling!r}")
        self.d_model, self.n_out, self.pooling, self.hidden, self.p = d_model, n_out, pooling, hidden or d_model, dropout
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, self.hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(self.hidden, n_out))

    def forward(self, hidden, tokens, real, residues, attentions=None):
        return self.net(pool(hidden, tokens, real, residues, self.pooling))  # (B, n_out)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "d_model": self.d_model, "n_out": self.n_out, "pooling": self.pooling, "hidden": self.hidden, "dropout": self.p}


class ResidueHead(nn.Module):
    kind = "residue"

    def __init__(self, d_model: int, n_out: int, hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        self.d_model, self.n_out, self.hidden, self.p = d_model, n_out, hidden or d_model, dropout
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, self.hidden), nn.GELU(), nn.Linear(self.hidden, n_out))

    def forward(self, hidden, tokens, real, residues, attentions=None):
        return self.net(hidden)  # (B, T, n_out); the loss ignores special / padded positions

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "d_model": self.d_model, "n_out": self.n_out, "hidden": self.hidden, "dropout": self.p}


class PairwiseHead(nn.Module):
    kind = "pairwise"

    def __init__(self, d_model: int, n_out: int = 1, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.d_model, self.n_out, self.hidden, self.p = d_model, n_out, hidden, dropout
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, hidden))
        self.out = nn.Linear(2 * hidden, 1)

    def forward(self, hidden, tokens, real, residues, attentions=None):
        a = self.proj(hidden)  # (B, T, P)
        prod = a[:, :, None, :] * a[:, None, :, :]  # (B, T, T, P), symmetric in (i, j)
        diff = (a[:, :, None, :] - a[:, None, :, :]).abs()
        return self.out(torch.cat([prod, diff], -1)).squeeze(-1)  # (B, T, T) logits

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "d_model": self.d_model, "n_out": self.n_out, "hidden": self.hidden, "dropout": self.p}


class AttentionContactLogits(nn.Module):
    kind = "attention-contact"
    needs_attention = True

    def __init__(self, n_layer: int, n_head: int, n_out: int = 1):
        super().__init__()
        self.n_layer, self.n_head, self.n_out = n_layer, n_head, n_out
        self.regression = nn.Linear(n_layer * n_head, 1)

    def forward(self, hidden, tokens, real, residues, attentions=None):
        from ..model.heads import apc, symmetrize

        b, l, h, t, _ = attentions.shape
        keep = residues.to(attentions.dtype)
        feats = attentions.reshape(b, l * h, t, t) * (keep[:, :, None] * keep[:, None, :])[:, None]  # (B, C, T, T)
        feats = apc(symmetrize(feats)).permute(0, 2, 3, 1)  # (B, T, T, C)
        return self.regression(feats.to(self.regression.weight.dtype)).squeeze(-1)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_layer": self.n_layer, "n_head": self.n_head, "n_out": self.n_out}


HEADS = {cls.kind: cls for cls in (SequenceHead, ResidueHead, PairwiseHead, AttentionContactLogits)}


def head_for(level: str, d_model: int, n_out: int, pooling: str = "mean", dropout: float = 0.1, *, pair_head: str = "pairwise",
             n_layer: int = 0, n_head: int = 0) -> nn.Module:
    if level == "sequence":
        return SequenceHead(d_model, n_out, pooling, dropout=dropout)
    if level == "residue":
        return ResidueHead(d_model, n_out, dropout=dropout)
    if level == "pair":
        if pair_head == "attention":
            return AttentionContactLogits(n_layer, n_head, n_out)
        return PairwiseHead(d_model, n_out, dropout=dropout)
    raise ValueError(f"no head for task level {level!r}")


def build_head(description: dict[str, Any]) -> nn.Module:
    kwargs = dict(description)
    kind = kwargs.pop("kind", None)
    if kind not in HEADS:
        raise CheckpointError(f"unknown head kind {kind!r} (known: {', '.join(HEADS)})")
    if "dropout" in kwargs:
        kwargs["dropout"] = float(kwargs["dropout"])
    return HEADS[kind](**kwargs)


class FinetuneModel(nn.Module):
    """The trunk (a ``Transformer``, possibly wrapped by peft) and a task head."""

    def __init__(self, trunk: nn.Module, head: nn.Module, special_ids, pad_id: int, n_layer: int):
        super().__init__()
        self.trunk, self.head = trunk, head
        self.special_ids, self.pad_id, self.n_layer = tuple(special_ids), pad_id, n_layer

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        real = tokens.ne(self.pad_id)
        attention = getattr(self.head, "needs_attention", False)
        out = self.trunk(tokens, attention_mask=real, need_hidden=(self.n_layer,), need_logits=False, need_attention=attention)
        hidden = out.hidden_states[self.n_layer]
        return self.head(hidden, tokens, real, residue_mask(tokens, self.special_ids) & real, out.attentions)
