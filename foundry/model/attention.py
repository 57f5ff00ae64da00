"""Attention over packed rows without computing the blocks between documents.

A packed row holds several documents; attention inside it is block-diagonal. Dense SDPA with a
(B, 1, T, T) mask computes every block and throws the off-diagonal ones away: with UniProt
lengths cropped at 1024 (mean ~410 tokens) a 1024-token row does ~2.5x the needed attention work.
The backends here all give the dense masked result (fp32: within 1e-6), chosen per forward:

  sdpa       dense SDPA with the boolean mask of ``masks.attention_mask`` — the reference.
  documents  per-document SDPA. The flattened (B*T) token axis is split into document runs; runs of
             equal length (or within ``BUCKET_SLACK``, padded and masked) share one (n, H, L, d)
             SDPA call; outputs are concatenated back. Any device and dtype, backward, dropout.
             (flex_attention has no CPU backward in torch 2.x, so this is the CPU block-skipping path.)
  varlen     ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention / cuDNN) over the runs, no
             gather at all: CUDA, fp16/bf16, no attention dropout.
  flex       ``flex_attention`` with a document block mask: compiled on CUDA; on CPU forward only.
  auto       no document ids -> sdpa; CUDA fp16/bf16 without attention dropout -> varlen; else documents.

Runs with no valid key (the padding at the end of a packed row) behave as in the dense path:
each such query attends to itself only, so its output is its own value vector.

Tensors here are (B, T, H, d): the projections' natural layout, so flattening to (B*T, H, d) is a
view. H query heads, K key/value heads (GQA: query head h reads kv head h // (H/K), as SDPA does).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import masks

IMPLS = ("auto", "sdpa", "documents", "varlen", "flex")
# Runs shorter than a bucket's longest by at most this fraction share one SDPA call (padded and
# masked). 0 = only equal lengths share: on CPU masked SDPA costs more than the calls it saves.
BUCKET_SLACK = 0.0


# Kept out of torch.compile graphs (train.compile): every backend is already one fused kernel, and
# tracing the packed-row paths specializes on document lengths, so each new batch would re-trace
# (measured on CPU: 5-10 s per new length pattern). The projections and MLP around it compile once.
@torch.compiler.disable
def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: masks.AttentionSpec, dropout_p: float = 0.0) -> torch.Tensor:
    """(B, T, H, d), (B, T, K, d), (B, T, K, d) -> (B, T, H, d) through the backend ``spec`` selects."""
    impl = choose(spec, q, dropout_p)
    if impl == "documents":
        return _documents(q, k, v, spec, dropout_p)
    if impl == "varlen":
        return _varlen(q, k, v, spec)
    if impl == "flex":
        return _flex(q, k, v, spec)
    mask, is_causal = spec.dense()
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=is_causal,
        dropout_p=dropout_p, enable_gqa=q.shape[2] != k.shape[2],
    )
    return y.transpose(1, 2)


def choose(spec: masks.AttentionSpec, q: torch.Tensor, dropout_p: float) -> str:
    """The backend for this call: ``spec.impl`` when forced, otherwise the automatic choice."""
    impl = spec.impl
    if impl not in IMPLS:
        raise ValueError(f"attention implementation {impl!r}: choose one of {', '.join(IMPLS)}")
    if impl == "sdpa" or spec.document_ids is None:
        return "sdpa"  # nothing block-diagonal to exploit: one dense (or unmasked) SDPA call
    runs = spec.runs()
    if runs is None:  # an id repeats non-contiguously in a row: only the dense mask says it right
        if impl != "auto":
            raise ValueError(f"attention {impl!r} needs each document contiguous in its row; use 'sdpa'")
        return "sdpa"
    if impl == "auto":
        # Measured on the 2-core CPU (BENCHMARKS.md): per-document SDPA trains ESM-2 8M 1.34x
        # faster than the dense mask on 1024-token rows (1.05x at 512) when the machine is quiet;
        # under heavy contention from other processes its many small calls lost that lead.
        half = q.dtype in (torch.float16, torch.bfloat16)
        ok = q.is_cuda and half and dropout_p == 0.0 and not runs.mixed.any() and _varlen_fn() is not None
        return "varlen" if ok else "documents"
    if impl == "varlen":
        if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)) or _varlen_fn() is None:
            raise ValueError("attention 'varlen' needs torch's varlen_attn, a CUDA device and fp16/bf16")
        if dropout_p or runs.mixed.any():
            raise ValueError("attention 'varlen' supports neither attention dropout nor padding inside a document")
    if impl == "flex" and torch.is_grad_enabled() and q.requires_grad and not q.is_cuda:
        raise ValueError("attention 'flex' has no backward on CPU in this torch; use 'documents' or 'auto'")
    if impl == "flex" and dropout_p:
        raise ValueError("attention 'flex' does not support attention dropout")
    return impl


def _identity(v: torch.Tensor, heads: int) -> torch.Tensor:
    """The dense path's output for a query with no key: its own value, repeated to H heads."""
    return v if v.shape[-2] == heads else v.repeat_interleave(heads // v.shape[-2], dim=-2)


# -- documents: per-document SDPA --------------------------------------------------------------


def _documents(q, k, v, spec: masks.AttentionSpec, dropout_p: float) -> torch.Tensor:
    b, t, h, d = q.shape
    lengths = spec.runs().lengths.tolist()
    # One split per tensor (its backward is one concatenation); per-run index ops would each
    # allocate a gradient the size of the whole batch.
    qs, ks, vs = (torch.split(x.reshape(b * t, x.shape[2], d), lengths) for x in (q, k, v))
    outs: list[torch.Tensor | None] = [None] * len(lengths)
    for bucket in spec.buckets():
        n, longest = bucket.shape
        qb, kb, vb = (_stack([parts[r] for r in bucket.runs], longest) for parts in (qs, ks, vs))
        y = F.scaled_dot_product_attention(
            qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2), attn_mask=bucket.mask,
            is_causal=bucket.is_causal, dropout_p=dropout_p, enable_gqa=h != kb.shape[2],
        ).transpose(1, 2)  # (n, L, H, d)
        for r, yr in zip(bucket.runs, y.unbind(0)):
            outs[r] = yr[: lengths[r]]
    for r, out in enumerate(outs):
        if out is None:  # a run without a real key: its queries see themselves
            outs[r] = _identity(vs[r], h)
    return torch.cat(outs).view(b, t, h, d)


