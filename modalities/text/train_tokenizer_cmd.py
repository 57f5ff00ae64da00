"""``foundry text train-tokenizer`` (and ``foundry code train-tokenizer``): learn a BPE vocabulary.

    foundry text train-tokenizer corpus/ more.jsonl -o tok/ --vocab-size 8192

A file that is not UTF-8 text stops the command with its name, line and byte offset;
``--on-decode-error skip`` leaves such files out instead and says how many.

The output directory holds ``tokenizer.json`` (loadable by ``PreTrainedTokenizerFast`` and
``tokenizers.Tokenizer.from_file``) and ``foundry_tokenizer.json``; pass it to a run with
``--set tokenizer.path=tok/``.
"""

from __future__ import annotations

import time
from pathlib import Path

import click


def train_tokenizer_command(modality_name: str) -> click.Command:
    defaults = {"text": 4096, "code": 8192}

    @click.command(name="train-tokenizer")
    @click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Directory to write the tokenizer to.")
    @click.option("--vocab-size", type=int, default=defaults.get(modality_name, 4096), show_default=True, help="Ids in all, special tokens included.")
    @click.option("--sample-mb", type=float, default=None, help="Train on a deterministic sample of this many MB (default: the modality's).")
    @click.option("--on-decode-error", type=click.Choice(["error", "skip"]), default="error", show_default=True,
                  help="A file that is not UTF-8 text: stop naming file, line and byte, or skip it and count.")
    def train_tokenizer(inputs, out, vocab_size, sample_mb, on_decode_error):
        """Train a byte-level BPE tokenizer on INPUT files or folders."""
        from foundry.plugins import get_manager
        from foundry.readers import read_documents

        modality = get_manager().modality(modality_name)
        readers = get_manager().reader_objects(modality.readers)
        settings = {"path": None, "vocab_size": vocab_size}
        if sample_mb is not None:
            settings["sample_bytes"] = int(sample_mb * 1_000_000)
        start = time.perf_counter()
        documents = read_documents(list(inputs), readers, on_decode_error)
        tokenizer = modality.build_tokenizer(documents, settings)
        tokenizer.save(out)
        seconds = time.perf_counter() - start
        click.echo(f"vocab size {tokenizer.vocab_size} ({seconds:.1f}s); wrote {Path(out) / 'tokenizer.json'}")
        click.echo(f"fingerprint {tokenizer.fingerprint()[:16]}; use it with --set tokenizer.path={out}")

    return train_tokenizer
