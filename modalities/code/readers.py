"""Source trees → documents: one document per file, its exact text (CRLF, tabs, BOM kept).

Files are picked by suffix (``SOURCE_SUFFIXES``); folders named in ``SKIP_DIRS`` (tests, vendored
packages, caches) and hidden folders are not entered. Empty files (``__init__.py``) give no
document. A file that is not UTF-8 text (or holds NUL bytes) raises ``NotTextError`` naming
file, line and byte offset, as in every other modality; a source tree with a few latin-1 files
is read with ``--on-decode-error skip`` (``data.on_decode_error: skip``), which leaves them out
with a warning and a count. The document id is the path as the walk found it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from foundry.errors import DataError
from foundry.readers import Document, Reader, decode_text

SOURCE_SUFFIXES = (".py", ".pyi", ".c", ".h", ".js", ".rs", ".java", ".go", ".sh")
SKIP_DIRS = ("test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "node_modules", ".git")


def read_source(path: Path) -> Iterator[Document]:
    name = Path(path).as_posix()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror})") from None
    text = decode_text(data, name)
    if text:
        yield Document(id=name, text=text, source=name)


SOURCE_READER = Reader(name="source", suffixes=SOURCE_SUFFIXES, read=read_source, skip_dirs=SKIP_DIRS)