def _stack(parts: list[torch.Tensor], longest: int) -> torch.Tensor:
    """Runs (L_i, heads, d) -> (n, L, heads, d), zero-padded past each run's end."""
    if len(parts) == 1 and parts[0].shape[0] == longest:
        return parts[0].unsqueeze(0)
    return torch.stack([F.pad(p, (0, 0, 0, 0, 0, longest - p.shape[0])) for p in parts])


# -- varlen: FlashAttention over cu_seqlens (CUDA) -------------------------------------------


@functools.cache
def _varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _varlen(q, k, v, spec: masks.AttentionSpec) -> torch.Tensor:
    b, t, h, d = q.shape
    qf, kf, vf = q.reshape(b * t, h, d), k.reshape(b * t, -1, d), v.reshape(b * t, -1, d)
    runs = spec.runs()
    cu, longest = spec.cu_seqlens()
    # masks.attention_mask: key j visible to query i iff i - j < W (and j <= i when causal).
    # FlashAttention's window (left, right) admits i - left <= j <= i + right; -1 = unbounded.
    left = -1 if spec.sliding_window is None else spec.sliding_window - 1
    right = 0 if spec.causal else -1
    y = _varlen_fn()(qf, kf, vf, cu, cu, longest, longest, window_size=(left, right), enable_gqa=h != kf.shape[1])
    if not runs.attend.all():  # padding runs attended among themselves; the dense path says "self"
        y = torch.where(spec.padding_positions()[:, None, None], _identity(vf, h), y)
    return y.view(b, t, h, d)


# -- flex_attention with a document block mask -----------------------------------------------


@functools.cache
def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def _flex(q, k, v, spec: masks.AttentionSpec) -> torch.Tensor:
    y = _flex_fn(q.is_cuda)(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=spec.block_mask(),
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return y.transpose(1, 2)


def flex_block_mask(spec: masks.AttentionSpec):
    """The spec as a flex_attention BlockMask; a query with no visible key sees itself (as dense)."""
    from torch.nn.attention.flex_attention import create_block_mask

    b, t = spec.document_ids.shape
    doc = spec.document_ids
    valid = spec.key_valid if spec.key_valid is not None else torch.ones_like(doc, dtype=torch.bool)
    empty = ~masks.allowed(spec.key_valid, doc, spec.causal, t, doc.device, spec.sliding_window).any(-1)  # (B, T)
    causal, window = spec.causal, spec.sliding_window

    def mask_mod(bi, hi, qi, ki):
        ok = (doc[bi, qi] == doc[bi, ki]) & valid[bi, ki]
        if causal:
            ok = ok & (qi >= ki)
        if window is not None:
            ok = ok & (qi - ki < window)
        return ok | (empty[bi, qi] & (qi == ki))

    return create_block_mask(mask_mod, b, None, t, t, device=doc.device)
