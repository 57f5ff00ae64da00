"""Catastrophic forgetting, measured: the pretraining objective on held-out pretraining data,
before and after fine-tuning, and replay of pretraining batches as a guard.

``ForgettingProbe`` fixes everything random once (which documents, which positions are masked
and how), so "before" and "after" score the very same targets: any difference is the model.
For a masked-LM trunk it is the masked-LM loss (ESM's 15% / 80-10-10 corruption, fixed seed);
for a causal trunk, the next-token loss. The LM head is the pretrained one: fine-tuning never
trains it (except through replay), so the loss reflects what the trunk still represents.

The default documents are the held-out (validation) split that ``pretrain`` itself uses on the
modality's bundled corpus: a model pretrained there never trained on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..objectives import IGNORE_INDEX, causal_labels, lm_loss, mask_tokens
from ..tokenizer import pad_batch

PROBE_SEED = 20_240_601


def pretraining_documents(paths: Sequence[Path], readers, limit: int, part: str = "valid") -> list[str]:
    """Texts of ``paths``. ``part``: "valid" = only the documents ``pretrain`` holds out for
    validation (``split_by_id`` with its defaults), "train" = the others, "all" = every one."""
    from ..config import DataSection
    from ..corpus import split_by_id
    from ..readers import read_documents

    docs = list(read_documents(list(paths), readers))
    if part != "all" and len(docs) >= 2:
        d = DataSection()
        valid, train = split_by_id([doc.id for doc in docs], d.valid_fraction, d.max_valid_docs)
        docs = [docs[i] for i in (valid if part == "valid" else train)]
    return [doc.text for doc in docs[:limit]]


def _crop(ids: np.ndarray, max_len: int) -> np.ndarray:
    return ids if len(ids) <= max_len else ids[:max_len]


class ForgettingProbe:
    """The pretraining loss of a trunk on fixed, pre-corrupted batches."""

    def __init__(self, texts: list[str], tokenizer, objective: str, max_len: int = 256, batch_size: int = 16, seed: int = PROBE_SEED):
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        encoded = [_crop(np.asarray(ids), max_len) for ids in tokenizer.encode_batch(texts)]
        encoded = [e for e in encoded if len(e) > 1]
        generator = torch.Generator().manual_seed(seed)
        for s in range(0, len(encoded), batch_size):
            tokens = torch.from_numpy(pad_batch(encoded[s : s + batch_size], tokenizer.pad_id))
            if objective == "mlm":
                inputs, labels = mask_tokens(tokens, special_ids=tokenizer.special_ids, maskable_ids=tokenizer.maskable_ids,
                                             mask_id=tokenizer.mask_id, generator=generator)
                labels = torch.where(tokens.eq(tokenizer.pad_id), torch.full_like(labels, IGNORE_INDEX), labels)
            else:
                inputs, labels = tokens, causal_labels(tokens, None, tokenizer.pad_id)
            self.batches.append((inputs, labels))
        self.pad_id = tokenizer.pad_id
        self.targets = int(sum(int((lab != IGNORE_INDEX).sum()) for _, lab in self.batches))

    @torch.no_grad()
    def loss(self, trunk: torch.nn.Module, device="cpu") -> float:
        """Mean loss per target over all batches; the trunk's train/eval mode is restored."""
        was_training = trunk.training
        trunk.eval()
        total, count = 0.0, 0
        for inputs, labels in self.batches:
            out = trunk(inputs.to(device), attention_mask=inputs.ne(self.pad_id).to(device))
            loss, n = lm_loss(out.logits, labels.to(device))
            total += float(loss) * n
            count += n
        trunk.train(was_training)
        return total / max(1, count)


class ReplayStream:
    """Endless pretraining-objective batches from pretraining documents (for ``--replay``)."""

    def __init__(self, texts: list[str], tokenizer, objective: str, rows: int, max_len: int = 256, seed: int = 0):
        self.encoded = [e for e in (np.asarray(ids) for ids in tokenizer.encode_batch(texts)) if len(e) > 1]
        if not self.encoded:
            raise ValueError("no replay documents")
        self.tokenizer, self.objective, self.rows, self.max_len = tokenizer, objective, max(1, rows), max_len
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def loss(self, trunk: torch.nn.Module, device="cpu") -> torch.Tensor:
        tok = self.tokenizer
        picks = self.rng.integers(0, len(self.encoded), self.rows)
        rows = []
        for i in picks:
            ids = self.encoded[int(i)]
            start = int(self.rng.integers(0, len(ids) - self.max_len + 1)) if len(ids) > self.max_len else 0
            rows.append(ids[start : start + self.max_len])
        tokens = torch.from_numpy(pad_batch(rows, tok.pad_id))
        if self.objective == "mlm":
            inputs, labels = mask_tokens(tokens, special_ids=tok.special_ids, maskable_ids=tok.maskable_ids, mask_id=tok.mask_id, generator=self.generator)
            labels = torch.where(tokens.eq(tok.pad_id), torch.full_like(labels, IGNORE_INDEX), labels)
        else:
            inputs, labels = tokens, causal_labels(tokens, None, tok.pad_id)
        out = trunk(inputs.to(device), attention_mask=inputs.ne(tok.pad_id).to(device))
        return lm_loss(out.logits, labels.to(device))[0]
