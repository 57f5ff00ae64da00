"""The protein plugin: registers the ESM tokenizer, the FASTA reader, the modality, its commands.

    foundry plugins                # lists "protein" and what it contributes
    foundry protein pretrain       # ESM-2 style MLM on the bundled UniProt sample
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from foundry.errors import CheckpointError
from foundry.hookspecs import hookimpl
from foundry.modality import Modality
from foundry.readers import Document, Reader

from .alphabet import EsmTokenizer
from .fasta import read_fasta

FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas", ".fasta.gz", ".fa.gz", ".faa.gz")
BUNDLED_FASTA = Path(__file__).parent / "data" / "uniprot_sample.fasta.gz"


def build_tokenizer(documents: Iterable[Document], settings: dict[str, Any]) -> EsmTokenizer:
    """The alphabet is fixed: the documents are not looked at."""
    return EsmTokenizer()


def import_tokenizer(path: Path, source_format: str) -> EsmTokenizer:
    """ESM-2 checkpoints use the ESM alphabet; an HF directory's vocab.txt must list the same tokens."""
    tokenizer = EsmTokenizer()
    vocab = Path(path) / "vocab.txt" if Path(path).is_dir() else None
    if vocab is not None and vocab.is_file():
        tokens = [line.strip() for line in vocab.read_text().splitlines() if line.strip()]
        if tokens != list(tokenizer.tokens):
            first = next((i for i, (a, b) in enumerate(zip(tokens, tokenizer.tokens)) if a != b), min(len(tokens), len(tokenizer.tokens)))
            raise CheckpointError(
                f"{vocab}: not the ESM-2 alphabet (token {first} differs or the sizes differ: {len(tokens)} vs "
                f"{len(tokenizer.tokens)}); a checkpoint from another tokenizer?"
            )
    return tokenizer


def default_data() -> list[Path]:
    """8,000 UniProtKB sequences bundled with foundry (CC-BY-4.0, see data/SOURCES.md)."""
    return [BUNDLED_FASTA]


@hookimpl
def register_tokenizers(register):
    register("esm", EsmTokenizer)


@hookimpl
def register_readers(register):
    register(Reader(name="fasta", suffixes=FASTA_SUFFIXES, read=read_fasta))


@hookimpl
def register_modalities(register):
    register(
        Modality(
            name="protein",
            description="Protein language models (ESM-2 style): amino acids as tokens, masked-LM pretraining, "
            "FASTA input, ESM-2 presets and weights",
            objective="mlm",
            presets=("esm2_tiny", "esm2_t6_8M", "esm2_t12_35M", "esm2_t30_150M", "esm2_t33_650M",
                     "esm2_t36_3B", "esm2_t48_15B"),
            readers=("fasta",),
            build_tokenizer=build_tokenizer,
            default_data=default_data,
            # The default run (`make demo`) is pretrain_small.yaml's shape (256-token rows, 4,096 tokens
            # a step), shortened to 3.3M tokens: it paid on more held-out tasks than 400 steps of
            # 512-token rows on the same tokens, in less time (examples/README.md, "make demo").
            config_defaults={"data.max_len": 256, "data.batch_tokens": 4096, "train.max_steps": 800, "train.warmup_steps": 80,
                             "train.eval_every": 400, "train.save_every": 400},
            import_tokenizer=import_tokenizer,
        )
    )


@hookimpl
def register_tasks(register):
    # By import path: listing plugins must not import torch (modalities/protein/tasks.py does).
    register("variant-effect", "modalities.protein.tasks:VariantEffect")
    register("contact", "modalities.protein.tasks:Contact")
    register("fold", "modalities.protein.fold.task:Fold")


@hookimpl
def register_commands(cli):
    from .commands import add_protein_commands

    add_protein_commands(cli)
