"""Who may attend to whom, in one place.

``attention_mask`` builds the boolean mask SDPA takes from padding, packed-document ids,
causality and a sliding window. When nothing restricts attention beyond plain causality it
returns ``(None, causal)`` so SDPA can take its fused ``is_causal`` / unmasked paths. A
flex_attention block mask or varlen cu_seqlens path would be built from the same inputs here.
"""

from __future__ import annotations

import torch


def segment_index(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, T) running index of contiguous documents, 0, 1, 2, ... per row."""
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return starts.long().cumsum(dim=1) - 1


def position_ids(document_ids: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Positions (B, T) or (1, T): 0..T-1, restarting at every document boundary when packed."""
    idx = torch.arange(length, device=device)
    if document_ids is None:
        return idx[None]
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(starts, idx[None], torch.zeros_like(idx)[None]).cummax(dim=1).values
    return idx[None] - first  # (B, T)


def attention_mask(
    key_valid: torch.Tensor | None,  # (B, T) bool, True = real token; None = all real
    document_ids: torch.Tensor | None,  # (B, T) ints; attention stays within equal ids
    causal: bool,
    length: int,
    device,
    sliding_window: int | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """-> (mask (B, 1, T, T) bool with True = may attend, or None; is_causal flag for SDPA)."""
    padded = key_valid is not None and not bool(key_valid.all())
    if not padded and document_ids is None and sliding_window is None:
        return None, causal
    q = torch.arange(length, device=device)
    allowed = torch.ones(1, length, length, dtype=torch.bool, device=device)  # (B|1, Tq, Tk)
    if causal:
        allowed = allowed & (q[None, :, None] >= q[None, None, :])
    if sliding_window is not None:
        allowed = allowed & (q[None, :, None] - q[None, None, :] < sliding_window)
    if padded:
        allowed = allowed & key_valid[:, None, :]
    if document_ids is not None:
        allowed = allowed & (document_ids[:, :, None] == document_ids[:, None, :])
    # A query with nothing to attend to (a row of pure padding) would give NaN through softmax;
    # let it see itself. Real tokens always see themselves already, so their outputs are unchanged.
    empty = ~allowed.any(dim=-1, keepdim=True)
    allowed = allowed | (empty & torch.eye(length, dtype=torch.bool, device=device))
    return allowed[:, None], False
