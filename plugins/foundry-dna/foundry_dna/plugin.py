"""The DNA plugin: every hook a modality needs, nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from foundry.errors import DataError
from foundry.hookspecs import hookimpl
from foundry.modality import Modality
from foundry.readers import Document, Reader

from .tokenizer import DnaTokenizer


def read_fasta(path: Path) -> Iterator[Document]:
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    with open(path) as handle:
        found = False
        for number, (title, sequence) in enumerate(SimpleFastaParser(handle), start=1):
            found = True
            if not sequence:
                raise DataError(f"{path}: record {number} {title.split()[0]!r} has no sequence")
            try:
                DnaTokenizer().encode(sequence, add_special_tokens=False)
            except DataError as exc:
                raise DataError(f"{path}: record {title.split()[0]!r}: {exc}") from None
            yield Document(id=title.split()[0], text=sequence, source=str(path))
        if not found:
            raise DataError(f"{path}: no FASTA records")


FINETUNE_HELP = """Fine-tune a DNA language model on labelled sequences (or train --model from scratch).

\b
Tables: CSV/TSV with `sequence` and `label` columns (optional `id`), or FASTA (.fna) + --train-labels.
sequence-regression / -classification: one label per sequence (e.g. promoter / background).
residue-classification: a label string as long as the sequence ('.' = unlabelled), e.g. exon/intron.
"""


@hookimpl
def register_tokenizers(register):
    register("dna", DnaTokenizer)


@hookimpl
def register_readers(register):
    register(Reader(name="dna-fasta", suffixes=(".fna", ".fa.dna", ".dna.fasta"), read=read_fasta))


@hookimpl
def register_modalities(register):
    register(Modality(
        name="dna", description="DNA language models: nucleotides as tokens, masked-LM pretraining",
        objective="mlm", presets=("esm2_tiny", "esm2_t6_8M"), readers=("dna-fasta",),
        build_tokenizer=lambda documents, settings: DnaTokenizer(), default_data=lambda: [],
        config_defaults={"data.max_len": 512},
    ))


@hookimpl
def register_commands(cli):
    from foundry.cli_common import modality_group
    from foundry.finetune.cli import finetune_command, predict_command

    group = modality_group("dna", "Pretrain and fine-tune DNA language models (an example third-party modality).")
    # The engine's generic tasks (sequence-regression/-classification, residue-classification) and any
    # task another plugin registers for "dna" or for every modality: nothing DNA-specific to write.
    group.add_command(finetune_command("dna", FINETUNE_HELP))
    group.add_command(predict_command("dna"))
    cli.add_command(group)
