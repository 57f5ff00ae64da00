"""Memory-mapped token shards: the on-disk form of a tokenized corpus.

A *split* folder (``train/``, ``valid/``) holds many shards and one ``index.json``::

    train/
      index.json            written last, atomically: dtype, fingerprint, per-shard counts
      shard-00000/
        tokens.bin          every document's token ids, back to back (uint16, or uint32 for
                            vocabularies over 65,536 ids)
        offsets.npy         int64, n_docs + 1: document i is tokens[offsets[i]:offsets[i+1]]
        ids.txt             the record ids, one per line, UTF-8 (``head ids.txt`` works)
        ids_offsets.npy     int64, n_docs + 1: byte offsets of each id in ids.txt
      shard-00001/ …

``ShardWriter`` streams documents in with bounded memory (only the current shard's offsets are
held) and rolls to a new shard every ``shard_tokens`` tokens. Each shard is written into
``shard-NNNNN.tmp/`` and renamed when complete; the split becomes readable only when
``index.json`` appears. ``ShardedTokens`` reads a split through ``np.memmap`` and implements
``foundry.data.dataset.TokenDataset``; opening it checks every file against the index, so a
truncated or mismatched shard is a ``DataError`` naming the file, never silent garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..atomic import atomic_write_text
from ..errors import DataError

SHARD_FORMAT = "foundry-shards"
SHARD_VERSION = 1
INDEX_NAME = "index.json"
#: default shard size: 2**26 tokens (128 MiB as uint16)
DEFAULT_SHARD_TOKENS = 1 << 26
#: a shard also rolls after this many documents, which bounds the writer's memory (offsets)
DEFAULT_SHARD_DOCS = 1 << 22

TOKENS, OFFSETS, IDS, ID_OFFSETS = "tokens.bin", "offsets.npy", "ids.txt", "ids_offsets.npy"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below ``vocab_size``."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= (1 << 16) else np.dtype(np.uint32)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temp file + fsync + rename: readers see all or nothing."""
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


@dataclass
class _OpenShard:
    """The shard being written: files stream to disk, only the offsets stay in memory."""

    name: str
    tmp_dir: Path
    tokens: Any  # binary file
    ids: Any  # binary file
    offsets: array  # int64, starts with 0
    id_offsets: array
    tokens_sha256: Any = None  # hashlib objects fed with the bytes as they are written (no re-read)
    ids_sha256: Any = None


