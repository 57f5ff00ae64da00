"""Run directories: one writer at a time, a fresh start that may reuse a folder holding no
checkpoint, and no leftovers from writes a crash interrupted.

A run directory is locked (``OUT/.lock``, ``fcntl.flock``) for as long as a run writes to it: a
second run on the same ``--out`` fails at once instead of interleaving metrics and overwriting
checkpoints. The lock dies with the process, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

from .checkpoint import CHECKPOINTS, LATEST
from .errors import FoundryError

LOCK = ".lock"
#: what a run writes before its first checkpoint; a folder holding only these may be reused
RUN_FILES = {"config.yaml", "metrics.jsonl", "logs", "best", CHECKPOINTS}


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINTS / LATEST).is_file()


def check_fresh(out: Path) -> None:
    """Refuse a fresh run in ``out`` unless it is empty, missing, or a run killed before its first
    checkpoint (whose files ``clear_unfinished`` then removes, under the run's lock)."""
    out = Path(out)
    names = {p.name for p in out.iterdir()} - {LOCK} if out.is_dir() else set()
    if names and (has_checkpoint(out) or not names <= RUN_FILES or "config.yaml" not in names):
        raise FoundryError(f"{out}: already holds files; continue it with --resume {out} or choose another --out")


def clear_unfinished(out: Path) -> None:
    """Remove what a run killed before its first checkpoint left (call with the lock held)."""
    check_fresh(out)
    for path in Path(out).iterdir():
        if path.name != LOCK:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove temporary files and folders of writes a crash interrupted (``.step-*.tmp-*``,
    ``.final.tmp-*``, ``.*.old-*`` of an interrupted swap); returns what was removed."""
    removed = []
    for root in (Path(run_dir), Path(run_dir) / CHECKPOINTS):
        if not root.is_dir():
            continue
        for path in [*root.glob(".*.tmp*"), *root.glob(".*.old-*")]:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def locked(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold the run directory's exclusive lock (main process only: ``enabled``)."""
    if not enabled:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise FoundryError(f"{run_dir}: another foundry run is writing to this directory"
                           f"{f' (pid {holder})' if holder else ''}; wait for it or choose another --out") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def checkpoint_to_resume(run_dir: Path, resume: Path | None, main_process: bool) -> Path | None:
    """The checkpoint a run continues from, or None for a fresh start (checked: ``run_dir`` may be
    used). A run killed before its first checkpoint has nothing to resume: it starts over."""
    from .checkpoint import latest_checkpoint

    if resume and has_checkpoint(run_dir):
        return latest_checkpoint(run_dir)
    if main_process:
        check_fresh(run_dir)
        if resume:
            print(f"foundry: {run_dir} has no checkpoint yet: starting the run over from step 0", file=sys.stderr)
    return None


@contextlib.contextmanager
def writing(run_dir: Path, fresh: bool, main_process: bool) -> Iterator[None]:
    """Hold the run directory while a run writes to it: the lock, an unfinished fresh folder
    cleared (or a resumed one's leftovers cleaned), and on failure before the first checkpoint,
    nothing left behind that looks like a run."""
    with locked(run_dir, enabled=main_process):
        try:
            if main_process:
                clear_unfinished(run_dir) if fresh else clean_leftovers(run_dir)
            yield
        except BaseException:
            if main_process and fresh and not has_checkpoint(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
