"""Byte-level BPE on HF ``tokenizers``: the tokenizer of the text and code modalities.

Every byte string is encodable (the initial alphabet is all 256 bytes, so there is no <unk>),
and for valid UTF-8 ``decode(encode(x)) == x`` exactly: no normalizer, no prefix space, no
cleanup of spaces. The saved ``tokenizer.json`` fully determines the ids; a small
``foundry_tokenizer.json`` beside it names the special tokens' roles and whether ``encode`` adds
bos/eos.

Two decisions worth knowing:

- Special-token *strings* inside raw text are encoded as ordinary text (``encode_special_tokens``
  / HF's ``split_special_tokens``): a corpus that happens to contain ``<|eos|>`` cannot inject
  control tokens, and such text round-trips. Special ids enter only through ``add_special_tokens``
  or through code that works on ids (FIM, packing).
- ``encode(text, add_special_tokens=True)`` gives ``[bos] + ids + [eos]``. For a tokenizer imported
  with ``from_hf`` the bos follows the original tokenizer (Llama adds it, GPT-2 does not) and the
  eos is always appended, so every document ends with a stop token for causal LM training.
- A *prompt* is different: ``encode_prompt`` gives ``[bos] + ids`` with no eos (generation must
  continue it), and special-token strings the user writes (``<|fim_prefix|>`` ...) become their
  ids. ``save_hf`` writes exactly that tokenizer for transformers, so an exported model's
  ``AutoTokenizer`` encodes like the original HF tokenizer (or like ``encode_prompt``).

Quick use::

    tok = BpeTokenizer.train(texts, vocab_size=4096)
    tok.save("out/tokenizer"); BpeTokenizer.load("out/tokenizer")
    tok.save_hf("out/hf")   # AutoTokenizer.from_pretrained("out/hf")(p) == tok.encode_prompt(p)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from foundry.errors import CheckpointError, ConfigError, DataError
from foundry.readers import Document

from . import hf_files

PAD, BOS, EOS, UNK, MASK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>", "<|mask|>"
ROLES = ("pad", "bos", "eos", "unk", "mask")
META_FILE = "foundry_tokenizer.json"
FORMAT_VERSION = 1

#: How raw text is cut into words before BPE. "gpt2": the GPT-2 byte-level regex. "code": the
#: cl100k-style regex, which keeps newlines, indentation runs and 1–3 digit groups apart.
CODE_SPLIT = r"""[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
STYLES = ("gpt2", "code")

#: Fill-in-the-middle roles and the token names known models use for them (first match wins).
FIM_NAMES = {
    "fim_prefix": ("<|fim_prefix|>", "<fim_prefix>", "▁<PRE>", "<PRE>"),
    "fim_middle": ("<|fim_middle|>", "<fim_middle>", "▁<MID>", "<MID>"),
    "fim_suffix": ("<|fim_suffix|>", "<fim_suffix>", "▁<SUF>", "<SUF>"),
    "file_sep": ("<|file_sep|>", "<file_sep>"),
}


class BpeTokenizer:
    kind = "bpe"

    def __init__(
        self,
        tokenizer: Tokenizer,
        roles: dict[str, str | None],
        *,
        add_bos: bool = True,
        add_eos: bool = True,
        extra_special_tokens: Sequence[str] = (),
        source: str = "",
    ):
        """Wrap a ``tokenizers.Tokenizer``. ``roles`` maps pad/bos/eos/unk/mask to token strings
        (or None); ``pad`` is required. Prefer ``train``, ``load`` or ``from_hf``."""
        tokenizer.no_padding()
        tokenizer.no_truncation()
        tokenizer.encode_special_tokens = True  # see the module docstring
        self._tk = tokenizer
        where = f"{source}: " if source else ""
        self._roles: dict[str, str | None] = {r: roles.get(r) for r in ROLES}
        self._role_ids: dict[str, int | None] = {}
        for role, token in self._roles.items():
            tid = None if token is None else tokenizer.token_to_id(token)
            if token is not None and tid is None:
                raise CheckpointError(f"{where}{role} token {token!r} is not in the vocabulary")
            self._role_ids[role] = tid
        if self._role_ids["pad"] is None:
            raise CheckpointError(f"{where}the tokenizer has no pad token (nor an eos or unk to pad with)")
        self.add_bos = bool(add_bos and self._role_ids["bos"] is not None)
        self.add_eos = bool(add_eos and self._role_ids["eos"] is not None)
        self.extra_special_tokens = tuple(extra_special_tokens)
        self._prefix = [self._role_ids["bos"]] if self.add_bos else []
        self._suffix = [self._role_ids["eos"]] if self.add_eos else []
        # The post-processor mirrors add_bos/add_eos, so transformers (which follows
        # tokenizer.json) adds exactly what ``encode`` adds.
        tokenizer.post_processor = self._template(self.add_eos)
        added = tokenizer.get_added_tokens_decoder()
        special = {i for i, t in added.items() if t.special}
        special |= {i for i in self._role_ids.values() if i is not None}
        self._special_ids = tuple(sorted(special))
        self._maskable_ids: tuple[int, ...] | None = None
        # Ids may have holes in imported vocabularies: the embedding must cover the largest one.
        self._vocab_size = max(tokenizer.get_vocab_size(with_added_tokens=True), max(added, default=-1) + 1)

    # -- the Tokenizer protocol ----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def pad_id(self) -> int:
        return self._role_ids["pad"]  # type: ignore[return-value]

    @property
    def bos_id(self) -> int | None:
        return self._role_ids["bos"]

    @property
    def eos_id(self) -> int | None:
        return self._role_ids["eos"]

    @property
    def mask_id(self) -> int | None:
        return self._role_ids["mask"]

    @property
    def unk_id(self) -> int | None:
        return self._role_ids["unk"]

    @property
    def special_ids(self) -> tuple[int, ...]:
        return self._special_ids

    @property
    def maskable_ids(self) -> tuple[int, ...]:
        if self._maskable_ids is None:
            special = set(self._special_ids)
            self._maskable_ids = tuple(i for i in range(self.vocab_size) if i not in special)
        return self._maskable_ids

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        ids = self._tk.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, add_special_tokens)

    def encode_prompt(self, text: str) -> np.ndarray:
        """A prompt to generate from: bos (when ``encode`` adds one) and the text, no eos; special
        tokens written in the text (``<|fim_prefix|>``, ``<|eos|>``) become their ids. The exported
        transformers tokenizer (``save_hf``) gives the same ids."""
        self._tk.encode_special_tokens = False
        try:
            ids = self._tk.encode(text, add_special_tokens=False).ids
        finally:
            self._tk.encode_special_tokens = True
        return np.asarray(self._prefix + ids, dtype=np.int64)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[np.ndarray]:
        # encode_batch_fast: rayon-parallel and skips offset bookkeeping we never use.
        encodings = self._tk.encode_batch_fast(list(texts), add_special_tokens=False)
        return [self._wrap(e.ids, add_special_tokens) for e in encodings]

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        return self._tk.decode(np.asarray(ids, dtype=np.int64).reshape(-1).tolist(), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int] | np.ndarray], skip_special_tokens: bool = True) -> list[str]:
        lists = [np.asarray(ids, dtype=np.int64).reshape(-1).tolist() for ids in batch]
        return self._tk.decode_batch(lists, skip_special_tokens=skip_special_tokens)

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` and ``foundry_tokenizer.json`` (each atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        hf_files.write_atomic(directory / "tokenizer.json", self._tk.to_str(pretty=True))
        hf_files.write_atomic(directory / META_FILE, json.dumps(self._meta(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "BpeTokenizer":
        """Restore a tokenizer written by ``save``/``save_hf``; any other HF directory goes
        through ``from_hf``."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.exists():
            return cls.from_hf(directory)
        meta = hf_files.read_json(meta_path)
        if meta.get("kind") != cls.kind or meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(
                f"{meta_path}: expected kind {cls.kind!r} format {FORMAT_VERSION}, "
                f"found kind {meta.get('kind')!r} format {meta.get('format')!r}"
            )
        tk = hf_files.read_tokenizer_json(directory / "tokenizer.json")
        return cls(
            tk,
            meta["special_tokens"],
            add_bos=meta["add_bos"],
            add_eos=meta["add_eos"],
            extra_special_tokens=meta.get("extra_special_tokens", ()),
            source=str(directory),
        )

    def fingerprint(self) -> str:
        """sha256 of the canonical tokenizer.json (sorted keys, no whitespace) and the foundry
        settings that change ids (roles, bos/eos)."""
        canonical = {
            "tokenizer": json.loads(self._tk.to_str()),
            "special_tokens": self._roles,
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
        }
        blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # -- extras ------------------------------------------------------------------------------

    @property
    def special_tokens(self) -> dict[str, str | None]:
        """Role → token string, e.g. ``{"pad": "<|pad|>", ..., "unk": None}``."""
        return dict(self._roles)

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tk.id_to_token(int(token_id))

    @property
    def fim_ids(self) -> dict[str, int]:
        """Fill-in-the-middle ids present in this vocabulary: any of ``fim_prefix``,
        ``fim_middle``, ``fim_suffix``, ``file_sep`` (foundry, StarCoder and Code Llama names)."""
        found = {}
        for role, names in FIM_NAMES.items():
            for name in names:
                tid = self._tk.token_to_id(name)
                if tid is not None:
                    found[role] = tid
                    break
        return found

    @property
    def backend(self) -> Tokenizer:
        """The wrapped ``tokenizers.Tokenizer`` (do not change it in place)."""
        return self._tk

    def __getstate__(self) -> dict:
        # tokenizers pickles only tokenizer.json, which lacks encode_special_tokens: rebuild
        # through __init__ so a tokenizer sent to a worker process encodes exactly the same.
        return {"tokenizer_json": self._tk.to_str(), "meta": self._meta()}

    def __setstate__(self, state: dict) -> None:
        meta = state["meta"]
        self.__init__(  # type: ignore[misc]
            Tokenizer.from_str(state["tokenizer_json"]),
            meta["special_tokens"],
            add_bos=meta["add_bos"],
            add_eos=meta["add_eos"],
            extra_special_tokens=meta.get("extra_special_tokens", ()),
        )

    def __repr__(self) -> str:
        return f"BpeTokenizer(vocab_size={self.vocab_size}, specials={self._roles})"

    # -- training ----------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        documents_or_texts: Iterable[Document | str],
        vocab_size: int,
        extra_special_tokens: Sequence[str] = (),
        *,
        style: str = "gpt2",
        min_frequency: int = 2,
    ) -> "BpeTokenizer":
        """Learn a byte-level BPE vocabulary of ``vocab_size`` ids (specials included).

        Ids: ``<|pad|>``=0, ``<|bos|>``=1, ``<|eos|>``=2, ``<|mask|>``=3, then the extra specials,
        the 256 bytes and the merges. ``style`` picks the pre-tokenizer (``"gpt2"`` or ``"code"``).
        """
        specials = [PAD, BOS, EOS, MASK] + [t for t in extra_special_tokens if t not in (PAD, BOS, EOS, MASK)]
        minimum = len(specials) + 256
        if not isinstance(vocab_size, int) or vocab_size < minimum:
            raise ConfigError(
                f"tokenizer.vocab_size: {vocab_size!r} is too small for byte-level BPE; "
                f"use at least {minimum} ({len(specials)} special tokens + 256 bytes)"
            )
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = _pre_tokenizer(style)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        counter = _CharCounter(documents_or_texts)
        tk.train_from_iterator(counter, trainer=trainer)
        if counter.chars == 0:
            raise DataError("no text to train the BPE tokenizer on (all documents are empty)")
        roles = {"pad": PAD, "bos": BOS, "eos": EOS, "unk": None, "mask": MASK}
        return cls(tk, roles, add_bos=True, add_eos=True, extra_special_tokens=specials[4:])

    # -- Hugging Face interchange ----------------------------------------------------------------

    def save_hf(self, directory: str | Path) -> None:
        """Write a directory that ``transformers.AutoTokenizer.from_pretrained`` loads as a
        tokenizer for generation: it encodes text as ``encode_prompt`` does (bos as the original,
        no eos, special-token strings recognised) and decodes as ``decode``. ``tokenizer.json``,
        ``tokenizer_config.json``, ``special_tokens_map.json``, plus foundry's own file so ``load``
        restores the training tokenizer (eos appended) exactly."""
        directory = Path(directory)
        self.save(directory)
        prompt = Tokenizer.from_str(self._tk.to_str())
        prompt.post_processor = self._template(add_eos=False)  # load() rebuilds the training one
        hf_files.write_atomic(directory / "tokenizer.json", prompt.to_str(pretty=True))
        hf_files.write_hf_configs(directory, self._roles, self.extra_special_tokens, add_bos=self.add_bos)

    @classmethod
    def from_hf(cls, directory: str | Path) -> "BpeTokenizer":
        """Load a Hugging Face tokenizer directory (Llama, Mistral, GPT-2, …).

        Reads ``tokenizer.json``, or GPT-2's ``vocab.json`` + ``merges.txt``. Roles come from
        ``tokenizer_config.json`` / ``special_tokens_map.json`` (guessed from common token names
        when neither file exists). With no pad token, **pad falls back to unk, then eos**
        (GPT-2's pad is then ``<|endoftext|>``, Llama's ``<unk>``). ``encode`` adds bos when the
        original tokenizer does and always appends eos.
        """
        directory = Path(directory)
        tk, roles, extras = hf_files.read_hf_directory(directory)
        if roles.get("pad") is None:
            # unk before eos: the causal-LM labels ignore pad positions, and with pad == eos the
            # model would never learn to stop. Byte-level/byte-fallback vocabularies never emit unk.
            roles["pad"] = roles.get("unk") or roles.get("eos")
        add_bos = hf_files.adds_bos(directory, tk, roles.get("bos"))
        return cls(tk, roles, add_bos=add_bos, add_eos=True, extra_special_tokens=extras, source=str(directory))

    # -- internals ---------------------------------------------------------------------------

    def _wrap(self, ids: list[int], add_special_tokens: bool) -> np.ndarray:
        if add_special_tokens and (self._prefix or self._suffix):
            ids = self._prefix + ids + self._suffix
        return np.asarray(ids, dtype=np.int64)

    def _template(self, add_eos: bool) -> processors.TemplateProcessing:
        bos, eos = self._roles["bos"], self._roles["eos"]
        add_eos = add_eos and self.add_eos
        head = f"{bos} " if self.add_bos else ""
        tail = f" {eos}" if add_eos else ""
        tail_b = f" {eos}:1" if add_eos else ""
        used = ([(bos, self.bos_id)] if self.add_bos else []) + ([(eos, self.eos_id)] if add_eos else [])
        return processors.TemplateProcessing(
            single=f"{head}$A{tail}", pair=f"{head}$A{tail} $B:1{tail_b}", special_tokens=list(dict(used).items())
        )

    def _meta(self) -> dict:
        return {
            "kind": self.kind,
            "format": FORMAT_VERSION,
            "special_tokens": self._roles,
            "extra_special_tokens": list(self.extra_special_tokens),
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
            "vocab_size": self.vocab_size,
        }


def _pre_tokenizer(style: str):
    if style == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if style == "code":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CODE_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise ConfigError(f"unknown BPE pre-tokenizer style {style!r}; expected one of {', '.join(STYLES)}")


class _CharCounter:
    """Yield the texts of documents (or strings) and count their characters on the way."""

    def __init__(self, items: Iterable[Document | str]):
        self.items = items
        self.chars = 0

    def __iter__(self) -> Iterator[str]:
        for item in self.items:
            text = item.text if isinstance(item, Document) else item
            if not isinstance(text, str):
                raise DataError(f"expected text (str) to train the tokenizer, got {type(text).__name__}")
            self.chars += len(text)
            if text:
                yield text
