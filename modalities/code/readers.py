"""Source trees → documents: one document per file, its exact text (CRLF, tabs, BOM kept).

Files are picked by suffix (``SOURCE_SUFFIXES``); folders named in ``SKIP_DIRS`` (tests, vendored
packages, caches) and hidden folders are not entered. Empty files (``__init__.py``) give no
document. A file that is not UTF-8 text (or holds NUL bytes) is skipped with a one-line warning
on stderr and counted in ``SKIPPED`` — a source tree usually has a few, and one latin-1 file must
not stop a pretraining run. The document id is the path as the walk found it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

from foundry.errors import DataError
from foundry.readers import Document, Reader

SOURCE_SUFFIXES = (".py", ".pyi", ".c", ".h", ".js", ".rs", ".java", ".go", ".sh")
SKIP_DIRS = ("test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "node_modules", ".git")

#: Files skipped because they are not UTF-8 text: (path, reason). Grows for the process's lifetime.
SKIPPED: list[tuple[str, str]] = []


def read_source(path: Path) -> Iterator[Document]:
    name = Path(path).as_posix()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror})") from None
    text = decode_source(data, name)
    if text:
        yield Document(id=name, text=text, source=name)


def decode_source(data: bytes, name: str) -> str | None:
    """The file's text, byte for byte; None (and a warning) if it is not UTF-8 text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = 1 + data.count(b"\n", 0, exc.start)
        return _skip(name, f"line {line}: not UTF-8 (byte 0x{data[exc.start]:02x})")
    if "\x00" in text:
        line = 1 + text.count("\n", 0, text.index("\x00"))
        return _skip(name, f"line {line}: NUL byte, looks binary")
    return text


def _skip(name: str, reason: str) -> None:
    SKIPPED.append((name, reason))
    print(f"foundry: skipping {name}: {reason}", file=sys.stderr)
    return None


SOURCE_READER = Reader(name="source", suffixes=SOURCE_SUFFIXES, read=read_source, skip_dirs=SKIP_DIRS)
