"""Tokenize a corpus once into memory-mapped shards: ``foundry <modality> prepare INPUT... -o DIR``.

    from foundry.data.prepare import prepare, open_prepared
    manifest = prepare([Path("uniref50.fasta.gz")], readers, tokenizer, Path("data/uniref50"), workers=8)
    data = open_prepared("data/uniref50", expected_fingerprint=tokenizer.fingerprint())
    data.train[0], data.valid.record_id(3)

Output layout (see ``foundry.data.shards`` for a split folder)::

    DIR/manifest.json   written last, atomically: sources (size, mtime, sha256), tokenizer kind and
                        fingerprint, vocab size, dtype, counts per split, the settings used, the
                        sha256 of every shard file (checked when the data is opened for training)
    DIR/tokenizer/      the tokenizer, saved with ``Tokenizer.save``
    DIR/train/  DIR/valid/

How it runs: the main process reads the files in order (``foundry.readers.iter_files``) and cuts
the records into chunks; ``workers`` processes tokenize chunks (at most ``2 × workers`` chunks in
flight, so memory stays flat whatever the corpus size); results come back in submission order and
stream into one ``ShardWriter`` per split. The output is therefore identical for any number of
workers. A record goes to ``valid`` when ``blake2b-64(record id) < threshold``: the same record
always lands in the same split, whatever the order or the worker count.

Everything is written into ``DIR.tmp-<pid>-<rand>/`` next to ``DIR`` and renamed into place only
after the manifest is written, so an interrupted run never leaves something that reads as
complete; with ``overwrite=True`` the old data stays in place until the new data is complete.
"""

from __future__ import annotations

import hashlib
import heapq
import multiprocessing
import os
import pickle
import secrets
import shutil
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..atomic import disk_full_as_error
from ..errors import DataError, FoundryError
from ..readers import Reader, iter_files
from .manifest import (  # noqa: F401 - open_prepared & co. are re-exported: one import for callers
    MANIFEST_NAME, SPLITS, TOKENIZER_DIR, Manifest, PreparedData, SourceFile, SplitCounts, check_destination,
    cleanup_stale, is_prepared, open_prepared, swap_into_place,
)
from .shards import DEFAULT_SHARD_DOCS, DEFAULT_SHARD_TOKENS, ShardWriter, token_dtype, write_json_atomic

#: a chunk (the unit of work sent to a worker) closes at this many documents or characters
CHUNK_DOCS = 2048
CHUNK_CHARS = 1 << 21
#: chunks a file-reading worker may have waiting for the writer
QUEUE_CHUNKS = 2


# ------------------------------------------------------------------------------------------------
# Splitting and tokenizing (runs in the workers)
# ------------------------------------------------------------------------------------------------


def split_hash(record_id: str) -> int:
    """64-bit hash of a record id; a record is in ``valid`` when this is below the threshold."""
    return int.from_bytes(hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest(), "big")


@dataclass
class _Chunk:
    """One tokenized chunk of consecutive records from one file."""

    file_index: int
    ids: list[str]
    flat: np.ndarray  # token ids back to back, in the shard dtype
    lengths: np.ndarray  # int64 tokens per record
    valid: np.ndarray  # bool, record goes to the valid split
    chars: np.ndarray  # int64 characters per record (residues for proteins)


