"""Building blocks of the trunk: norms, rotary positions, attention, MLP, the pre-norm block.

Shapes: B batch, T time (tokens), D d_model, H query heads, K key/value heads, d head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from .attention import attend
from .config import ModelConfig
from .masks import AttentionSpec


class RMSNorm(nn.Module):
    """Llama's RMSNorm: statistics in fp32, scale applied after casting back (as HF does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


# -- rotary ----------------------------------------------------------------------------------


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables for integer ``positions`` (B, T) -> two (B, 1, T, d) tensors.

    Same frequencies and half-split layout as fair-esm's ``RotaryEmbedding`` and HF's
    ``rotate_half`` (the first half of each head pairs with the second half). Computed in fp32
    on the fly: no buffers, so a meta-device model loads with ``assign=True``.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=positions.device) / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # (B, T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, d)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


# -- attention -------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, self.n_head * self.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv * self.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv * self.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.d_model, bias=cfg.bias)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: AttentionSpec | torch.Tensor | None,  # a spec, or (B, 1, T, T) bool (True = may attend) / None
        is_causal: bool,
        need_weights: bool = False,
        kv=None,  # a model.kv_cache.LayerCache when decoding incrementally; ``mask`` is then dense
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # (B, T, heads, d): the projections' own layout, so per-document and varlen kernels can
        # flatten (B*T) without a copy; rope tables (B, 1, T, d) are read as (B, T, 1, d).
        q = rearrange(self.q_proj(x), "b t (h d) -> b t h d", d=self.head_dim)
        k = rearrange(self.k_proj(x), "b t (k d) -> b t k d", d=self.head_dim)
        v = rearrange(self.v_proj(x), "b t (k d) -> b t k d", d=self.head_dim)
        if rope is not None:
            cos, sin = (r.transpose(1, 2) for r in rope)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:  # the new keys/values join the cached ones: (B, S, K, d)
            k, v = kv.append(k, v)
        p = self.dropout if self.training else 0.0
        if isinstance(mask, AttentionSpec) and not need_weights:
            y, weights = attend(q, k, v, mask, p), None
        else:
            if isinstance(mask, AttentionSpec):
                mask, is_causal = mask.dense()
            q, k, v = (rearrange(z, "b t h d -> b h t d") for z in (q, k, v))
            if not need_weights:
                y = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=p, enable_gqa=self.n_kv != self.n_head
                )
                weights = None
            else:
                y, weights = self._explicit(q, k, v, mask, is_causal, p)
            y = rearrange(y, "b h t d -> b t h d")
        return self.o_proj(rearrange(y, "b t h d -> b t (h d)")), weights

    def _explicit(self, q, k, v, mask, is_causal, p):
        """Attention with the probabilities materialised (B, H, T, T): for heads that read attention maps, and probes."""
        if self.n_kv != self.n_head:
            k = repeat(k, "b k t d -> b (k r) t d", r=self.n_head // self.n_kv)
            v = repeat(v, "b k t d -> b (k r) t d", r=self.n_head // self.n_kv)
        scores = (q @ k.transpose(-1, -2)).float() * self.head_dim**-0.5  # (B, H, T, T)
        if is_causal:
            t = q.shape[-2]
            mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        y = F.dropout(weights, p=p, training=p > 0).to(v.dtype) @ v
        return y, weights


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        approximate = "tanh" if self.kind == "gelu_tanh" else "none"
        return self.down(F.gelu(self.up(x), approximate=approximate))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, mask, is_causal, need_weights=False, kv=None):
        a, weights = self.attn(self.attn_norm(x), rope, mask, is_causal, need_weights, kv=kv)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.mlp_norm(x)))
        return x, weights


class ESMLMHead(nn.Module):
    """ESM's (RoBERTa's) LM head: dense -> GELU -> LayerNorm -> decoder (tied to the embedding) + bias."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        x = self.dense(x)
        x = self.norm(x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))))  # erf GELU spelled as fair-esm does
        weight = embedding if self.decoder is None else self.decoder.weight
        return F.linear(x, weight) + self.bias
