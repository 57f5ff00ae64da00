"""``manifest.json`` of a prepared dataset (what went in, how it was tokenized, what came out),
and opening a prepared folder: ``open_prepared``, ``is_prepared``.

The manifest is written last, atomically; its presence is what makes a prepared folder complete.
It records the sha256 of every shard file: opening a prepared folder for training checks them (a
shard corrupted in place, same size, would otherwise train silently or crash mid-run with an
IndexError). Hashing runs in up to 4 threads, about 1 s per GiB per core (sha256 with SHA-NI; measured).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, FoundryError
from .shards import INDEX_NAME, SHARD_FORMAT, ShardedTokens, file_sha256

MANIFEST_NAME = "manifest.json"
TOKENIZER_DIR = "tokenizer"
PREPARED_FORMAT = "foundry-prepared"
PREPARED_VERSION = 1
SPLITS = ("train", "valid")


@dataclass(frozen=True)
class SourceFile:
    path: str  # absolute path at prepare time
    size: int  # bytes
    mtime: float  # seconds since the epoch
    sha256: str | None  # hex digest of the whole file (None when hashing was switched off)
    reader: str  # name of the reader that read it
    docs: int  # documents it contributed (both splits)
    tokens: int


@dataclass(frozen=True)
class SplitCounts:
    docs: int
    tokens: int
    chars: int  # characters of document text (residues for proteins)
    shards: int


@dataclass(frozen=True)
class Manifest:
    tokenizer_kind: str
    tokenizer_fingerprint: str
    vocab_size: int
    dtype: str  # "uint16" | "uint32"
    sources: list[SourceFile]
    splits: dict[str, SplitCounts]
    settings: dict[str, Any]  # valid rule, shard size, workers, add_special_tokens, …
    created: str  # ISO-8601 UTC
    foundry_version: str = ""
    tokenizer_dir: str = "tokenizer"  # relative to the prepared folder
    format: str = PREPARED_FORMAT
    version: int = PREPARED_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    #: sha256 of every shard file by path relative to the folder ("train/shard-00000/tokens.bin");
    #: empty in manifests written before checksums were recorded
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def train(self) -> SplitCounts:
        return self.splits["train"]

    @property
    def valid(self) -> SplitCounts:
        return self.splits["valid"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # format/version first: a human opening the file sees what it is
        return {"format": d.pop("format"), "version": d.pop("version"), **d}

    @classmethod
    def from_dict(cls, data: Any, where: Path | str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(data, dict):
            raise DataError(f"{where}: expected a JSON object")
        if data.get("format") != PREPARED_FORMAT:
            raise DataError(f"{where}: not a foundry prepared-data manifest (format {data.get('format')!r})")
        if data.get("version") != PREPARED_VERSION:
            raise DataError(
                f"{where}: manifest version {data.get('version')!r}; this foundry reads version {PREPARED_VERSION} "
                "(re-run prepare with this version)"
            )
        try:
            sources = [SourceFile(**s) for s in data["sources"]]
            splits = {name: SplitCounts(**data["splits"][name]) for name in SPLITS}
            return cls(
                tokenizer_kind=data["tokenizer_kind"],
                tokenizer_fingerprint=data["tokenizer_fingerprint"],
                vocab_size=int(data["vocab_size"]),
                dtype=data["dtype"],
                sources=sources,
                splits=splits,
                settings=dict(data["settings"]),
                created=data["created"],
                foundry_version=data.get("foundry_version", ""),
                tokenizer_dir=data.get("tokenizer_dir", "tokenizer"),
                extra=dict(data.get("extra", {})),
                checksums=_checksums(data.get("checksums", {}), where),
            )
        except KeyError as exc:
            raise DataError(f"{where}: key {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{where}: malformed entry ({exc})") from None

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        """Read and check ``manifest.json``; every problem is a ``DataError`` naming the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: missing") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
        return cls.from_dict(data, where=path)


def _checksums(value: Any, where) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise DataError(f"{where}: \"checksums\" must map shard file paths to sha256 hex digests")
    return dict(value)


