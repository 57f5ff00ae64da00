"""The text plugin: byte-level BPE, plain-text and JSONL readers, the ``text`` modality.

    foundry text pretrain                        # causal LM on the bundled tiny-shakespeare
    foundry text train-tokenizer corpus/ -o tok  # a BPE vocabulary on your own corpus
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from foundry.errors import CheckpointError
from foundry.hookspecs import hookimpl
from foundry.modality import Modality
from foundry.readers import Document

from .bpe import BpeTokenizer
from .readers import JSONL_READER, TEXT_READER
from .sampling import sample_for_training

BUNDLED_TEXT = Path(__file__).parent / "data" / "tinyshakespeare.txt"
DEFAULT_VOCAB_SIZE = 4096
#: BPE trains on at most this much text (a deterministic sample); more changes little.
TRAIN_SAMPLE_BYTES = 32_000_000


def build_tokenizer(documents: Iterable[Document], settings: dict[str, Any]) -> BpeTokenizer:
    """Load ``settings["path"]`` (a foundry or Hugging Face tokenizer dir) or train a BPE of
    ``settings["vocab_size"]`` ids on a sample of ``documents``."""
    if settings.get("path"):
        return BpeTokenizer.load(settings["path"])
    vocab_size = settings.get("vocab_size") or DEFAULT_VOCAB_SIZE
    sample = sample_for_training(documents, settings.get("sample_bytes") or TRAIN_SAMPLE_BYTES)
    return BpeTokenizer.train(sample, vocab_size)


def import_tokenizer(path: Path, source_format: str) -> BpeTokenizer:
    """The tokenizer shipped in an imported transformers directory (Llama, Mistral, GPT-2)."""
    if not Path(path).is_dir():
        raise CheckpointError(f"{path}: {source_format} checkpoints carry no BPE tokenizer; import a transformers directory")
    return BpeTokenizer.from_hf(path)


def default_data() -> list[Path]:
    """tiny-shakespeare (1.1 MB, public domain; see data/SOURCES.md)."""
    return [BUNDLED_TEXT]


@hookimpl
def register_tokenizers(register):
    register("bpe", BpeTokenizer)


@hookimpl
def register_readers(register):
    register(TEXT_READER)
    register(JSONL_READER)


@hookimpl
def register_modalities(register):
    register(
        Modality(
            name="text",
            description="Text language models (GPT-2 / Llama style): byte-level BPE, causal-LM pretraining, "
            "plain text and JSONL input, import of HF Llama/GPT-2 tokenizers",
            objective="clm",
            learned_vocabulary=True,
            presets=("llama-tiny", "gpt2-tiny", "gpt2", "gpt2-medium", "llama2-7b", "mistral-7b"),
            readers=("text", "jsonl"),
            build_tokenizer=build_tokenizer,
            default_data=default_data,
            import_tokenizer=import_tokenizer,
            config_defaults={"train.max_steps": 300, "data.max_len": 256, "tokenizer.vocab_size": DEFAULT_VOCAB_SIZE},
        )
    )


@hookimpl
def register_commands(cli):
    from .commands import add_text_commands

    add_text_commands(cli)