class _Encoder:
    """Tokenizes chunks and decides each record's split (runs in the workers)."""

    def __init__(self, tokenizer, add_special_tokens: bool, threshold: int, dtype: str):
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        self.threshold = threshold
        self.dtype = np.dtype(dtype)

    def settings(self) -> tuple:
        return self.add_special_tokens, self.threshold, self.dtype.name

    def __call__(self, file_index: int, source: str, ids: list[str], texts: list[str]) -> _Chunk:
        try:
            encoded = self.tokenizer.encode_batch(texts, add_special_tokens=self.add_special_tokens)
        except Exception:  # noqa: BLE001 - find the record to blame, then re-raise with its name
            encoded = [self._encode_one(source, rid, text) for rid, text in zip(ids, texts)]
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        flat = np.concatenate(encoded) if encoded else np.zeros(0, np.int64)
        if len(flat) and (flat.min() < 0 or flat.max() > np.iinfo(self.dtype).max):
            raise DataError(f"{source}: tokenizer produced ids outside {self.dtype.name}")
        valid = np.fromiter((split_hash(r) < self.threshold for r in ids), dtype=bool, count=len(ids))
        chars = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        return _Chunk(file_index, ids, flat.astype(self.dtype, copy=False), lengths, valid, chars)

    def _encode_one(self, source: str, rid: str, text: str) -> np.ndarray:
        try:
            return self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens)
        except FoundryError as exc:
            raise DataError(f"{source}: record {rid!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{source}: record {rid!r}: cannot tokenize ({type(exc).__name__}: {exc})") from None


def _make_encoder(payload: tuple, fingerprint: str, settings: tuple) -> _Encoder:
    # Ctrl-C goes to the whole process group: workers ignore it, the parent stops them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if payload[0] == "pickle":
        tokenizer = pickle.loads(payload[1])
    else:
        from ..plugins import load_tokenizer

        tokenizer = load_tokenizer(payload[1], payload[2])
    if tokenizer.fingerprint() != fingerprint:
        raise DataError(f"tokenizer restored in a worker has fingerprint {tokenizer.fingerprint()}, not {fingerprint}")
    return _Encoder(tokenizer, *settings)


_WORKER_ENCODER: _Encoder | None = None


def _pool_init(payload: tuple, fingerprint: str, settings: tuple) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = _make_encoder(payload, fingerprint, settings)


def _pool_encode(file_index: int, source: str, ids: list[str], texts: list[str]) -> _Chunk:
    assert _WORKER_ENCODER is not None
    return _WORKER_ENCODER(file_index, source, ids, texts)


def _file_worker(queue, assigned: list[tuple[int, Path, Reader]], payload: tuple, fingerprint: str, settings: tuple):
    """Read and tokenize whole files, in order, into ``queue`` (bounded: blocks when the writer lags)."""
    try:
        encoder = _make_encoder(payload, fingerprint, settings)
        for fi, path, reader in assigned:
            for ids, texts in _file_chunks(path, reader):
                queue.put(("chunk", encoder(fi, str(path), ids, texts)))
            queue.put(("eof", fi))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        if not isinstance(exc, FoundryError):
            exc = RuntimeError(f"prepare worker failed: {type(exc).__name__}: {exc}")
        queue.put(("error", exc))


# ------------------------------------------------------------------------------------------------
# prepare
# ------------------------------------------------------------------------------------------------