# ------------------------------------------------------------------------------------------------
# Opening
# ------------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    train: ShardedTokens
    valid: ShardedTokens
    manifest: Manifest
    tokenizer_dir: Path
    path: Path

    def load_tokenizer(self):
        """The tokenizer saved with the data, through the plugin registry."""
        from ..plugins import load_tokenizer

        return load_tokenizer(self.manifest.tokenizer_kind, self.tokenizer_dir)


def is_prepared(path: str | Path) -> bool:
    """True when ``path`` is a prepared folder, or the remains of one; cheap (reads two small files).

    "The remains of one": a ``manifest.json`` of the foundry format that is otherwise broken, or
    no readable manifest beside ``train/`` or ``valid/`` shard indexes. ``open_prepared`` then
    names what is missing or broken; treated as raw input, the folder would only give "no readable
    files". A ``manifest.json`` of another tool in a raw corpus folder does not count.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    if _read_json(path / MANIFEST_NAME).get("format") == PREPARED_FORMAT:
        return True
    return any(_read_json(path / split / INDEX_NAME).get("format") == SHARD_FORMAT for split in SPLITS)


def is_complete(path: str | Path) -> bool:
    """True when ``path`` is a prepared folder whose manifest reads; what prepare's swap relies on."""
    manifest = Path(path) / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        Manifest.load(manifest)
    except FoundryError:
        return False
    return True


def _read_json(path: Path) -> dict:
    """A small JSON object file, or {} when it is missing or unreadable (for cheap sniffing)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def open_prepared(path: str | Path, expected_fingerprint: str | None = None, *, verify: bool = True,
                  checksums: bool = True) -> PreparedData:
    """Open a prepared folder, checking the manifest against the shards and the tokenizer.

    ``checksums``: hash every shard file against the manifest (what training needs: corruption
    inside a file of the right size is caught here, not mid-run). Pass False when only the
    tokenizer or the counts are wanted."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such prepared data folder")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        if any((path / s).exists() for s in (*SPLITS, TOKENIZER_DIR)):
            raise DataError(f"{path}: {MANIFEST_NAME} is missing: the prepare did not finish; run prepare again")
        raise DataError(
            f"{path}: not a prepared data folder (no {MANIFEST_NAME}); run `foundry <modality> prepare` first"
        )
    manifest = Manifest.load(manifest_path)
    if expected_fingerprint is not None and expected_fingerprint != manifest.tokenizer_fingerprint:
        raise DataError(
            f"{path}: prepared with tokenizer fingerprint {manifest.tokenizer_fingerprint} "
            f"({manifest.tokenizer_kind}), but this run's tokenizer has {expected_fingerprint}; "
            f"use the tokenizer in {path / manifest.tokenizer_dir} or prepare the data again with this tokenizer"
        )
    splits = {}
    for name in SPLITS:
        split = ShardedTokens(path / name, verify=verify)
        _check_agreement(manifest_path, manifest, name, split)
        splits[name] = split
    if checksums:
        verify_checksums(manifest_path, manifest, splits)
    tokenizer_dir = path / manifest.tokenizer_dir
    if not tokenizer_dir.is_dir():
        raise DataError(f"{tokenizer_dir}: tokenizer folder listed in {manifest_path} is missing")
    return PreparedData(splits["train"], splits["valid"], manifest, tokenizer_dir, path)


def _check_agreement(manifest_path: Path, manifest: Manifest, name: str, split: ShardedTokens) -> None:
    want = manifest.splits[name]
    index_path = split.directory / "index.json"
    got = {"docs": len(split), "tokens": split.num_tokens, "shards": split.num_shards}
    for key, value in got.items():
        if getattr(want, key) != value:
            raise DataError(
                f"{manifest_path}: says {name} has {getattr(want, key)} {key}, {index_path} has {value}; "
                "the manifest does not belong to these shards (prepare again)"
            )
    if split.tokenizer_fingerprint != manifest.tokenizer_fingerprint:
        raise DataError(
            f"{index_path}: tokenizer fingerprint {split.tokenizer_fingerprint} differs from "
            f"{manifest.tokenizer_fingerprint} in {manifest_path}"
        )
    if split.dtype.name != manifest.dtype:
        raise DataError(f"{index_path}: dtype {split.dtype.name} differs from {manifest.dtype} in {manifest_path}")
    if split.vocab_size is not None and split.vocab_size != manifest.vocab_size:
        raise DataError(f"{index_path}: vocab_size {split.vocab_size} differs from {manifest.vocab_size} in {manifest_path}")


