"""Self-supervised objectives as plain functions over token batches.

- ``mask_tokens``: BERT/ESM masked-LM corruption (select ``mask_prob`` of the real tokens; of
  those 80% become <mask>, 10% a random token, 10% stay) with labels only at selected positions.
- ``causal_labels``: next-token targets that never cross a document boundary in packed rows.
- ``lm_loss``: cross-entropy over the positions that carry a label (label -100 is ignored).

Randomness comes from an explicit ``torch.Generator`` so a batch's corruption is a function of
(seed, batch index) alone: a resumed run masks exactly like an uninterrupted one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def mask_tokens(
    tokens: torch.Tensor,
    *,
    special_ids: Sequence[int],
    maskable_ids: Sequence[int],
    mask_id: int,
    generator: torch.Generator,
    mask_prob: float = 0.15,
    mask_replace: float = 0.8,
    random_replace: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(inputs, labels)`` for masked-LM training; ``tokens`` is (B, T) int64."""
    special = torch.isin(tokens, torch.as_tensor(list(special_ids), dtype=tokens.dtype))
    draw = torch.rand(tokens.shape, generator=generator)
    selected = (draw < mask_prob) & ~special
    # Guarantee at least one prediction per batch so the loss is always defined.
    if not selected.any():
        candidates = (~special).nonzero()
        if len(candidates):
            pick = candidates[torch.randint(len(candidates), (1,), generator=generator)][0]
            selected[pick[0], pick[1]] = True

    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    action = torch.rand(tokens.shape, generator=generator)
    to_mask = selected & (action < mask_replace)
    to_random = selected & (action >= mask_replace) & (action < mask_replace + random_replace)
    choices = torch.as_tensor(list(maskable_ids), dtype=tokens.dtype)
    random_tokens = choices[torch.randint(len(choices), tokens.shape, generator=generator)]

    inputs = tokens.clone()
    inputs[to_mask] = mask_id
    inputs[to_random] = random_tokens[to_random]
    return inputs, labels


def causal_labels(tokens: torch.Tensor, document_ids: torch.Tensor | None, pad_id: int | None) -> torch.Tensor:
    """Targets aligned with ``tokens``: label[t] = tokens[t+1] within the same document.

    The last position of each document (and of each row) and padding get ``IGNORE_INDEX``.
    Padding is ``document_ids == 0`` when given, else ``tokens == pad_id``.
    """
    labels = torch.full_like(tokens, IGNORE_INDEX)
    labels[:, :-1] = tokens[:, 1:]
    valid = torch.ones_like(tokens, dtype=torch.bool)
    valid[:, -1] = False
    if document_ids is not None:
        # Packed rows say where padding is (document 0); the pad id may double as <eos> (GPT-2),
        # and <eos> must still be predicted.
        valid[:, :-1] &= (document_ids[:, 1:] == document_ids[:, :-1]) & (document_ids[:, :-1] != 0)
    elif pad_id is not None:
        valid[:, :-1] &= tokens[:, 1:] != pad_id
        valid &= tokens != pad_id
    return torch.where(valid, labels, torch.full_like(labels, IGNORE_INDEX))


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over labelled positions and how many there were.

    Only labelled rows go through the softmax (MLM labels ~15% of positions), in fp32.
    """
    keep = labels != IGNORE_INDEX
    count = int(keep.sum())
    if count == 0:
        return logits.sum() * 0.0, 0
    selected = logits[keep].float()
    return F.cross_entropy(selected, labels[keep]), count


def unigram_cross_entropy(train_counts: torch.Tensor, targets: torch.Tensor) -> float:
    """Loss of a model that always predicts the training-set token frequencies (add-one smoothed).

    The baseline every pretraining run must beat: it knows the composition, nothing about context.
    """
    probs = (train_counts.double() + 1.0) / (train_counts.double() + 1.0).sum()
    return float(-probs[targets].log().mean())
