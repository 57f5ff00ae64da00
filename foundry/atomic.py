"""Writes that a crash or a full disk can never leave half-done.

    atomic_write(path, write)        a temporary file beside ``path``, flushed, renamed over it
    atomic_directory(path)           the same for a directory (checkpoints, model dirs, outputs)
    disk_full_as_error(path)         turns "no space left on device", however a library words it,
                                     into one ``DiskFullError`` line naming the path and the sizes

Files and folders get the permissions the user's umask gives, as ``open``/``mkdir`` would (not
mkstemp's 0600). Kept free of heavy imports so any module (CLI start-up included) can use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import traceback
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import FoundryError

# ------------------------------------------------------------------------------------------------
# Full disks
# ------------------------------------------------------------------------------------------------

_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# How libraries report a full disk without an errno: safetensors ("I/O error: No space left on
# device (os error 28)"), numpy's tofile ("8000 requested and 4096 written"), torch.save's zip
# writer ("unexpected pos 576 vs 534", "file write failed"). A short write to a regular file
# means the filesystem ran out of room (or quota).
_DISK_FULL_TEXT = re.compile(
    r"no space left on device|disk quota exceeded|os error (28|122)\b|\d+ requested and \d+ written"
    r"|unexpected pos \d+ vs \d+|file write failed",
    re.IGNORECASE,
)


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised ``from``) says the disk or quota is full."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        if isinstance(exc, (OSError, RuntimeError)) or type(exc).__name__ == "SafetensorError":
            if _DISK_FULL_TEXT.search(str(exc)):
                return True
        exc, seen = exc.__cause__, seen + 1
    return False


class DiskFullError(FoundryError):
    """A write ran out of disk space (or quota); the message names the path and the sizes.

    The message is built when it is first shown, so the free space it reports is measured after
    the half-written temporary files are gone: what the user has to work with.
    """

    def __init__(self, path: str | Path | None = None, needed: int | None = None, written: int | None = None):
        super().__init__(str(path) if path is not None else "")
        self.path, self.needed, self.written = path, needed, written
        self._message: str | None = None

    def __reduce__(self):  # picklable (worker processes, multiprocessing queues)
        return (DiskFullError, (self.path, self.needed, self.written))

    def __str__(self) -> str:
        if self._message is None:
            self._message = self._compose()
        return self._message

    def _compose(self) -> str:
        parts = []
        if self.needed and self.needed >= (self.written or 0):
            parts.append(f"needed about {_size(self.needed)}")
        elif self.written:
            parts.append(f"needed more than {_size(self.written)}")  # what was written when it filled up
        free = free_bytes(self.path) if self.path is not None else None
        if free is not None:
            parts.append(f"{_size(free)} free on that filesystem")
        where = f"{self.path}: " if self.path is not None else ""
        detail = f" ({', '.join(parts)})" if parts else ""
        return f"{where}no space left on device{detail}"


def free_bytes(path: str | Path) -> int | None:
    """Bytes free to this user on the filesystem holding ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def tree_size(path: str | Path) -> int:
    """Bytes in the files under ``path`` (a file or a folder); 0 when it is gone."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(p):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _size(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{max(1, round(n / 2**10))} KB"


@contextlib.contextmanager
def disk_full_as_error(path: str | Path, *, needed: int | None = None, scratch: str | Path | None = None) -> Iterator[None]:
    """Re-raise a full-disk failure inside the block as ``DiskFullError(path)``.

    ``needed``: the expected size of the output, when the caller knows it. ``scratch``: the temp
    file or folder being filled; its size at the failure is reported when ``needed`` is unknown.
    Cleaning up stays the caller's job (``atomic_write`` and ``atomic_directory`` do it).
    """
    try:
        yield
    except DiskFullError:
        raise
    except BaseException as exc:
        if not is_disk_full(exc):
            raise
        written = tree_size(scratch) if scratch is not None else None
        # The frames of the failed write may hold open handles of temp files that are about to be
        # deleted; their space stays in use (and the reported free space wrong) until the handles
        # close. Clearing the finished frames' locals closes them now.
        traceback.clear_frames(exc.__traceback__)
        raise DiskFullError(path, needed=needed, written=written) from exc


# ------------------------------------------------------------------------------------------------
# Atomic files and directories
# ------------------------------------------------------------------------------------------------


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask can only set)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO], Any], binary: bool = False, *, needed: int | None = None) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, flush it to disk, then rename it
    over ``path``: readers see the old file or the new one, never a half-written one. A full disk
    raises ``DiskFullError`` naming ``path``; the old file is kept, the temporary one removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with disk_full_as_error(path, needed=needed, scratch=tmp):
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would not
            with os.fdopen(fd, "wb" if binary else "w") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text))


@contextlib.contextmanager
def atomic_directory(directory: str | Path, *, needed: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``directory`` to fill; on success it becomes ``directory``.

    The new tree is fsynced before the rename. An existing ``directory`` is moved aside only once
    the new one is complete, then deleted, so it survives any failure. On any exception the
    temporary folder is removed; a full disk becomes ``DiskFullError`` naming ``directory``
    (``needed``: the expected size, for the message). The temporary name starts with a dot and
    ends in ``.tmp-<hex>``: nothing that globs for outputs mistakes it for a finished one.
    """
    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    with disk_full_as_error(directory, needed=needed):
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # mode 0777 & ~umask, like any mkdir (not mkdtemp's 0700)
    old = None
    try:
        with disk_full_as_error(directory, needed=needed, scratch=tmp):
            yield tmp
            fsync_tree(tmp)
            if directory.exists():  # rename() cannot replace a non-empty folder: move it aside
                old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(directory, old)
            os.replace(tmp, directory)
            _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not directory.exists():
            os.replace(old, directory)  # the swap failed half-way: put the previous one back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` and the folders themselves (so the names survive too)."""
    for dirpath, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(dirpath))