class ShardWriter:
    """Stream documents into a split folder of shards.

    >>> with ShardWriter(out / "train", vocab_size=33, tokenizer_fingerprint=fp) as w:
    ...     w.add(ids, "P12345")
    >>> ShardedTokens(out / "train")

    Memory is bounded by one shard's offsets (``shard_docs`` × 16 bytes) plus IO buffers; token
    ids go straight to disk. Leaving the ``with`` block by an exception removes what was written.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        vocab_size: int,
        tokenizer_fingerprint: str,
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
        shard_docs: int = DEFAULT_SHARD_DOCS,
        fsync: bool = True,
    ):
        if shard_tokens < 1 or shard_docs < 1:
            raise ValueError("shard_tokens and shard_docs must be at least 1")
        self.directory = Path(directory)
        if self.directory.exists() and any(self.directory.iterdir()):
            raise DataError(f"{self.directory}: refusing to write shards into a folder that is not empty")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.vocab_size = int(vocab_size)
        self.dtype = token_dtype(self.vocab_size)
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.shard_tokens = int(shard_tokens)
        self.shard_docs = int(shard_docs)
        self.fsync = fsync
        self.shards: list[dict[str, int | str]] = []  # finished shards: name, docs, tokens, id_bytes
        #: sha256 of every finished shard file, by path relative to the split ("shard-00000/tokens.bin");
        #: ``prepare`` records them in the manifest, ``open_prepared`` checks them before training
        self.checksums: dict[str, str] = {}
        self.docs = 0
        self.tokens = 0
        self._current: _OpenShard | None = None
        self._closed = False

    # -- public ------------------------------------------------------------------------------

    def add(self, tokens: np.ndarray, record_id: str) -> None:
        """Append one document."""
        self.add_batch([tokens], [record_id])

    def add_batch(self, documents: Sequence[np.ndarray], record_ids: Sequence[str]) -> None:
        """Append documents in order."""
        if len(documents) != len(record_ids):
            raise ValueError("one record id per document is required")
        lengths = np.fromiter((len(d) for d in documents), dtype=np.int64, count=len(documents))
        flat = np.concatenate([np.asarray(d).ravel() for d in documents]) if len(documents) else np.zeros(0, np.int64)
        self.add_flat(flat, lengths, record_ids)

    def add_flat(self, flat: np.ndarray, lengths: np.ndarray, record_ids: Sequence[str]) -> None:
        """Append documents given back to back in ``flat`` with their ``lengths`` (the fast path)."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(lengths) != len(record_ids) or int(lengths.sum()) != len(flat):
            raise ValueError("lengths must give one entry per record id and sum to len(flat)")
        self._check_range(flat, lengths, record_ids)
        ends = np.cumsum(lengths)  # ends[i] = end of document i in flat
        start = 0
        while start < len(lengths):
            shard = self._shard_for(int(lengths[start]))
            base = int(ends[start - 1]) if start else 0
            room_tokens = self.shard_tokens - shard.offsets[-1]
            room_docs = self.shard_docs - (len(shard.offsets) - 1)
            # Documents that still fit; at least one (a shard holds at least one document, so one
            # longer than shard_tokens gets a shard of its own).
            stop = int(np.searchsorted(ends, base + room_tokens, side="right"))
            stop = max(start + 1, min(stop, start + room_docs, len(lengths)))
            self._write(shard, flat[base : int(ends[stop - 1])], lengths[start:stop], record_ids[start:stop])
            start = stop

    def _check_range(self, flat: np.ndarray, lengths: np.ndarray, record_ids: Sequence[str]) -> None:
        if not len(flat):
            return
        if int(flat.min()) >= 0 and int(flat.max()) < self.vocab_size:
            return
        doc = np.repeat(np.arange(len(lengths)), lengths)
        bad = int(doc[np.argmax((flat < 0) | (flat >= self.vocab_size))])
        raise DataError(
            f"record {record_ids[bad]!r}: token id out of range for vocab_size {self.vocab_size} "
            f"(document has ids from {int(flat[doc == bad].min())} to {int(flat[doc == bad].max())})"
        )

    def close(self) -> "SplitInfo":
        """Finish the last shard and write ``index.json`` (the split is readable from then on)."""
        if self._closed:
            raise RuntimeError("ShardWriter is already closed")
        self._finish_shard()
        self._closed = True
        index = {
            "format": SHARD_FORMAT,
            "version": SHARD_VERSION,
            "dtype": self.dtype.name,
            "vocab_size": self.vocab_size,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "docs": self.docs,
            "tokens": self.tokens,
            "shards": self.shards,
        }
        write_json_atomic(self.directory / INDEX_NAME, index)
        return SplitInfo(docs=self.docs, tokens=self.tokens, shards=len(self.shards), checksums=dict(self.checksums))

    def abort(self) -> None:
        """Drop everything written by this writer (the folder itself included)."""
        self._closed = True
        if self._current is not None:
            for f in (self._current.tokens, self._current.ids):
                try:
                    f.close()
                except OSError:
                    pass
            self._current = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()

    @property
    def buffered_docs(self) -> int:
        """Documents of the current shard whose offsets are held in memory (tests use this)."""
        return 0 if self._current is None else len(self._current.offsets) - 1

    # -- internals ---------------------------------------------------------------------------

    def _shard_for(self, next_len: int) -> _OpenShard:
        cur = self._current
        if cur is not None:
            n_docs = len(cur.offsets) - 1
            full = n_docs >= self.shard_docs or (n_docs > 0 and cur.offsets[-1] + next_len > self.shard_tokens)
            if full:
                self._finish_shard()
                cur = None
        if cur is None:
            name = _shard_name(len(self.shards))
            tmp = self.directory / f"{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            cur = _OpenShard(
                name=name,
                tmp_dir=tmp,
                tokens=open(tmp / TOKENS, "wb", buffering=1 << 20),
                ids=open(tmp / IDS, "wb", buffering=1 << 16),
                offsets=array("q", [0]),
                id_offsets=array("q", [0]),
                tokens_sha256=hashlib.sha256(),
                ids_sha256=hashlib.sha256(),
            )
            self._current = cur
        return cur

    def _write(self, shard: _OpenShard, flat: np.ndarray, lengths: np.ndarray, record_ids: Sequence[str]) -> None:
        if len(flat):
            data = flat.astype(self.dtype, copy=False).tobytes()
            shard.tokens.write(data)
            shard.tokens_sha256.update(data)
        pos = shard.offsets[-1]
        shard.offsets.extend((np.cumsum(lengths) + pos).tolist())
        id_pos = shard.id_offsets[-1]
        chunks = []
        for rid in record_ids:
            if "\n" in rid or "\r" in rid:
                raise DataError(f"record id {rid!r}: ids must not contain line breaks")
            b = rid.encode("utf-8") + b"\n"
            chunks.append(b)
            id_pos += len(b)
            shard.id_offsets.append(id_pos)
        data = b"".join(chunks)
        shard.ids.write(data)
        shard.ids_sha256.update(data)
        self.docs += len(lengths)
        self.tokens += len(flat)

    def _finish_shard(self) -> None:
        cur = self._current
        if cur is None:
            return
        self._current = None
        for f in (cur.tokens, cur.ids):
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
            f.close()
        _save_npy(cur.tmp_dir / OFFSETS, np.frombuffer(cur.offsets, dtype=np.int64), self.fsync)
        _save_npy(cur.tmp_dir / ID_OFFSETS, np.frombuffer(cur.id_offsets, dtype=np.int64), self.fsync)
        self.checksums.update({
            f"{cur.name}/{TOKENS}": cur.tokens_sha256.hexdigest(), f"{cur.name}/{IDS}": cur.ids_sha256.hexdigest(),
            f"{cur.name}/{OFFSETS}": file_sha256(cur.tmp_dir / OFFSETS),  # small: hashed from disk
            f"{cur.name}/{ID_OFFSETS}": file_sha256(cur.tmp_dir / ID_OFFSETS),
        })
        final = self.directory / cur.name
        os.replace(cur.tmp_dir, final)
        if self.fsync:
            _fsync_dir(self.directory)
        self.shards.append(
            {"name": cur.name, "docs": len(cur.offsets) - 1, "tokens": int(cur.offsets[-1]),
             "id_bytes": int(cur.id_offsets[-1])}
        )


