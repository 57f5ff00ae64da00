"""Generic heads that read the trunk's own outputs.

``AttentionContactHead`` is ESM's contact predictor (Rao et al. 2020, "Transformer protein
language models are unsupervised structure learners"): every layer's and head's attention map
becomes one feature; symmetrize, average-product-correct (APC), logistic regression, sigmoid.
Same computation as fair-esm's ``ContactPredictionHead`` so an imported model's contacts equal
``esm``'s ``predict_contacts``.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def symmetrize(x: torch.Tensor) -> torch.Tensor:
    return x + x.transpose(-1, -2)


def apc(x: torch.Tensor) -> torch.Tensor:
    """Average product correction: remove the rank-one background a1 * a2 / a12."""
    a1 = x.sum(-1, keepdim=True)
    a2 = x.sum(-2, keepdim=True)
    a12 = x.sum((-1, -2), keepdim=True)
    return x - a1 * a2 / a12


class AttentionContactHead(nn.Module):
    """(B, L, H, T, T) attention probabilities -> (B, T', T') contact probabilities.

    ``eos_id``: when set, attention to/from that token is zeroed and the last position is
    dropped (ESM appends <eos>); ``prepend_bos``: the first position is dropped (ESM's <cls>).
    """

    def __init__(self, n_layer: int, n_head: int, eos_id: int | None = 2, prepend_bos: bool = True, bias: bool = True):
        super().__init__()
        self.n_layer, self.n_head = n_layer, n_head
        self.eos_id, self.prepend_bos = eos_id, prepend_bos
        self.regression = nn.Linear(n_layer * n_head, 1, bias=bias)

    def forward(self, tokens: torch.Tensor, attentions: torch.Tensor) -> torch.Tensor:
        if self.eos_id is not None:
            keep = tokens.ne(self.eos_id).to(attentions)  # (B, T)
            attentions = attentions * (keep[:, None, :] * keep[:, :, None])[:, None, None]
            attentions = attentions[..., :-1, :-1]
        if self.prepend_bos:
            attentions = attentions[..., 1:, 1:]
        b, l, h, t, _ = attentions.shape
        feats = attentions.reshape(b, l * h, t, t).to(self.regression.weight)  # (B, C, T', T')
        feats = apc(symmetrize(feats)).permute(0, 2, 3, 1)  # (B, T', T', C)
        return torch.sigmoid(self.regression(feats).squeeze(-1))

    def describe(self) -> dict:
        """What ``store.py`` writes beside the weights so the head can be rebuilt."""
        return {
            "n_layer": self.n_layer, "n_head": self.n_head, "eos_id": self.eos_id,
            "prepend_bos": self.prepend_bos, "bias": self.regression.bias is not None,
        }
