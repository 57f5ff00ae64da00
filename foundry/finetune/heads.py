"""Task heads on top of the trunk's last hidden states, the head registry, and ``FinetuneModel``.

    SequenceHead   pool the residues/tokens (mean, <cls>, or the last real token for causal
                   trunks) -> dropout -> Linear -> GELU -> dropout -> Linear(n_out)
    ResidueHead    every token: dropout -> Linear -> GELU -> Linear(n_out)
    PairwiseHead   token embeddings projected to P dims; pair (i, j) -> [a_i * a_j, |a_i - a_j|]
                   -> Linear(1): symmetric pair logits (B, T, T)

A head is rebuilt from ``describe()`` (kind + sizes), which the fine-tuned model directory (and
a model directory's attachments, ``foundry.model.store``) store next to the head's safetensors.
``build_head`` finds the kind among the engine's heads, those added with ``register_head``, and
the heads the registered tasks bring (``Task.heads``): a plugin's head reloads in a fresh process
without the plugin registering anything else. A head that reads attention maps says so with
``needs_attention = True``; it then also gets the trunk's (B, L, H, T, T) attention probabilities.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError, FoundryError


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


#: kind -> head class: the engine's heads and those added with ``register_head``
HEADS: dict[str, type] = {cls.kind: cls for cls in (SequenceHead, ResidueHead, PairwiseHead)}


def register_head(cls: type) -> type:
    """Add a head class (``kind``, optional ``aliases``, ``describe()``, a constructor taking the
    description); usable as a decorator. A kind taken by another class is an error naming both."""
    for kind in (cls.kind, *getattr(cls, "aliases", ())):
        taken = HEADS.get(kind)
        if taken is not None and taken is not cls:
            raise FoundryError(f"head kind {kind!r} is registered twice: by {taken.__module__}.{taken.__qualname__} "
                               f"and by {cls.__module__}.{cls.__qualname__}")
    for kind in (cls.kind, *getattr(cls, "aliases", ())):
        HEADS[kind] = cls
    return cls


def unregister_head(kind: str) -> None:
    if kind not in _BUILTIN:
        HEADS.pop(kind, None)


_BUILTIN = frozenset(HEADS)


def _task_heads() -> dict[str, type]:
    """Heads the registered tasks bring (``Task.heads``), by kind and alias."""
    from ..plugins import get_manager

    manager, found = get_manager(), {}
    for name in manager.tasks.names():
        try:
            task = manager.task_class(name)
        except FoundryError:
            continue  # a task whose module cannot load is reported when it is used, not here
        for cls in getattr(task, "heads", ()):
            for kind in (cls.kind, *getattr(cls, "aliases", ())):
                found.setdefault(kind, cls)
    return found


def head_class(kind: str) -> type:
    """The head class of ``kind``; unknown kinds are a ``CheckpointError`` listing the known ones."""
    if kind in HEADS:
        return HEADS[kind]
    brought = _task_heads()
    if kind in brought:
        return brought[kind]
    known = sorted({cls.kind for cls in (*HEADS.values(), *brought.values())})
    raise CheckpointError(f"unknown head kind {kind!r} (known: {', '.join(known)}); is the plugin that brings it installed?")


def head_for(level: str, d_model: int, n_out: int, pooling: str = "mean", dropout: float = 0.1, **_ignored) -> nn.Module:
    """The engine's default head for a task level (a task may build its own: ``Task.build_head``)."""
    if level == "sequence":
        return SequenceHead(d_model, n_out, pooling, dropout=dropout)
    if level == "residue":
        return ResidueHead(d_model, n_out, dropout=dropout)
    if level == "pair":
        return PairwiseHead(d_model, n_out, dropout=dropout)
    raise ValueError(f"no head for task level {level!r}")


def build_head(description: dict[str, Any]) -> nn.Module:
    """A head rebuilt from its ``describe()``."""
    kwargs = dict(description)
    cls = head_class(kwargs.pop("kind", None))
    if "dropout" in kwargs:
        kwargs["dropout"] = float(kwargs["dropout"])
    return cls(**kwargs)


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