def _save_npy(path: Path, arr: np.ndarray, fsync: bool) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    """sha256 of a file, streamed in 4 MiB blocks (hashlib releases the GIL: threads run in parallel)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class SplitInfo:
    docs: int
    tokens: int
    shards: int
    checksums: dict[str, str] = field(default_factory=dict)  # sha256 by path relative to the split


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


class _Shard:
    """One shard, validated on open; token and id files are mapped lazily on first access."""

    def __init__(self, directory: Path, entry: dict, dtype: np.dtype, verify: bool):
        self.directory = directory
        self.docs, self.n_tokens, self.id_bytes = int(entry["docs"]), int(entry["tokens"]), int(entry["id_bytes"])
        self.dtype = dtype
        if not directory.is_dir():
            raise DataError(f"{directory}: shard listed in {INDEX_NAME} is missing")
        self._check_size(directory / TOKENS, self.n_tokens * dtype.itemsize, f"{self.n_tokens} tokens of {dtype.name}")
        self._check_size(directory / IDS, self.id_bytes, "record ids")
        self.offsets = self._load_offsets(directory / OFFSETS, self.n_tokens, verify)
        self.id_offsets = self._load_offsets(directory / ID_OFFSETS, self.id_bytes, verify)
        self._tokens: np.ndarray | None = None
        self._ids: np.ndarray | None = None

    @staticmethod
    def _check_size(path: Path, expected: int, what: str) -> None:
        if not path.is_file():
            raise DataError(f"{path}: file is missing")
        size = path.stat().st_size
        if size != expected:
            raise DataError(
                f"{path}: {size} bytes on disk, expected {expected} ({what}); the shard is truncated or corrupt"
            )

    def _load_offsets(self, path: Path, end: int, verify: bool) -> np.ndarray:
        if not path.is_file():
            raise DataError(f"{path}: file is missing")
        try:
            offsets = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path}: unreadable offsets ({exc}); the shard is truncated or corrupt") from None
        if offsets.dtype != np.int64 or offsets.shape != (self.docs + 1,):
            raise DataError(
                f"{path}: expected int64 offsets of shape ({self.docs + 1},), found {offsets.dtype} {offsets.shape}"
            )
        if offsets[0] != 0 or offsets[-1] != end:
            raise DataError(f"{path}: offsets run from {offsets[0]} to {offsets[-1]}, expected 0 to {end}")
        if verify and self.docs and np.any(np.diff(offsets) < 0):
            bad = int(np.argmax(np.diff(offsets) < 0))
            raise DataError(f"{path}: offsets decrease at document {bad} ({offsets[bad]} > {offsets[bad + 1]})")
        return offsets

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            if self.n_tokens == 0:
                self._tokens = np.zeros(0, dtype=self.dtype)
            else:
                self._tokens = np.memmap(self.directory / TOKENS, dtype=self.dtype, mode="r", shape=(self.n_tokens,))
        return self._tokens

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            if self.id_bytes == 0:
                self._ids = np.zeros(0, dtype=np.uint8)
            else:
                self._ids = np.memmap(self.directory / IDS, dtype=np.uint8, mode="r", shape=(self.id_bytes,))
        return self._ids

    def record_id(self, local: int) -> str:
        a, b = int(self.id_offsets[local]), int(self.id_offsets[local + 1])
        return bytes(self.ids[a : b - 1]).decode("utf-8")


def read_index(directory: str | Path) -> dict:
    """Load and check a split's ``index.json`` (DataError if missing or malformed)."""
    path = Path(directory) / INDEX_NAME
    if not path.is_file():
        raise DataError(f"{path}: missing; the shards in {Path(directory)} were never completed (writer not closed)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != SHARD_FORMAT:
        found = index.get("format") if isinstance(index, dict) else None
        raise DataError(f"{path}: not a foundry shard index (format {found!r})")
    if index.get("version") != SHARD_VERSION:
        raise DataError(
            f"{path}: shard format version {index.get('version')!r}, this foundry reads version {SHARD_VERSION}"
        )
    for key in ("dtype", "tokenizer_fingerprint", "docs", "tokens", "shards"):
        if key not in index:
            raise DataError(f"{path}: key {key!r} is missing")
    return index


class ShardedTokens:
    """A split folder of shards as a ``TokenDataset`` (memory-mapped, nothing loaded up front).

    Opening checks, for every shard: the files exist, ``tokens.bin`` and ``ids.txt`` have the byte
    sizes the index records, the offsets start at 0, end at the token count and never decrease,
    and the counts add up to the index totals. ``verify=False`` skips only the monotonicity scan.
    Pickling sends the folder path, not the data (safe for DataLoader workers).
    """

    def __init__(self, directory: str | Path, *, verify: bool = True):
        self.directory = Path(directory)
        self._verify = verify
        index = read_index(self.directory)
        self.index = index
        self.tokenizer_fingerprint: str = index["tokenizer_fingerprint"]
        try:
            self.dtype = np.dtype(index["dtype"])
        except TypeError:
            raise DataError(f"{self.directory / INDEX_NAME}: unknown dtype {index['dtype']!r}") from None
        if self.dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise DataError(f"{self.directory / INDEX_NAME}: dtype {self.dtype.name} is not uint16 or uint32")
        self._check_no_strays(index)
        self._shards = [_Shard(self.directory / e["name"], e, self.dtype, verify) for e in index["shards"]]
        docs = sum(s.docs for s in self._shards)
        tokens = sum(s.n_tokens for s in self._shards)
        if docs != index["docs"] or tokens != index["tokens"]:
            raise DataError(
                f"{self.directory / INDEX_NAME}: totals say {index['docs']} docs / {index['tokens']} tokens, "
                f"the shards hold {docs} / {tokens}"
            )
        # starts[k] = global index of shard k's first document
        self._starts = np.zeros(len(self._shards) + 1, dtype=np.int64)
        np.cumsum([s.docs for s in self._shards], out=self._starts[1:])
        self._lengths: np.ndarray | None = None

    def _check_no_strays(self, index: dict) -> None:
        listed = {e["name"] for e in index["shards"]}
        for child in self.directory.iterdir():
            if child.is_dir() and child.name.startswith("shard-") and child.name not in listed:
                raise DataError(
                    f"{child}: shard folder not listed in {self.directory / INDEX_NAME}; "
                    "the folder mixes shards from different writes"
                )

    # -- TokenDataset ------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths is None:
            parts = [np.diff(s.offsets) for s in self._shards]
            self._lengths = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return self._lengths

    def __getitem__(self, index: int) -> np.ndarray:
        shard, local = self._locate(index)
        a, b = int(shard.offsets[local]), int(shard.offsets[local + 1])
        return np.array(shard.tokens[a:b], dtype=np.int32)

    def record_id(self, index: int) -> str:
        shard, local = self._locate(index)
        return shard.record_id(local)

    # -- extras ------------------------------------------------------------------------------

    @property
    def num_tokens(self) -> int:
        return int(self.index["tokens"])

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def window(self, index: int, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start+length)`` of one document, reading only that window (crops)."""
        shard, local = self._locate(index)
        a, b = int(shard.offsets[local]), int(shard.offsets[local + 1])
        lo = min(a + max(start, 0), b)
        return np.array(shard.tokens[lo : min(lo + max(length, 0), b)], dtype=np.int32)

    @property
    def vocab_size(self) -> int | None:
        """The vocabulary the writer checked every id against (ids are below it), from index.json."""
        value = self.index.get("vocab_size")
        return int(value) if isinstance(value, int) else None

    def files(self) -> list[tuple[str, Path]]:
        """Every shard file as (path relative to the split, absolute path), in shard order."""
        return [(f"{s.directory.name}/{name}", s.directory / name)
                for s in self._shards for name in (TOKENS, OFFSETS, IDS, ID_OFFSETS)]

    def find_id_at_least(self, bound: int) -> tuple[Path, str, int] | None:
        """The first token id ``>= bound`` as (tokens.bin path, record id, the id), or None.

        Reads every token once (numpy max over the memory map, about 0.1 s per GB)."""
        for shard in self._shards:
            if shard.n_tokens == 0 or int(shard.tokens.max()) < bound:
                continue
            position = int(np.argmax(np.asarray(shard.tokens) >= bound))
            local = int(np.searchsorted(shard.offsets, position, side="right")) - 1
            return shard.directory / TOKENS, shard.record_id(local), int(shard.tokens[position])
        return None

    def iter_record_ids(self) -> Iterator[str]:
        """Every record id in order, streamed shard by shard (for cluster maps)."""
        for shard in self._shards:
            data = bytes(shard.ids)
            if data:
                yield from data[:-1].decode("utf-8").split("\n")

    def _locate(self, index: int) -> tuple[_Shard, int]:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"document index {index} out of range for {n} documents")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._shards[k], i - int(self._starts[k])

    def __getstate__(self) -> dict:
        return {"directory": str(self.directory), "verify": False}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"], verify=state["verify"])

    def __repr__(self) -> str:
        where = str(self.directory)
        return f"ShardedTokens({where!r}, docs={len(self)}, tokens={self.num_tokens}, shards={self.num_shards})"
