"""The Tokenizer protocol every token plugin implements.

A tokenizer turns one document (a protein sequence, a text, a source file) into int ids and back.
The engine only relies on what is declared here: special-token ids so it can pad, mask and
separate documents, ``save``/``load`` so checkpoints carry the tokenizer, and a ``fingerprint``
so a run refuses a checkpoint or prepared dataset made with a different vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Tokenizer(Protocol):
    #: registry name of the tokenizer kind (e.g. "esm", "bpe"); stored in checkpoints so that
    #: ``load`` can be dispatched to the right class.
    kind: str

    @property
    def vocab_size(self) -> int: ...

    # Special ids. ``None`` where the vocabulary has no such token.
    @property
    def pad_id(self) -> int: ...
    @property
    def bos_id(self) -> int | None: ...  # <cls> for ESM, <|bos|> for BPE
    @property
    def eos_id(self) -> int | None: ...
    @property
    def mask_id(self) -> int | None: ...  # needed by the masked-LM objective
    @property
    def unk_id(self) -> int | None: ...

    @property
    def special_ids(self) -> Sequence[int]:
        """Ids that are never masked and never used as random replacement tokens."""
        ...

    @property
    def maskable_ids(self) -> Sequence[int]:
        """Ids the MLM objective may draw as random replacements (the "10% random" tokens)."""
        ...

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """One document to a 1-D int64 array (with bos/eos when ``add_special_tokens``)."""
        ...

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[np.ndarray]: ...

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str: ...

    def save(self, directory: str | Path) -> None:
        """Write everything ``load`` needs into ``directory`` (created if missing)."""
        ...

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer": ...

    def fingerprint(self) -> str:
        """A stable hash of the vocabulary and rules: equal fingerprints encode identically."""
        ...


def pad_batch(sequences: Sequence[np.ndarray], pad_id: int, length: int | None = None) -> np.ndarray:
    """Right-pad 1-D id arrays into one (batch, length) int64 array."""
    width = length if length is not None else max((len(s) for s in sequences), default=0)
    out = np.full((len(sequences), width), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        n = min(len(seq), width)
        out[row, :n] = seq[:n]
    return out
