"""Reading JSONL (optionally gzipped) with errors that name the file and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable, Iterator

from .errors import DataError


def file_colon_line(path: Path, number: int) -> str:
    return f"{path}:{number}"


def read_jsonl(path: str | Path, place: Callable[[Path, int], str] = file_colon_line) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of ``path`` (``.gz``: gzip). A line that is
    not a JSON object, or a file that is not UTF-8 / not gzip, is a ``DataError`` naming file and
    line as ``place(path, number)`` says."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.name.endswith(".gz") else open
    number = 0
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{place(path, number)}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{place(path, number)}: expected a JSON object, got {type(row).__name__}")
                yield number, row
    except UnicodeDecodeError as exc:
        raise DataError(f"{place(path, number + 1)}: not UTF-8 text ({exc.reason})") from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from None


def string_field(row: dict, key: str, where: str, allow_empty: bool = False) -> str:
    """``row[key]`` as a string, or a ``DataError`` naming ``where`` (file:line) and the field."""
    if key not in row:
        raise DataError(f"{where}: missing field \"{key}\"")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field \"{key}\" must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field \"{key}\" is empty")
    return value
