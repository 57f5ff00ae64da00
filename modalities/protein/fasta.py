"""FASTA / FASTA.gz reader: one ``Document`` per record, parsed by biopython.

Records are parsed with ``Bio.SeqIO.FastaIO.SimpleFastaParser`` (the fast path under
``Bio.SeqIO.parse(..., "fasta")``); ``Document.id`` is the first word of the header, as
``SeqRecord.id`` would be, ``Document.text`` the sequence with line breaks removed, exactly as in
the file (the tokenizer applies the case / whitespace / ``*`` rules).

Compression is detected from the gzip magic bytes, not from the suffix. Each sequence is checked
against the ESM alphabet while reading, so a bad character is reported here with its file, record
and position instead of later from deep inside tokenization. Every problem is one ``DataError``
naming the file and the line or record:

- empty file, or no records at all;
- text before the first ``>`` header (biopython would skip it silently; here it is an error, since
  it usually means the file is not FASTA, e.g. a bare sequence or a CSV);
- binary data (NUL bytes or bytes that are not UTF-8): ``foundry.readers.NotTextError`` naming
  the line and byte offset, which ``on_decode_error: skip`` turns into a skipped file, as for
  every reader;
- a corrupt or truncated gzip stream;
- a record with no sequence;
- a character outside the alphabet (file, record id, header line, residue position).
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections import deque
from pathlib import Path
from typing import IO, Iterator

from Bio.SeqIO.FastaIO import SimpleFastaParser

from foundry.errors import DataError
from foundry.readers import Document, NotTextError, decode_text

from .alphabet import EsmTokenizer

_GZIP_MAGIC = b"\x1f\x8b"
_BINARY = re.compile("[\x00\udc80-\udcff]")  # NUL, or a byte that is not UTF-8 (surrogateescape)
_ALPHABET = EsmTokenizer()


def read_fasta(path: str | Path) -> Iterator[Document]:
    """Yield one ``Document(id, sequence, source)`` per FASTA record of ``path``."""
    path = Path(path)
    lines = _Lines(path)
    try:
        with _open_text(path) as handle:
            lines.handle = handle
            count = 0
            for title, seq in SimpleFastaParser(lines):
                count += 1
                line_no = lines.headers.popleft()
                yield _document(path, count, line_no, title, seq)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data after line {lines.n} ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if count == 0:
        what = "the file is empty" if lines.n == 0 else "the file has only blank lines"
        raise DataError(f"{path}: no FASTA records ({what})")


def _document(path: Path, number: int, line_no: int, title: str, seq: str) -> Document:
    words = title.split(None, 1)
    record_id = words[0] if words else f"{path.name}:{line_no}"
    where = f"{path}: record {number} {record_id!r} (line {line_no})"
    if not seq.strip():
        raise DataError(f"{where} has no sequence")
    try:
        _ALPHABET.encode(seq, add_special_tokens=False)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    return Document(id=record_id, text=seq, source=str(path))


def _open_text(path: Path) -> IO[str]:
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a FASTA file") from None
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape")
    # Undecodable bytes become lone surrogates, which _Lines reports with their line number.
    return open(path, "r", encoding="utf-8", errors="surrogateescape")


def _not_text(path: Path, line_no: int) -> NotTextError:
    """The error for the first bad byte, found on line ``line_no`` of the text stream: the raw
    bytes are read again up to that line to name the byte and its offset in the file."""
    with open(path, "rb") as probe:
        gz = probe.read(2) == _GZIP_MAGIC
    number, offset = 0, 0
    with (gzip.open if gz else open)(path, "rb") as raw:
        for piece in raw:
            # The text stream splits lines at \n, \r\n and a lone \r (universal newlines), as
            # bytes.splitlines does; a \r\n never straddles two pieces since each ends at \n.
            for line in piece.splitlines(keepends=True):
                number += 1
                if number == line_no:
                    try:
                        decode_text(line, str(path), number, offset)
                    except NotTextError as exc:
                        return exc
                    return NotTextError(f"{path}:{line_no}: not UTF-8 text")
                offset += len(line)
    return NotTextError(f"{path}:{line_no}: not UTF-8 text")


class _Lines:
    """Line iterator for the parser that counts lines, records header line numbers and rejects
    text before the first header and binary data."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[str] | None = None
        self.n = 0  # lines read so far
        self.seen_header = False
        self.headers: deque[int] = deque()  # line numbers of headers not yet yielded

    def __iter__(self) -> Iterator[str]:
        # The parser iterates twice (skip to the first header, then the records): keep state here.
        for line in self.handle:
            self.n += 1
            if _BINARY.search(line):
                raise _not_text(self.path, self.n)
            if line.startswith(">"):
                self.seen_header = True
                self.headers.append(self.n)
            elif not self.seen_header:
                if not line.strip():
                    continue
                shown = line.strip()[:40]
                raise DataError(f"{self.path}: line {self.n}: expected a FASTA header line starting "
                                f"with '>', found {shown!r}")
            yield line
