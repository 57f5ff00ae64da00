"""Text corpora → documents: plain text files and JSONL.

Plain text (``.txt``, ``.md``, ``.text``): a file is cut at blank lines into documents of at most
``MAX_CHARS`` characters (consecutive paragraphs are joined while they fit; a longer paragraph is
cut at line ends). Pretraining packs short documents and crops long ones to ``data.max_len``
tokens, so a whole novel as one document would be cropped to one window per epoch; chunks of
about a few hundred tokens keep every part of the file in play. Document ids are
``path:line`` (the chunk's first line, 1-based); the text is the exact slice of the file.

JSONL (``.jsonl``, ``.jsonl.gz``): one JSON object per line, the document in its ``text`` field;
blank lines and empty texts are skipped; ids are ``path:line``.

Every file is read as UTF-8 (a leading BOM is dropped). Bad input raises ``DataError`` naming
the file and line: bad JSON, a missing field, an empty file. Undecodable or NUL bytes raise
``foundry.readers.NotTextError`` (file, line, byte offset), which ``on_decode_error: skip`` turns
into a skipped file, as for every reader.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator

from foundry.errors import DataError
from foundry.readers import Document, Reader, decode_text

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
#: Largest document cut from a plain text file (characters; ~500 BPE tokens of English).
MAX_CHARS = 2048


# -- naming ----------------------------------------------------------------------------------


def display_path(path: Path) -> str:
    """How a file is named in document ids and errors: the path as it was given (posix)."""
    return Path(path).as_posix()


# -- plain text ------------------------------------------------------------------------------


def read_text(path: Path, max_chars: int = MAX_CHARS) -> Iterator[Document]:
    name = display_path(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror})") from None
    if not data:
        raise DataError(f"{name}: file is empty")
    text = decode_text(data, name).removeprefix("\ufeff")
    found = False
    for line, start, end in chunk_spans(text, max_chars):
        found = True
        yield Document(id=f"{name}:{line}", text=text[start:end], source=name)
    if not found:
        raise DataError(f"{name}: file has only whitespace, no text")


def chunk_spans(text: str, max_chars: int = MAX_CHARS) -> Iterator[tuple[int, int, int]]:
    """(first line, start, end) of each chunk: paragraphs joined while they fit in ``max_chars``."""
    current: list[int] | None = None  # [line, start, end]
    for line, start, end in _pieces(text, max_chars):
        if current is not None and end - current[1] <= max_chars:
            current[2] = end
            continue
        if current is not None:
            yield current[0], current[1], current[2]
        current = [line, start, end]
    if current is not None:
        yield current[0], current[1], current[2]


def _pieces(text: str, max_chars: int) -> Iterator[tuple[int, int, int]]:
    """Paragraphs (runs of non-blank lines), those longer than ``max_chars`` cut at line ends."""
    para: list[tuple[int, int, int]] = []  # the current paragraph's lines
    offset = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            para.append((number, offset, offset + len(line.rstrip("\r"))))
        elif para:
            yield from _cut(para, max_chars)
            para = []
        offset += len(line) + 1
    if para:
        yield from _cut(para, max_chars)


def _cut(lines: list[tuple[int, int, int]], max_chars: int) -> Iterator[tuple[int, int, int]]:
    first, start, end = lines[0]
    for number, line_start, line_end in lines[1:]:
        if line_end - start > max_chars:
            yield first, start, end
            first, start = number, line_start
        end = line_end
    yield first, start, end


# -- JSONL -----------------------------------------------------------------------------------


def read_jsonl(path: Path, field: str = "text") -> Iterator[Document]:
    name = display_path(path)
    opener = gzip.open if name.lower().endswith(".gz") else open
    count = 0
    number = 0
    offset = 0  # of the current line in the (uncompressed) file, for decode errors
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                text = _jsonl_text(raw, name, number, field, offset)
                offset += len(raw)
                if text:
                    count += 1
                    yield Document(id=f"{name}:{number}", text=text, source=name)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{name}:{number + 1}: broken gzip data ({exc or 'unexpected end of file'})") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if number == 0:
        raise DataError(f"{name}: file is empty")
    if count == 0:
        raise DataError(f"{name}: no record has a non-empty {field!r} field")


def _jsonl_text(raw: bytes, name: str, number: int, field: str, offset: int = 0) -> str:
    line = decode_text(raw, name, first_line=number, first_offset=offset)
    if number == 1:
        line = line.removeprefix("\ufeff")
    if not line.strip():
        return ""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{name}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{name}:{number}: expected a JSON object with a {field!r} field, got {type(record).__name__}")
    if field not in record:
        keys = ", ".join(sorted(record)[:8]) or "none"
        raise DataError(f"{name}:{number}: no {field!r} field (keys: {keys})")
    text = record[field]
    if not isinstance(text, str):
        raise DataError(f"{name}:{number}: field {field!r} must be a string, got {type(text).__name__}")
    return text


# -- registration ----------------------------------------------------------------------------


def make_text_reader(max_chars: int = MAX_CHARS, name: str = "text") -> Reader:
    return Reader(name=name, suffixes=TEXT_SUFFIXES, read=lambda p: read_text(p, max_chars))


def make_jsonl_reader(field: str = "text", name: str = "jsonl") -> Reader:
    return Reader(name=name, suffixes=JSONL_SUFFIXES, read=lambda p: read_jsonl(p, field))


TEXT_READER = make_text_reader()
JSONL_READER = make_jsonl_reader()
