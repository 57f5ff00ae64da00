"""The code plugin: source-tree reader, code BPE with fill-in-the-middle tokens, the ``code`` modality.

    foundry code pretrain                     # causal LM on this machine's Python standard library
    foundry code pretrain --data ~/src/proj   # on your own tree (.py, .c, .rs, ... by suffix)

The tokenizer kind is the text plugin's ``"bpe"`` (same class, code pre-tokenizer and FIM
specials recorded in tokenizer.json), so this plugin registers no tokenizer kind of its own.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any, Iterable

from foundry.hookspecs import hookimpl
from foundry.modality import Modality
from foundry.readers import Document
from modalities.text.bpe import BpeTokenizer
from modalities.text.plugin import import_tokenizer  # imported code models carry the same HF tokenizers

from .readers import SOURCE_READER
from .tokenizer import DEFAULT_VOCAB_SIZE, TRAIN_SAMPLE_BYTES, train_code_tokenizer


def build_tokenizer(documents: Iterable[Document], settings: dict[str, Any]) -> BpeTokenizer:
    """Load ``settings["path"]`` (foundry or HF dir, e.g. a Code Llama snapshot) or train a code
    BPE of ``settings["vocab_size"]`` ids on a sample of ``documents``."""
    if settings.get("path"):
        return BpeTokenizer.load(settings["path"])
    return train_code_tokenizer(
        documents,
        settings.get("vocab_size") or DEFAULT_VOCAB_SIZE,
        settings.get("sample_bytes") or TRAIN_SAMPLE_BYTES,
    )


def default_data() -> list[Path]:
    """The Python standard library of the running interpreter (PSF-2.0; ~12 MB without tests)."""
    return [Path(sysconfig.get_paths()["stdlib"])]


@hookimpl
def register_readers(register):
    register(SOURCE_READER)


@hookimpl
def register_modalities(register):
    register(
        Modality(
            name="code",
            description="Code language models (Code Llama / StarCoder style): byte-exact byte-level BPE, "
            "fill-in-the-middle tokens, source trees as input",
            objective="fim",
            learned_vocabulary=True,
            presets=("llama-tiny", "gpt2-tiny", "llama2-7b", "codellama-7b", "mistral-7b", "gpt2"),
            readers=("source",),
            build_tokenizer=build_tokenizer,
            default_data=default_data,
            import_tokenizer=import_tokenizer,
            config_defaults={"train.max_steps": 200, "objective.fim_rate": 0.5, "data.max_len": 512, "tokenizer.vocab_size": DEFAULT_VOCAB_SIZE},
        )
    )


@hookimpl
def register_commands(cli):
    from .commands import add_code_commands

    add_code_commands(cli)
