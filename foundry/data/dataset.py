"""A tokenized corpus: a sequence of documents, each a 1-D array of token ids.

Two implementations share this interface: ``InMemoryTokens`` (small raw inputs tokenized at the
start of a run) and the memory-mapped shards written by ``foundry <modality> prepare``
(``foundry.data.shards``). Everything downstream (sampler, packer) sees only this interface.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class TokenDataset(Protocol):
    #: fingerprint of the tokenizer that produced the ids (``Tokenizer.fingerprint()``)
    tokenizer_fingerprint: str

    def __len__(self) -> int:
        """Number of documents."""
        ...

    @property
    def lengths(self) -> np.ndarray:
        """Token count of every document, int64, shape (len(self),)."""
        ...

    def __getitem__(self, index: int) -> np.ndarray:
        """Token ids of one document (1-D integer array; copy before mutating)."""
        ...

    def record_id(self, index: int) -> str:
        """The source record id of a document (FASTA id, file path…)."""
        ...


class InMemoryTokens:
    """Documents held as one flat array plus offsets (the same layout as a shard)."""

    def __init__(self, documents: Sequence[np.ndarray], record_ids: Sequence[str], tokenizer_fingerprint: str):
        if len(documents) != len(record_ids):
            raise ValueError("one record id per document is required")
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self._lengths = np.fromiter((len(d) for d in documents), dtype=np.int64, count=len(documents))
        self._offsets = np.zeros(len(documents) + 1, dtype=np.int64)
        np.cumsum(self._lengths, out=self._offsets[1:])
        self._tokens = np.concatenate(documents).astype(np.int32) if documents else np.zeros(0, np.int32)
        self._record_ids = list(record_ids)

    def __len__(self) -> int:
        return len(self._lengths)

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths

    def __getitem__(self, index: int) -> np.ndarray:
        return self._tokens[self._offsets[index] : self._offsets[index + 1]]

    def record_id(self, index: int) -> str:
        return self._record_ids[index]
