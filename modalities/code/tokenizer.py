"""The code tokenizer: byte-level BPE with a code pre-tokenizer and fill-in-the-middle specials.

It is a ``BpeTokenizer`` (kind ``"bpe"``): ``tokenizer.json`` records the code pre-tokenizer, so
saving and loading need nothing code-specific. ``decode(encode(src)) == src`` byte for byte for
any UTF-8 source (tests check every file of the Python standard library).

Ids: ``<|pad|>`` 0, ``<|bos|>`` 1, ``<|eos|>`` 2, ``<|mask|>`` 3, ``<|fim_prefix|>`` 4,
``<|fim_middle|>`` 5, ``<|fim_suffix|>`` 6, ``<|file_sep|>`` 7; ``tokenizer.fim_ids`` maps
``fim_prefix``/``fim_middle``/``fim_suffix``/``file_sep`` to them.
"""

from __future__ import annotations

from typing import Iterable

from foundry.readers import Document
from modalities.text.bpe import BpeTokenizer
from modalities.text.sampling import sample_for_training

FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FILE_SEP = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_sep|>"
FIM_TOKENS = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FILE_SEP)
DEFAULT_VOCAB_SIZE = 8192
#: Characters of source the vocabulary is learned from (a deterministic sample; ~2 s to train).
TRAIN_SAMPLE_BYTES = 8_000_000

__all__ = ["FIM_TOKENS", "train_code_tokenizer", "sample_for_training"]


def train_code_tokenizer(
    documents: Iterable[Document | str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    sample_bytes: int = TRAIN_SAMPLE_BYTES,
) -> BpeTokenizer:
    """Train on a bounded deterministic sample of ``documents`` (see ``sample_for_training``)."""
    sample = sample_for_training(documents, sample_bytes)
    return BpeTokenizer.train(sample, vocab_size, extra_special_tokens=FIM_TOKENS, style="code")
