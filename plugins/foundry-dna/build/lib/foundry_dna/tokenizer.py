"""A fixed nucleotide vocabulary: specials first, then A C G T N (IUPAC ambiguity codes -> N)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from foundry.errors import CheckpointError, DataError

TOKENS = ("<cls>", "<pad>", "<eos>", "<unk>", "<mask>", "A", "C", "G", "T", "N")
_AMBIGUOUS = "RYSWKMBDHV"
SAVE_FILE = "dna_tokenizer.json"


class DnaTokenizer:
    kind = "dna"

    def __init__(self) -> None:
        self._table = np.full(256, -1, dtype=np.int64)
        for letter in "ACGTN":
            self._table[ord(letter)] = self._table[ord(letter.lower())] = TOKENS.index(letter)
        for letter in _AMBIGUOUS:
            self._table[ord(letter)] = self._table[ord(letter.lower())] = TOKENS.index("N")

    vocab_size = len(TOKENS)
    bos_id, pad_id, eos_id, unk_id, mask_id = 0, 1, 2, 3, 4
    special_ids = (0, 1, 2, 3, 4)
    maskable_ids = (5, 6, 7, 8)

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        raw = np.frombuffer("".join(text.split()).encode("ascii", "replace"), dtype=np.uint8)
        ids = self._table[raw]
        if (ids < 0).any():
            position = int(np.argmax(ids < 0))
            raise DataError(f"character {chr(raw[position])!r} at position {position + 1} is not a nucleotide")
        return np.concatenate([[self.bos_id], ids, [self.eos_id]]) if add_special_tokens else ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[np.ndarray]:
        return [self.encode(t, add_special_tokens) for t in texts]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(TOKENS[i] for i in ids if not (skip_special_tokens and i in self.special_ids))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.kind, TOKENS]).encode()).hexdigest()[:16]

    def save(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / SAVE_FILE).write_text(json.dumps({"kind": self.kind, "tokens": TOKENS}))

    @classmethod
    def load(cls, directory) -> "DnaTokenizer":
        path = Path(directory) / SAVE_FILE
        if not path.is_file() or tuple(json.loads(path.read_text()).get("tokens", ())) != TOKENS:
            raise CheckpointError(f"{path}: not a saved DNA tokenizer with this vocabulary")
        return cls()
