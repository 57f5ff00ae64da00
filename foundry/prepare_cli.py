"""``foundry <modality> prepare``: the CLI face of ``foundry.data.prepare``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import click

from .data.manifest import is_prepared, open_prepared
from .data.prepare import DEFAULT_SHARD_TOKENS, _check_valid_fraction, check_destination, iter_files, prepare
from .errors import DataError
from .plugins import load_tokenizer
from .readers import Reader


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


def prepare_modality(
    modality: str,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    workers: int = 1,
    valid_fraction: float | int = 0.01,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    overwrite: bool = False,
    progress: bool = True,
    tokenizer=None,
    tokenizer_settings: dict[str, Any] | None = None,
    on_decode_error: str = "error",
):
    """What ``foundry <modality> prepare INPUT... -o DIR --workers N`` calls.

    Uses the modality's readers; the tokenizer is ``tokenizer`` when given (e.g. restored from a
    checkpoint, for continued pretraining), else ``modality.build_tokenizer`` over the inputs.
    ``on_decode_error="skip"`` first reads every file once and leaves out those that are not
    text in their encoding (each named on stderr, then a count), as pretraining does.
    """
    from .plugins import get_manager
    from .readers import check_policy, read_documents

    manager = get_manager()
    mod = manager.modality(modality)
    readers = manager.reader_objects(mod.readers)
    _check_valid_fraction(valid_fraction)
    files = list(iter_files([Path(p) for p in inputs], readers))
    check_policy(on_decode_error)
    if on_decode_error == "skip":
        skipped: list[str] = []
        files = [(f, r) for f, r in files if not _skipped(f, r, skipped)]
        if skipped:
            print(f"foundry: skipped {len(skipped)} of {len(files) + len(skipped)} files that are not UTF-8 text", file=sys.stderr)
        if not files:
            raise DataError(f"{', '.join(map(str, inputs))}: no readable files (every one was skipped as not text)")
        inputs = [f for f, _ in files]
    check_destination(Path(out_dir).absolute(), [f for f, _ in files], overwrite)  # before training a BPE
    if tokenizer is None:
        documents = read_documents([Path(p) for p in inputs], readers)
        tokenizer = mod.build_tokenizer(documents, dict(tokenizer_settings or {}))
    return prepare(inputs, readers, tokenizer, out_dir, workers=workers, valid_fraction=valid_fraction,
                   shard_tokens=shard_tokens, progress=progress, overwrite=overwrite)


def _skipped(path: Path, reader: Reader, skipped: list[str]) -> bool:
    """Read ``path`` once under the "skip" policy: True when it was left out."""
    from .readers import read_file

    before = len(skipped)
    for _ in read_file(path, reader, "skip", skipped):
        pass
    return len(skipped) > before


def parse_valid_fraction(text: str) -> float | int:
    """``--valid-fraction``: ``0.01`` or ``1%`` is a fraction, ``500`` a record count."""
    raw = text.strip()
    try:
        if raw.endswith("%"):
            value: float | int = float(raw[:-1]) / 100
        elif raw.isdigit():
            value = int(raw)
        else:
            value = float(raw)
        _check_valid_fraction(value)
    except ValueError:
        raise DataError(
            f"--valid-fraction {text!r}: expected a fraction in [0, 1) (0.01 or 1%) or a record count (500)"
        ) from None
    return value
