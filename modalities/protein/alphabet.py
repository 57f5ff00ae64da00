"""The ESM-2 protein alphabet as a foundry tokenizer: one amino acid, one token.

The vocabulary is exactly fair-esm's ``Alphabet.from_architecture("ESM-1b")`` (the alphabet of
ESM-1b and ESM-2), 33 tokens with the same ids, so ESM-2 weights load without remapping::

    0 <cls>  1 <pad>  2 <eos>  3 <unk>
    4..23    L A G V S E R T I D P K Q N F Y M H W C   (the 20 standard amino acids)
    24..28   X B U Z O                                 (unknown, ambiguous and rare residues)
    29, 30   . -                                       (alignment gaps)
    31 <null_1>  32 <mask>

``encode`` adds ``<cls>`` in front and ``<eos>`` at the end, as fair-esm's ``BatchConverter``
does for ESM-2. Encoding is a 256-entry table lookup over the ASCII bytes (``bytes.translate``,
several times faster than numpy fancy indexing, then ``np.frombuffer``); ``encode_batch`` joins
the batch with marker bytes that the table turns into ``<cls>``/``<eos>`` and does one lookup for
all of it, so 20,000 UniProt sequences (9 M residues) take about 25 ms.

Input rules (``RULES_VERSION`` is part of the fingerprint; bump it when one changes):

- **Lowercase** letters are upper-cased. fair-esm raises ``KeyError`` on them, but users paste
  lowercase sequences and there is no ambiguity for single-letter amino-acid codes.
- **Whitespace** (spaces, tabs, newlines) is removed, like fair-esm, which splits on it.
- **``*``**: one trailing stop codon (``MKV*``, from translated ORFs) is dropped. An internal
  ``*`` is a ``DataError``: a stop inside a protein means a wrong frame or a concatenation.
- **Letters outside the alphabet** (J, and lowercase j) and **non-letters** (digits, ``>``,
  ``;`` ...) raise ``foundry.errors.DataError`` naming the character and its 1-based position
  in the input string. We do not map them to ``<unk>``: fair-esm's ``BatchConverter`` refuses
  them too (``KeyError``), and a silent ``<unk>`` hides real mistakes (a DNA file, a pasted
  header). An unknown residue is written ``X``, which the alphabet has. Readers add the file and
  record to the message.
- **Special tokens written inline** (``MK<mask>V``) are recognised exactly as spelled in the
  vocabulary (case-sensitive, like fair-esm); an unknown ``<...>`` is a ``DataError``. Strings
  without ``<`` never take this slower path.

MLM random replacements (``maskable_ids``) are the 20 standard amino acids only: X/B/U/Z/O are
rare or ambiguous and gaps are not residues, so drawing them as "random tokens" would teach the
model noise it never sees. ``special_ids`` (never masked, never drawn) are the six ``<...>``
tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from foundry.errors import CheckpointError, DataError

#: fair-esm ``Alphabet.from_architecture("ESM-1b").all_toks``, in id order.
ESM_TOKENS: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y",
    "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-",
    "<null_1>", "<mask>",
)  # fmt: skip
STANDARD_AMINO_ACIDS = "LAGVSERTIDPKQNFYMHWC"
RULES_VERSION = 1
SAVE_FILE = "foundry_tokenizer.json"

# Byte codes of the translation tables that are not token ids.
_SPACE, _STOP, _INVALID = 253, 254, 255
_FIRST_NON_TOKEN = _SPACE
# encode_batch wraps each sequence in these control bytes, which the tables turn into <cls> and
# <eos>; they are invalid in sequences, so input containing them takes the checked slow path.
_CLS_MARK, _EOS_MARK = "\x01", "\x02"
_SPECIAL_RE = re.compile(r"<[^<>\s]*>")
_NON_ASCII_RE = re.compile(r"[^\x00-\x7f]")


def _byte_tables() -> tuple[bytes, bytes]:
    """256-byte ``bytes.translate`` tables: ASCII byte -> token id (or a code above)."""
    table = bytearray([_INVALID] * 256)
    for idx, tok in enumerate(ESM_TOKENS):
        if len(tok) == 1:
            table[ord(tok)] = idx
            table[ord(tok.lower())] = idx  # lowercase letters are upper-cased; '.', '-' unchanged
    for ch in " \t\n\r\v\f":
        table[ord(ch)] = _SPACE
    table[ord("*")] = _STOP
    marked = bytearray(table)
    marked[ord(_CLS_MARK)] = ESM_TOKENS.index("<cls>")
    marked[ord(_EOS_MARK)] = ESM_TOKENS.index("<eos>")
    return bytes(table), bytes(marked)


_TABLE, _MARKED_TABLE = _byte_tables()


class EsmTokenizer:
    """ESM-1b/ESM-2 alphabet; see the module docstring for the input rules."""

    kind = "esm"

    def __init__(self) -> None:
        self.tokens: tuple[str, ...] = ESM_TOKENS
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(ESM_TOKENS)}
        self._specials = {t: i for t, i in self.token_to_id.items() if t.startswith("<")}
        self._is_special = np.zeros(len(ESM_TOKENS), dtype=bool)
        self._is_special[list(self._specials.values())] = True

    def __repr__(self) -> str:
        return f"EsmTokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()[:12]})"

    # -- ids ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def pad_id(self) -> int:
        return self.token_to_id["<pad>"]

    @property
    def bos_id(self) -> int:
        return self.token_to_id["<cls>"]

    @property
    def eos_id(self) -> int:
        return self.token_to_id["<eos>"]

    @property
    def mask_id(self) -> int:
        return self.token_to_id["<mask>"]

    @property
    def unk_id(self) -> int:
        return self.token_to_id["<unk>"]

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._specials.values()))

    @property
    def maskable_ids(self) -> tuple[int, ...]:
        return tuple(self.token_to_id[a] for a in STANDARD_AMINO_ACIDS)

    # -- encoding ----------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """One sequence to int64 ids, ``<cls> ... <eos>`` when ``add_special_tokens``."""
        body = self._encode_body(text)
        if not add_special_tokens:
            return body
        out = np.empty(len(body) + 2, dtype=np.int64)
        out[0], out[1:-1], out[-1] = self.bos_id, body, self.eos_id
        return out

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[np.ndarray]:
        """Many sequences at once: one table lookup over all of them.

        Sequences that need care (whitespace, ``*``, inline ``<mask>``, errors) go through
        ``encode``; a ``DataError`` then also carries the index of the sequence in the batch.
        """
        texts = list(texts)
        n = len(texts)
        if n == 0:
            return []
        extra = 2 if add_special_tokens else 0
        if add_special_tokens:
            joined = _CLS_MARK + (_EOS_MARK + _CLS_MARK).join(texts) + _EOS_MARK
            clean = joined.count(_CLS_MARK) == n and joined.count(_EOS_MARK) == n
        else:
            joined, clean = "".join(texts), True
        if not (clean and joined.isascii()):  # invalid input: let encode() find and report it
            return [self._encode_item(i, t, add_special_tokens) for i, t in enumerate(texts)]
        table = _MARKED_TABLE if add_special_tokens else _TABLE
        codes = np.frombuffer(joined.encode("ascii").translate(table), dtype=np.uint8)
        out = codes.astype(np.int64)
        ends = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=n) + extra)
        bounds = [0, *ends.tolist()]
        result = [out[bounds[i] : bounds[i + 1]] for i in range(n)]

        # Sequences with whitespace, '*', bad characters or inline <tokens> take the careful path.
        flagged = set()
        if codes.size and codes.max() >= _FIRST_NON_TOKEN:
            flagged.update(np.searchsorted(ends, np.flatnonzero(codes >= _FIRST_NON_TOKEN), side="right").tolist())
        if "<" in joined:
            flagged.update(i for i, t in enumerate(texts) if "<" in t)
        for i in sorted(flagged):
            result[i] = self._encode_item(i, texts[i], add_special_tokens)
        return result

    def _encode_item(self, index: int, text: str, add_special_tokens: bool) -> np.ndarray:
        try:
            return self.encode(text, add_special_tokens)
        except DataError as exc:
            err = DataError(f"sequence {index} of the batch: {exc}")
            err.index, err.position = index, getattr(exc, "position", None)
            raise err from None

    def _encode_body(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise TypeError(f"EsmTokenizer.encode expects a str, got {type(text).__name__}")
        # A trailing stop codon is dropped (after trailing whitespace); any other '*' is an error.
        stripped = text.rstrip()
        if stripped.endswith("*"):
            text = stripped[:-1]
        if "<" not in text:
            return _encode_plain(text, 0)
        parts, pos = [], 0
        for match in _SPECIAL_RE.finditer(text):
            parts.append(_encode_plain(text[pos : match.start()], pos))
            tok = match.group()
            if tok not in self._specials:
                known = ", ".join(self._specials)
                raise _char_error(f"unknown special token {tok!r} at position {match.start() + 1} "
                                  f"(known: {known})", match.start())
            parts.append(np.array([self._specials[tok]], dtype=np.int64))
            pos = match.end()
        parts.append(_encode_plain(text[pos:], pos))
        return np.concatenate(parts)

    # -- decoding ----------------------------------------------------------------------------

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            raise ValueError(f"id {int(ids[bad][0])} is outside the ESM vocabulary (0..{self.vocab_size - 1})")
        if skip_special_tokens:
            ids = ids[~self._is_special[ids]]
        return "".join(map(self.tokens.__getitem__, ids.tolist()))

    # -- persistence -------------------------------------------------------------------------

    def _identity(self) -> dict:
        return {"kind": self.kind, "rules_version": RULES_VERSION, "tokens": list(self.tokens)}

    def fingerprint(self) -> str:
        blob = json.dumps(self._identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        doc = {**self._identity(), "fingerprint": self.fingerprint()}
        (directory / SAVE_FILE).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> "EsmTokenizer":
        path = Path(directory) / SAVE_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing; this directory holds no saved ESM tokenizer") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable tokenizer file ({exc})") from None
        tok = cls()
        if not isinstance(doc, dict):
            raise CheckpointError(f"{path}: expected a JSON object describing the tokenizer")
        if doc.get("kind") != cls.kind:
            raise CheckpointError(f"{path}: tokenizer kind is {doc.get('kind')!r}, expected {cls.kind!r}")
        if doc.get("rules_version") != RULES_VERSION:
            raise CheckpointError(f"{path}: tokenizer rules version {doc.get('rules_version')!r}, "
                                  f"this foundry has version {RULES_VERSION}")
        saved = doc.get("tokens")
        if saved != list(tok.tokens):
            where = _first_difference(saved if isinstance(saved, list) else [], list(tok.tokens))
            raise CheckpointError(f"{path}: vocabulary differs from the ESM alphabet at id {where}")
        return tok

    def save_hf(self, directory: str | Path, model_max_length: int | None = None) -> None:
        """Write a Hugging Face ``EsmTokenizer`` (vocab.txt + configs) that gives the same ids.

        ``transformers.AutoTokenizer.from_pretrained(directory)`` loads it. HF's tokenizer maps
        characters outside the alphabet (and lowercase) to ``<unk>`` instead of following the
        rules above; on valid upper-case sequences the ids are identical.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.txt").write_text("\n".join(self.tokens) + "\n", encoding="utf-8")
        special = {"cls_token": "<cls>", "eos_token": "<eos>", "mask_token": "<mask>",
                   "pad_token": "<pad>", "unk_token": "<unk>"}
        config = {"tokenizer_class": "EsmTokenizer", **special, "clean_up_tokenization_spaces": True}
        if model_max_length is not None:
            config["model_max_length"] = int(model_max_length)
        for name, doc in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
            (directory / name).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _encode_plain(text: str, offset: int) -> np.ndarray:
    """Residue characters to ids (no special tokens); ``offset`` places error positions."""
    if not text.isascii():
        at = _NON_ASCII_RE.search(text).start()
        raise _invalid(text[at], offset + at)
    codes = np.frombuffer(text.encode("ascii").translate(_TABLE), dtype=np.uint8)
    if codes.size and codes.max() >= _FIRST_NON_TOKEN:
        wrong = np.flatnonzero(codes > _SPACE)  # _STOP or _INVALID
        if wrong.size:
            at = int(wrong[0])
            if text[at] == "*":
                raise _char_error(f"internal stop codon '*' at position {offset + at + 1} "
                                  "(only a trailing '*' is allowed; it is dropped)", offset + at)
            raise _invalid(text[at], offset + at)
        codes = codes[codes != _SPACE]
    return codes.astype(np.int64)


def _invalid(char: str, position: int) -> DataError:
    return _char_error(
        f"character {char!r} at position {position + 1} is not in the ESM protein alphabet "
        "(expected amino-acid letters ACDEFGHIKLMNPQRSTVWY, XBUZO, gaps '.' '-', or a token such as <mask>)",
        position,
    )


def _char_error(message: str, position: int) -> DataError:
    err = DataError(message)
    err.position = position + 1  # 1-based, as in the message
    return err


def _first_difference(a: list, b: list) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))
