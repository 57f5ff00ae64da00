"""Readers turn files into documents; modalities register them, the engine walks folders.

A reader is chosen by file suffix among the readers the modality names. Compressed files keep
their inner suffix (``proteins.fasta.gz`` is read by the reader for ``.fasta.gz``).

Text must be UTF-8. Every reader decodes through ``decode_text``, so a file that is not text
(an undecodable byte, a NUL byte) is one ``NotTextError`` naming the file, the line and the byte
offset, whatever the modality. What happens then is one policy, ``on_decode_error``, applied
by ``read_file`` / ``read_documents``: "error" (the default) stops there; "skip" leaves the whole
file out with a warning on stderr and a count at the end.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .errors import DataError

DECODE_POLICIES = ("error", "skip")
SKIP_HINT = "convert it to UTF-8, or leave such files out with --on-decode-error skip"


class NotTextError(DataError):
    """A file that is not UTF-8 text (an undecodable byte or a NUL byte). ``problem`` names the
    file, line and byte offset; the message adds how to get past it."""

    def __init__(self, problem: str):
        super().__init__(f"{problem}; {SKIP_HINT}")
        self.problem = problem

    def __reduce__(self):  # survives the trip back from a reader process intact
        return NotTextError, (self.problem,)


def decode_text(data: bytes, where: str, first_line: int = 1, first_offset: int = 0) -> str:
    """UTF-8 ``data`` as str, or a ``NotTextError`` naming ``where``, the line and the byte offset
    of the first bad byte. ``first_line`` / ``first_offset``: where ``data`` starts in the file
    (readers that decode line by line pass them, so the numbers are the file's)."""
    try:
        text = data.decode("utf-8")
        bad = None
    except UnicodeDecodeError as exc:
        bad = exc.start
    nul = data.find(b"\x00", 0, len(data) if bad is None else bad)  # whichever comes first
    if nul < 0 and bad is None:
        return text
    at = nul if nul >= 0 else bad
    line, offset = first_line + data.count(b"\n", 0, at), first_offset + at
    if nul >= 0:
        raise NotTextError(f"{where}:{line}: not text (NUL byte at byte offset {offset}; a binary file?)")
    raise NotTextError(f"{where}:{line}: not UTF-8 text (byte 0x{data[at]:02x} at byte offset {offset})")


def check_policy(on_decode_error: str) -> None:
    if on_decode_error not in DECODE_POLICIES:
        raise DataError(f"on_decode_error: {on_decode_error!r} is not allowed; choose one of {', '.join(DECODE_POLICIES)}")


@dataclass(frozen=True)
class Document:
    id: str  # record id (FASTA header id, relative file path, "file:line")
    text: str  # the raw content the tokenizer encodes
    source: str = ""  # file it came from, for error messages and manifests


@dataclass(frozen=True)
class Reader:
    name: str
    suffixes: tuple[str, ...]  # lower-case, with the dot: (".fasta", ".fa", ".fasta.gz")
    read: Callable[[Path], Iterator[Document]]
    #: folders whose name is in here are skipped when walking a directory (e.g. "tests")
    skip_dirs: tuple[str, ...] = ()

    def accepts(self, path: Path) -> bool:
        name = path.name.lower()
        return any(name.endswith(s) for s in self.suffixes)


def iter_files(paths: Sequence[Path], readers: Sequence[Reader]) -> Iterator[tuple[Path, Reader]]:
    """Yield (file, reader) for every readable file under ``paths``, in a stable order.

    A file named explicitly must be readable by one of ``readers``; files inside folders that no
    reader accepts are skipped silently.
    """
    skip = {d for r in readers for d in r.skip_dirs}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        if path.is_dir():
            found = False
            for file in sorted(_walk(path, skip)):
                reader = _pick(file, readers)
                if reader is not None:
                    found = True
                    yield file, reader
            if not found:
                suffixes = sorted({s for r in readers for s in r.suffixes})
                raise DataError(f"{path}: no readable files in this folder (looked for {', '.join(suffixes)})")
        else:
            reader = _pick(path, readers)
            if reader is None:
                suffixes = sorted({s for r in readers for s in r.suffixes})
                raise DataError(f"{path}: cannot read this file type (expected one of {', '.join(suffixes)})")
            yield path, reader


def read_file(file: Path, reader: Reader, on_decode_error: str = "error", skipped: list[str] | None = None) -> Iterator[Document]:
    """The documents of one file under the decode policy. "skip" reads the file whole before
    yielding anything, so a bad byte late in it leaves none of its documents behind; the reason
    is printed on stderr and appended to ``skipped``."""
    if on_decode_error == "error":
        yield from reader.read(file)
        return
    check_policy(on_decode_error)
    try:
        documents = list(reader.read(file))
    except NotTextError as exc:
        print(f"foundry: skipping {exc.problem}", file=sys.stderr)
        if skipped is not None:
            skipped.append(exc.problem)
        return
    yield from documents


def read_documents(paths: Sequence[Path], readers: Sequence[Reader], on_decode_error: str = "error",
                   skipped: list[str] | None = None) -> Iterator[Document]:
    """All documents under ``paths``. Ids that name a file found inside a folder are made relative
    to that folder, so the validation split (a hash of ids) does not depend on where it lives.

    ``on_decode_error``: "error" or "skip" (see ``read_file``); when files were skipped, a count
    is printed on stderr at the end, and their reasons are appended to ``skipped``."""
    check_policy(on_decode_error)
    reasons: list[str] = []
    files = 0
    for path in paths:
        root = Path(path)
        for file, reader in iter_files([root], readers):
            files += 1
            if root.is_dir():
                prefix, relative = str(file), str(file.relative_to(root))
                for doc in read_file(file, reader, on_decode_error, reasons):
                    if doc.id.startswith(prefix):
                        doc = Document(relative + doc.id[len(prefix):], doc.text, doc.source)
                    yield doc
            else:
                yield from read_file(file, reader, on_decode_error, reasons)
    if reasons:
        print(f"foundry: skipped {len(reasons)} of {files} files that are not UTF-8 text (on_decode_error: skip)", file=sys.stderr)
        if skipped is not None:
            skipped.extend(reasons)


def _walk(folder: Path, skip: set[str]) -> Iterable[Path]:
    for child in folder.iterdir():
        if child.is_dir():
            if child.name in skip or child.name.startswith("."):
                continue
            yield from _walk(child, skip)
        elif child.is_file():
            yield child


def _pick(path: Path, readers: Sequence[Reader]) -> Reader | None:
    # Longest matching suffix wins, so ".fasta.gz" beats ".gz".
    best, best_len = None, -1
    name = path.name.lower()
    for reader in readers:
        for s in reader.suffixes:
            if name.endswith(s) and len(s) > best_len:
                best, best_len = reader, len(s)
    return best
