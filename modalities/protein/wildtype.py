"""The one wild-type reader, shared by ``protein finetune --wildtype`` and ``score-variants --wildtype``.

    read_wildtype("MKTAYIAKQR")          # inline sequence -> 'MKTAYIAKQR'
    read_wildtype("P62593.fasta")        # a FASTA file with exactly one record
    read_wildtype("panel.fasta", record_id="GB1")   # a multi-record FASTA: the record named (--wildtype-id)
    read_wildtype("pab1_wt.txt")         # a plain text file: the sequence, whitespace ignored
    read_wildtype("wt.fasta")            # no such file: DataError, never the "sequence" WT.FASTA

A value is a file when a file of that name exists. Otherwise it must look like a sequence:
amino-acid letters only (case-insensitive, whitespace ignored, one trailing ``*`` dropped). A
value that is neither, e.g. a mistyped file name (``.`` and ``-`` are gap tokens of the ESM
alphabet, so ``wt.fasta`` would otherwise tokenize), is an error naming the value. Gaps, digits
and special tokens are refused in files too: a wild type is an ungapped protein sequence.
"""

from __future__ import annotations

from pathlib import Path

from foundry.errors import DataError

#: the residue letters of the ESM alphabet: 20 amino acids plus X B Z U O
RESIDUE_LETTERS = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")


def read_wildtype(value: str, option: str = "--wildtype", record_id: str | None = None) -> str:
    """The wild-type sequence (upper case) given inline or in a FASTA / text file; ``record_id``
    (``--wildtype-id``) picks one record of a FASTA file with several."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{option}: empty value (give the wild-type sequence or a file holding it)")
    path = Path(value.strip())
    if path.is_dir():
        raise DataError(f"{option} {value}: is a folder; give a FASTA or text file, or the sequence itself")
    if path.is_file():
        return _check(_file_sequence(path, record_id), str(path))
    if record_id is not None:
        raise DataError(f"--wildtype-id {record_id}: applies to a FASTA file, but {option} {value} is not a file")
    sequence = "".join(value.split())
    bad = _first_non_residue(sequence)
    if bad is not None:
        raise DataError(f"{option} {value}: no such file, and not a protein sequence "
                        f"({sequence[bad]!r} at position {bad + 1} is not an amino-acid letter)")
    return _check(sequence, option)


def _file_sequence(path: Path, record_id: str | None = None) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b" or raw.lstrip()[:1] == b">":
        from .fasta import read_fasta

        records = list(read_fasta(path))
        if record_id is not None:
            chosen = [r for r in records if r.id == record_id]
            if not chosen:
                raise DataError(f"{path}: no record {record_id!r} (--wildtype-id); its records: {_names(records)}")
            return "".join(chosen[0].text.split())
        if len(records) != 1:
            raise DataError(f"{path}: {len(records)} FASTA records; choose the wild type with --wildtype-id ID "
                            f"(records: {_names(records)})")
        return "".join(records[0].text.split())
    if record_id is not None:
        raise DataError(f"{path}: --wildtype-id {record_id}: the file is not FASTA (no '>id' header)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text file (byte 0x{raw[exc.start]:02x} at offset {exc.start} is not UTF-8)") from None
    return "".join(text.split())  # a plain file: the sequence, possibly wrapped over lines


def _names(records, shown: int = 5) -> str:
    ids = [r.id for r in records]
    return ", ".join(ids[:shown]) + (f", … ({len(ids)} in all)" if len(ids) > shown else "")


def _check(sequence: str, where: str) -> str:
    sequence = sequence.upper()
    if sequence.endswith("*"):
        sequence = sequence[:-1]  # a stop codon written at the end of a FASTA sequence
    if not sequence:
        raise DataError(f"{where}: empty wild-type sequence")
    bad = _first_non_residue(sequence)
    if bad is not None:
        raise DataError(f"{where}: {sequence[bad]!r} at position {bad + 1} of the wild type is not an amino-acid letter "
                        "(expected ACDEFGHIKLMNPQRSTVWY or XBZUO; gaps and stops do not belong in a wild type)")
    return sequence


def _first_non_residue(sequence: str) -> int | None:
    """0-based index of the first character that is not a residue letter (a trailing '*' is fine)."""
    body = sequence[:-1] if sequence.endswith("*") else sequence
    for i, char in enumerate(body):
        if char.upper() not in RESIDUE_LETTERS:
            return i
    return None