def prepare(
    inputs: Sequence[str | Path],
    readers: Sequence[Reader],
    tokenizer,
    out_dir: str | Path,
    workers: int = 1,
    valid_fraction: float | int = 0.01,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = True,
    *,
    overwrite: bool = False,
    add_special_tokens: bool = True,
    hash_sources: bool = True,
    shard_docs: int = DEFAULT_SHARD_DOCS,
    start_method: str = "spawn",
    fsync: bool = True,
) -> Manifest:
    """Tokenize ``inputs`` into ``out_dir`` (train/valid shards + tokenizer + manifest).

    ``valid_fraction``: a float in [0, 1) is the fraction of records (by id hash) held out; an
    int ≥ 1 is an exact count of records (the ones with the smallest id hashes; this costs one
    extra pass that reads the ids). ``workers`` > 1 tokenizes in that many processes; the output
    does not depend on it. Refuses to replace a complete ``out_dir`` unless ``overwrite``.
    """
    out_dir = Path(out_dir).absolute()
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise DataError("prepare: no input files or folders given")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    _check_valid_fraction(valid_fraction)
    files = list(iter_files(inputs, readers))  # raises DataError for missing paths / unknown types
    check_destination(out_dir, [f for f, _ in files], overwrite)
    cleanup_stale(out_dir)

    tmp = out_dir.parent / f"{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    with disk_full_as_error(out_dir):
        tmp.mkdir(parents=True)
    try:
        with disk_full_as_error(out_dir, scratch=tmp):
            manifest = _prepare_into(
                tmp, files, tokenizer, workers, valid_fraction, shard_tokens, shard_docs, progress,
                add_special_tokens, hash_sources, start_method, fsync, dest=out_dir,
            )
            swap_into_place(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _prepare_into(
    tmp: Path, files: list[tuple[Path, Reader]], tokenizer, workers: int, valid_fraction: float | int,
    shard_tokens: int, shard_docs: int, progress: bool, add_special_tokens: bool, hash_sources: bool,
    start_method: str, fsync: bool, *, dest: Path,
) -> Manifest:
    fingerprint = tokenizer.fingerprint()
    vocab_size = int(tokenizer.vocab_size)
    dtype = token_dtype(vocab_size)
    tokenizer.save(tmp / TOKENIZER_DIR)
    stats_before = [_stat(f) for f, _ in files]
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="foundry-hash") if hash_sources else None
    stop_hashing = threading.Event()  # lets an interrupted run exit without hashing to the end
    hashes = [hasher.submit(_sha256, f, stop_hashing) for f, _ in files] if hasher else []
    try:
        if isinstance(valid_fraction, int) and valid_fraction > 0:
            threshold = _count_threshold(files, valid_fraction)
            valid_rule = {"valid_count": valid_fraction}
        else:
            threshold = int(float(valid_fraction) * 2**64)
            valid_rule = {"valid_fraction": float(valid_fraction)}
        encoder = _Encoder(tokenizer, add_special_tokens, threshold, dtype.name)
        writers = {
            name: ShardWriter(tmp / name, vocab_size=vocab_size, tokenizer_fingerprint=fingerprint,
                              shard_tokens=shard_tokens, shard_docs=shard_docs, fsync=fsync)
            for name in SPLITS
        }
        per_file = [[0, 0] for _ in files]  # docs, tokens
        chars = {name: 0 for name in SPLITS}
        bar = _Progress(progress, len(files))
        stream = _run(files, encoder, workers, tokenizer, tmp / TOKENIZER_DIR, start_method)
        try:
            # translated here, before abort() deletes the shards, so the message can say how much was written
            with disk_full_as_error(dest, scratch=tmp):
                for chunk in stream:
                    _write_chunk(writers, chunk)
                    chars["valid"] += int(chunk.chars[chunk.valid].sum())
                    chars["train"] += int(chunk.chars[~chunk.valid].sum())
                    n_tokens = int(chunk.lengths.sum())
                    per_file[chunk.file_index][0] += len(chunk.ids)
                    per_file[chunk.file_index][1] += n_tokens
                    bar.update(chunk.file_index, len(chunk.ids), n_tokens, int(chunk.chars.sum()))
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        finally:
            stream.close()  # stops the worker pool now, not when the traceback is collected
            bar.close()
        counts, checksums = {}, {}
        for name, w in writers.items():
            info = w.close()
            counts[name] = SplitCounts(docs=info.docs, tokens=info.tokens, chars=chars[name], shards=info.shards)
            checksums.update({f"{name}/{rel}": digest for rel, digest in info.checksums.items()})  # checked before training
        _check_counts(files, counts)
        sources = []
        for i, ((f, reader), before) in enumerate(zip(files, stats_before)):
            if _stat(f) != before:
                raise DataError(f"{f}: the file changed while it was being prepared; run prepare again")
            sources.append(SourceFile(path=str(f.absolute()), size=before[0], mtime=before[1] / 1e9,
                                      sha256=hashes[i].result() if hasher else None, reader=reader.name,
                                      docs=per_file[i][0], tokens=per_file[i][1]))
    finally:
        if hasher:
            stop_hashing.set()
            hasher.shutdown(wait=True, cancel_futures=True)
    manifest = Manifest(
        tokenizer_kind=tokenizer.kind, tokenizer_fingerprint=fingerprint, vocab_size=vocab_size, dtype=dtype.name,
        sources=sources, splits=counts,
        settings={**valid_rule, "split_rule": "blake2b-64(record id, big-endian) < valid_threshold",
                  "valid_threshold": threshold, "shard_tokens": shard_tokens, "shard_docs": shard_docs,
                  "workers": workers, "add_special_tokens": add_special_tokens},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), foundry_version=_foundry_version(),
        tokenizer_dir=TOKENIZER_DIR, checksums=checksums,
    )
    write_json_atomic(tmp / MANIFEST_NAME, manifest.to_dict())  # last: the folder is complete now
    return manifest


