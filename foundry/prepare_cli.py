"""``foundry <modality> prepare``: the CLI face of ``foundry.data.prepare``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .data.manifest import is_prepared, open_prepared
from .data.prepare import prepare_modality
from .plugins import load_tokenizer


def run_prepare(modality: str, inputs: list[Path], out: Path, *, workers: int, valid_fraction: float,
                tokenizer_path: Path | None, vocab_size: int | None, overwrite: bool, on_decode_error: str = "error") -> None:
    tokenizer = _tokenizer_of(tokenizer_path) if tokenizer_path is not None else None
    settings: dict = {"path": str(tokenizer_path) if tokenizer_path and tokenizer is None else None}
    if vocab_size:
        settings["vocab_size"] = vocab_size
    manifest = prepare_modality(modality, inputs, out, workers=workers, valid_fraction=valid_fraction,
                                overwrite=overwrite, tokenizer=tokenizer, tokenizer_settings=settings, on_decode_error=on_decode_error)
    train, valid = manifest.train, manifest.valid
    click.echo(f"prepared {out}: train {train.docs:,} documents / {train.tokens:,} tokens, "
               f"valid {valid.docs:,} documents / {valid.tokens:,} tokens")


def _tokenizer_of(path: Path):
    """The tokenizer kept in a model dir or a prepared dir; None for a plain tokenizer dir (the
    modality's ``build_tokenizer`` loads those through ``settings['path']``)."""
    meta = path / "model.json"
    if meta.is_file():
        kind = json.loads(meta.read_text())["tokenizer"]["kind"]
        return load_tokenizer(kind, path / "tokenizer")
    if is_prepared(path):
        return open_prepared(path, checksums=False).load_tokenizer()  # the tokenizer only: no need to hash shards
    return None