#: threads hashing shard files at once (sha256 releases the GIL; more rarely helps, disks saturate)
HASH_THREADS = 4
#: above this many bytes, say on stderr why opening the data takes a while
_NOTE_BYTES = 1 << 30


def verify_checksums(manifest_path: Path, manifest: Manifest, splits: dict[str, ShardedTokens]) -> None:
    """Every shard file hashes to the sha256 in the manifest; the first that does not is named.

    A manifest from before checksums were recorded gets a scan of the token ids against its
    vocabulary instead (about 0.1 s per GB): that catches ids that would crash the embedding."""
    if not manifest.checksums:
        for split in splits.values():
            hit = split.find_id_at_least(manifest.vocab_size)
            if hit is not None:
                tokens, record, value = hit
                raise DataError(
                    f"{tokens}: record {record!r} holds token id {value}, outside the vocabulary of "
                    f"{manifest.vocab_size} ids in {manifest_path}; the shard is corrupt: prepare the data again"
                )
        return
    files = [(f"{name}/{rel}", p) for name, split in splits.items() for rel, p in split.files()]
    unlisted = [rel for rel, _ in files if rel not in manifest.checksums]
    if unlisted:
        raise DataError(f"{manifest_path}: no checksum for {unlisted[0]}; the manifest does not belong to these shards (prepare again)")
    total = sum(p.stat().st_size for _, p in files)
    if total >= _NOTE_BYTES:
        print(f"checking the sha256 of {total / 1e9:.1f} GB of shards in {manifest_path.parent}", file=sys.stderr, flush=True)
    threads = max(1, min(HASH_THREADS, os.cpu_count() or 1, len(files)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for (rel, p), got in zip(files, pool.map(file_sha256, [p for _, p in files])):
            want = manifest.checksums[rel]
            if got != want:
                raise DataError(
                    f"{p}: contents differ from the sha256 recorded in {manifest_path} "
                    f"({got[:12]}… instead of {want[:12]}…); the file changed after prepare (disk or copy "
                    "corruption?): prepare the data again"
                )


# ------------------------------------------------------------------------------------------------
# Placing a prepared folder: refuse to clobber, swap atomically, clean up after killed runs
# ------------------------------------------------------------------------------------------------


def check_destination(out_dir: Path, files: list[Path], overwrite: bool) -> None:
    resolved = out_dir.resolve()
    for f in files:
        if resolved in f.resolve().parents:
            raise DataError(f"{f}: input lies inside the output folder {out_dir}")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(f"{out_dir}: exists and is not a folder")
        if is_prepared(out_dir):
            if not overwrite:
                raise DataError(f"{out_dir}: already holds prepared data; pass --overwrite to replace it")
        elif any(out_dir.iterdir()):
            raise DataError(f"{out_dir}: folder is not empty and is not prepared data; refusing to replace it")


def cleanup_stale(out_dir: Path) -> None:
    """Remove ``DIR.tmp-<pid>-*`` folders left by runs that were killed (their pid is gone)."""
    for tmp in out_dir.parent.glob(f"{out_dir.name}.tmp-*"):
        try:
            pid = int(tmp.name[len(out_dir.name) + 5 :].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)
    old = sorted(out_dir.parent.glob(f"{out_dir.name}.old-*"))
    if not out_dir.exists() and old and is_complete(old[-1]):
        os.replace(old[-1], out_dir)  # a swap was cut between its two renames: restore the old data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def swap_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and is_prepared(out_dir):
        if not overwrite:
            raise DataError(f"{out_dir}: another prepare finished first; pass --overwrite to replace it")
        old = out_dir.parent / f"{out_dir.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked at the start); fails loudly if something appeared
        os.replace(tmp, out_dir)