def _write_chunk(writers: dict[str, ShardWriter], chunk: _Chunk) -> None:
    flat, lengths, valid, ids = chunk.flat, chunk.lengths, chunk.valid, chunk.ids
    if not valid.any():
        writers["train"].add_flat(flat, lengths, ids)
        return
    token_valid = np.repeat(valid, lengths)
    for name, mask, tmask in (("train", ~valid, ~token_valid), ("valid", valid, token_valid)):
        if mask.any():
            writers[name].add_flat(flat[tmask], lengths[mask], [r for r, m in zip(ids, mask) if m])


def _check_counts(files, counts: dict[str, SplitCounts]) -> None:
    total = counts["train"].docs + counts["valid"].docs
    if total == 0:
        names = ", ".join(str(f) for f, _ in files[:3]) + (" …" if len(files) > 3 else "")
        raise DataError(f"no documents found in the inputs ({names})")
    if counts["train"].docs == 0:
        raise DataError(f"all {total} documents landed in the validation split; lower valid_fraction")


# -- reading and dispatch ------------------------------------------------------------------------


def _file_chunks(path: Path, reader: Reader) -> Iterator[tuple[list[str], list[str]]]:
    """(ids, texts) of consecutive records of one file, cut at CHUNK_DOCS records or CHUNK_CHARS."""
    ids: list[str] = []
    texts: list[str] = []
    size = 0
    for doc in _read(path, reader):
        ids.append(doc.id)
        texts.append(doc.text)
        size += len(doc.text)
        if len(ids) >= CHUNK_DOCS or size >= CHUNK_CHARS:
            yield ids, texts
            ids, texts, size = [], [], 0
    if ids:
        yield ids, texts


def _read(path: Path, reader: Reader):
    """The reader's documents; low-level failures (corrupt gzip, vanished file) name the file."""
    try:
        yield from reader.read(path)
    except FoundryError:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, EOFError, zlib.error, decoding, reader bugs
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def _run(files, encoder: _Encoder, workers: int, tokenizer, tokenizer_dir: Path, start_method: str) -> Iterator[_Chunk]:
    """Tokenized chunks in input order, whatever the number of workers.

    - 1 worker: read and tokenize here.
    - several files (and picklable readers): each worker reads and tokenizes whole files
      (file i goes to worker i % n) into its own bounded queue; the parent drains the queues in
      file order, so reading, parsing and tokenizing all run in parallel.
    - one file: the parent reads, workers tokenize chunks (at most 2 × workers in flight).
    """
    if workers == 1:
        for fi, (path, reader) in enumerate(files):
            for ids, texts in _file_chunks(path, reader):
                yield encoder(fi, str(path), ids, texts)
        return
    payload = _tokenizer_payload(tokenizer, tokenizer_dir)
    args = (payload, tokenizer.fingerprint(), encoder.settings())
    ctx = multiprocessing.get_context(start_method)
    if len(files) > 1 and _picklable([r for _, r in files]):
        yield from _run_files(files, min(workers, len(files)), ctx, args)
    else:
        yield from _run_chunks(files, workers, ctx, args)


