"""A fixed nucleotide vocabulary: specials first, then A C G T N (IUPAC ambiguity codes -> N).

Lower case reads as upper case (soft-masked repeats keep their bases) and whitespace is ignored.
``save_hf`` writes the same rules as a transformers tokenizer, so an exported model is tokenized
alike without foundry: ``AutoTokenizer.from_pretrained(export)(seq)["input_ids"] == encode(seq)``.
"""

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

    def save_hf(self, directory) -> None:
        """Write ``tokenizer.json`` + configs that ``transformers.AutoTokenizer`` loads (a fast
        tokenizer) and that encode as ``encode`` does: whitespace dropped, lower case and ambiguity
        codes normalised, one token per base, ``<cls> … <eos>`` around it. Where ``encode`` refuses
        a character that is no nucleotide, the transformers tokenizer (which cannot raise) gives
        ``<unk>``; special-token strings such as ``<mask>`` are read as those tokens."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

        tokenizer = Tokenizer(models.WordLevel({token: i for i, token in enumerate(TOKENS)}, unk_token="<unk>"))
        tokenizer.normalizer = normalizers.Sequence([
            normalizers.Replace(Regex(r"\s"), ""),
            normalizers.Replace(Regex(f"[{_AMBIGUOUS}{_AMBIGUOUS.lower()}n]"), "N"),
            *(normalizers.Replace(letter.lower(), letter) for letter in "ACGT"),
        ])
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per base
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<cls> $A <eos>", pair="<cls> $A <eos> $B:1 <eos>:1",
            special_tokens=[("<cls>", self.bos_id), ("<eos>", self.eos_id)])
        tokenizer.decoder = decoders.Fuse()  # "ACGT", not "A C G T"
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TOKENS[:5]])
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(directory / "tokenizer.json"))
        special = {"cls_token": "<cls>", "bos_token": "<cls>", "eos_token": "<eos>", "pad_token": "<pad>",
                   "unk_token": "<unk>", "mask_token": "<mask>"}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "clean_up_tokenization_spaces": False}
        for name, doc in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
            (directory / name).write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, directory) -> "DnaTokenizer":
        path = Path(directory) / SAVE_FILE
        if not path.is_file() or tuple(json.loads(path.read_text()).get("tokens", ())) != TOKENS:
            raise CheckpointError(f"{path}: not a saved DNA tokenizer with this vocabulary")
        return cls()
