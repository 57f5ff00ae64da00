"""A tokenized corpus: a sequence of documents, each a 1-D array of token ids.

Two implementations share this interface: ``InMemoryTokens`` (small raw inputs tokenized at the
start of a run) and the memory-mapped shards written by ``foundry <modality> prepare``
(``foundry.data.shards``). Everything downstream (sampler, packer) sees only this interface.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import DataError


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

    def find_id_at_least(self, bound: int):
        """(None, record id, id) of the first token id ``>= bound``, or None (one vectorised pass)."""
        if not len(self._tokens) or int(self._tokens.max()) < bound:
            return None
        position = int(np.argmax(self._tokens >= bound))
        doc = int(np.searchsorted(self._offsets, position, side="right")) - 1
        return None, self._record_ids[doc], int(self._tokens[position])


def check_fits_vocab(dataset, vocab_size: int, split: str = "training") -> None:
    """Refuse token data with an id ``>= vocab_size`` (the model's embedding rows), naming the
    shard file (or the split) and the record, before training instead of an IndexError mid-run.

    A mixture (``.datasets``) checks each source. Shards whose index says every id is below
    ``vocab_size`` are trusted without a scan (the writer checked each id, ``open_prepared`` the
    bytes against the manifest's checksums); otherwise the ids are scanned once (~0.1 s per GB).
    """
    for part in getattr(dataset, "datasets", None) or [dataset]:
        declared = getattr(part, "vocab_size", None)
        if declared is not None and declared <= vocab_size:
            continue
        hit = part.find_id_at_least(vocab_size) if hasattr(part, "find_id_at_least") else _scan(part, vocab_size)
        if hit is not None:
            where, record, value = hit
            place = f"{where}: record {record!r}" if where is not None else f"{split} data, record {record!r}"
            raise DataError(
                f"{place} holds token id {value}, but the model has only {vocab_size} token embeddings: the data "
                "was tokenized with a larger vocabulary than the model's (a model for another tokenizer, or "
                "model vocab_size set too small?)"
            )


def _scan(dataset, bound: int):
    """(None, record id, id) of the first id ``>= bound`` in any TokenDataset, or None."""
    for i in range(len(dataset)):
        ids = np.asarray(dataset[i])
        if len(ids) and int(ids.max()) >= bound:
            return None, dataset.record_id(i), int(ids.max())
    return None
