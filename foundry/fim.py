"""Fill-in-the-middle (FIM): teach a causal model to complete a gap given what follows it.

A document ``[bos] a b c d e f [eos]`` is cut at two random points into prefix / middle / suffix
and rearranged in PSM order (Bavarian et al. 2022, "Efficient Training of Language Models to Fill
in the Middle"; used by SantaCoder and Code Llama):

    [bos] <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle [eos]

The transform works on token ids inside packed rows and keeps every document's length (the three
sentinels are paid for by trimming the end of the suffix), so packing and resume are untouched.
Randomness comes from the caller's generator: the same batch index gives the same cuts.
"""

from __future__ import annotations

import sys

import torch

#: documents shorter than this (in tokens, sentinels excluded) are never transformed
MIN_FIM_TOKENS = 8


def apply_fim(
    tokens: torch.Tensor,  # (B, T)
    document_ids: torch.Tensor,  # (B, T), 0 = padding
    *,
    prefix_id: int,
    middle_id: int,
    suffix_id: int,
    rate: float,
    generator: torch.Generator,
    keep_ids: tuple[int, ...] = (),  # bos/eos: stay at the ends of the document
) -> torch.Tensor:
    out = tokens.clone()
    keep = torch.as_tensor(list(keep_ids), dtype=tokens.dtype)
    for row in range(tokens.shape[0]):
        ids = document_ids[row]
        for doc in torch.unique(ids[ids > 0]).tolist():
            where = (ids == doc).nonzero().flatten()
            start, end = int(where[0]), int(where[-1]) + 1
            if torch.rand((), generator=generator).item() >= rate:
                continue
            segment = tokens[row, start:end]
            out[row, start:end] = _psm(segment, keep, prefix_id, middle_id, suffix_id, generator)
    return out


def _psm(segment: torch.Tensor, keep: torch.Tensor, prefix_id: int, middle_id: int, suffix_id: int, generator) -> torch.Tensor:
    lead = 1 if len(segment) and bool(torch.isin(segment[:1], keep)) else 0
    tail = 1 if len(segment) > lead and bool(torch.isin(segment[-1:], keep)) else 0
    body = segment[lead : len(segment) - tail]
    if len(body) < MIN_FIM_TOKENS:
        return segment
    cuts = torch.sort(torch.randint(0, len(body) + 1, (2,), generator=generator)).values.tolist()
    prefix, middle, suffix = body[: cuts[0]], body[cuts[0] : cuts[1]], body[cuts[1] :]
    sentinel = lambda i: torch.tensor([i], dtype=segment.dtype)  # noqa: E731
    # Three sentinels in, three tokens out: trimmed from the end of the suffix, then of the middle,
    # then of the prefix (the body has at least MIN_FIM_TOKENS > 3 tokens).
    overflow = 3
    parts = [prefix, middle, suffix]
    for k in (2, 1, 0):
        cut = min(overflow, len(parts[k]))
        parts[k] = parts[k][: len(parts[k]) - cut]
        overflow -= cut
    prefix, middle, suffix = parts
    arranged = torch.cat([segment[:lead], sentinel(prefix_id), prefix, sentinel(suffix_id), suffix, sentinel(middle_id), middle, segment[len(segment) - tail :]])
    assert len(arranged) == len(segment)
    return arranged


def fim_sentinels(tokenizer) -> dict[str, int] | None:
    """``{prefix_id, middle_id, suffix_id}`` of a tokenizer that reserves FIM tokens (``fim_ids``).

    None, with a notice on stderr, when the tokenizer has none: continued pretraining of an
    imported GPT-2 or Llama (no sentinels in their vocabularies) under the code modality's default
    ``fim_rate`` then trains plain next-token prediction instead of failing.
    """
    ids = getattr(tokenizer, "fim_ids", None) or {}
    missing = [k for k in ("fim_prefix", "fim_middle", "fim_suffix") if k not in ids]
    if missing:
        print("foundry: note: objective.fim_rate is not applied: the tokenizer has no fill-in-the-middle "
              f"tokens ({', '.join(missing)} missing), so training continues without FIM "
              "(set objective.fim_rate=0 to silence this)", file=sys.stderr)
        return None
    return {"prefix_id": ids["fim_prefix"], "middle_id": ids["fim_middle"], "suffix_id": ids["fim_suffix"]}