def _run_files(files, n: int, ctx, args: tuple) -> Iterator[_Chunk]:
    queues = [ctx.Queue(maxsize=QUEUE_CHUNKS) for _ in range(n)]
    procs = []
    try:
        for w in range(n):
            assigned = [(fi, path, reader) for fi, (path, reader) in enumerate(files) if fi % n == w]
            proc = ctx.Process(target=_file_worker, args=(queues[w], assigned, *args), daemon=True)
            proc.start()
            procs.append(proc)
        for fi in range(len(files)):
            while True:
                kind, item = _get(queues[fi % n], procs[fi % n])
                if kind == "chunk":
                    yield item
                elif kind == "eof":
                    break
                else:
                    raise item
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
        for q in queues:
            q.cancel_join_thread()
            q.close()


def _get(queue, proc):
    import queue as queue_module

    while True:
        try:
            return queue.get(timeout=1.0)
        except queue_module.Empty:
            if not proc.is_alive():
                raise DataError(f"a prepare worker process died (exit code {proc.exitcode}); "
                                "nothing was written, run prepare again") from None


def _run_chunks(files, workers: int, ctx, args: tuple) -> Iterator[_Chunk]:
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pool_init, initargs=args)
    pending: deque[Future] = deque()
    try:
        for fi, (path, reader) in enumerate(files):
            for ids, texts in _file_chunks(path, reader):
                pending.append(pool.submit(_pool_encode, fi, str(path), ids, texts))
                if len(pending) >= 2 * workers:
                    yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _result(fut: Future) -> _Chunk:
    from concurrent.futures.process import BrokenProcessPool

    try:
        return fut.result()
    except BrokenProcessPool as exc:
        raise DataError(f"a prepare worker process died ({exc}); nothing was written, run prepare again") from None


def _picklable(obj) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001
        return False
    return True


def _tokenizer_payload(tokenizer, tokenizer_dir: Path) -> tuple:
    try:
        return ("pickle", pickle.dumps(tokenizer))
    except Exception:  # noqa: BLE001 - not picklable: workers load it from the saved folder
        return ("load", tokenizer.kind, str(tokenizer_dir))


def _count_threshold(files, count: int) -> int:
    """Threshold that puts exactly the ``count`` records with the smallest id hashes in valid."""
    heap: list[int] = []  # max-heap (negated) of the smallest hashes seen
    total = 0
    for path, reader in files:
        for doc in _read(path, reader):
            total += 1
            h = split_hash(doc.id)
            if len(heap) < count:
                heapq.heappush(heap, -h)
            elif h < -heap[0]:
                heapq.heapreplace(heap, -h)
    if total <= count:
        raise DataError(f"valid count {count} leaves no training data: the inputs hold {total} records")
    return -heap[0] + 1


# -- files -----------------------------------------------------------------------------------------


def _check_valid_fraction(value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"valid_fraction must be a float in [0, 1) or an int count, got {value!r}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"valid count must be ≥ 0, got {value}")
    if isinstance(value, float) and not 0.0 <= value < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {value}")


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    return st.st_size, st.st_mtime_ns


def _sha256(path: Path, stop: threading.Event) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            if stop.is_set():
                return ""
            h.update(block)
    return h.hexdigest()


def _foundry_version() -> str:
    try:
        from importlib.metadata import version

        return version("foundry")
    except Exception:  # noqa: BLE001
        return ""


class _Progress:
    """tqdm bar over documents with tokens and chars/s (residues/s for proteins) alongside."""

    def __init__(self, enabled: bool, n_files: int):
        self.bar = None
        self.n_files = n_files
        self.tokens = self.chars = 0
        self.start = time.perf_counter()
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(unit=" docs", unit_scale=True, desc="prepare", file=sys.stderr, mininterval=0.5)

    def update(self, file_index: int, docs: int, tokens: int, chars: int) -> None:
        self.tokens += tokens
        self.chars += chars
        if self.bar is not None:
            self.bar.update(docs)
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(
                f"file {file_index + 1}/{self.n_files}, {_si(self.tokens)} tokens, {_si(self.chars / elapsed)} chars/s",
                refresh=False,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _si(x: float) -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(x) < 1000:
            return f"{x:.1f}{unit}" if unit else f"{x:.0f}"
        x /= 1000
    return f"{x:.1f}P"


# -- CLI entry ----------------------------------------------------------------------------------
