"""Readers turn files into documents; modalities register them, the engine walks folders.

A reader is chosen by file suffix among the readers the modality names. Compressed files keep
their inner suffix (``proteins.fasta.gz`` is read by the reader for ``.fasta.gz``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .errors import DataError


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


def read_documents(paths: Sequence[Path], readers: Sequence[Reader]) -> Iterator[Document]:
    """All documents under ``paths``. Ids that name a file found inside a folder are made relative
    to that folder, so the validation split (a hash of ids) does not depend on where it lives."""
    for path in paths:
        root = Path(path)
        for file, reader in iter_files([root], readers):
            if root.is_dir():
                prefix, relative = str(file), str(file.relative_to(root))
                for doc in reader.read(file):
                    if doc.id.startswith(prefix):
                        doc = Document(relative + doc.id[len(prefix):], doc.text, doc.source)
                    yield doc
            else:
                yield from reader.read(file)


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
