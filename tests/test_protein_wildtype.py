"""One wild-type reader for `protein finetune --wildtype` and `protein score-variants --wildtype`:
inline sequences, FASTA and text files, and a mistyped file name refused instead of read as residues."""

from __future__ import annotations

import gzip

import pytest

from foundry.cli import main
from foundry.errors import DataError
from modalities.protein.wildtype import read_wildtype


def run(capsys, *args) -> tuple[int, str, str]:
    code = 0
    try:
        main([*map(str, args)])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inline_sequences_and_files(tmp_path):
    assert read_wildtype("mktAYI ak*") == "MKTAYIAK"  # case, spaces and a trailing stop as in FASTA
    fasta = tmp_path / "wt.fasta"
    fasta.write_text(">P1 some protein\nMKTAY\nIAKQR*\n")
    assert read_wildtype(str(fasta)) == "MKTAYIAKQR"
    packed = tmp_path / "wt.fa.gz"
    packed.write_bytes(gzip.compress(fasta.read_bytes()))
    assert read_wildtype(str(packed)) == "MKTAYIAKQR"
    plain = tmp_path / "wt.txt"
    plain.write_text("MKTAY\nIAKQR\n")
    assert read_wildtype(str(plain)) == "MKTAYIAKQR"


@pytest.mark.parametrize("value, message", [
    ("wt.fasta", r"--wildtype wt\.fasta: no such file, and not a protein sequence \('\.' at position 3 is not an amino-acid letter\)"),
    ("data/pab1", r"--wildtype data/pab1: no such file, and not a protein sequence \('/' at position 5"),
    ("MKT-AY", r"'-' at position 4"),  # gaps are tokens of the alphabet, not residues of a wild type
    ("MKT1AY", r"'1' at position 4"),
    ("  ", r"--wildtype: empty value"),
])
def test_a_value_that_is_neither_a_file_nor_a_sequence_is_refused(value, message):
    with pytest.raises(DataError, match=message):
        read_wildtype(value)


def test_bad_files_name_the_file(tmp_path):
    two = tmp_path / "two.fasta"
    two.write_text(">a\nMKT\n>b\nMKV\n")
    with pytest.raises(DataError, match=r"two\.fasta: 2 FASTA records; choose the wild type with --wildtype-id ID \(records: a, b\)"):
        read_wildtype(str(two))
    assert read_wildtype(str(two), record_id="b") == "MKV"
    with pytest.raises(DataError, match=r"two\.fasta: no record 'c' \(--wildtype-id\); its records: a, b"):
        read_wildtype(str(two), record_id="c")
    with pytest.raises(DataError, match=r"--wildtype-id a: applies to a FASTA file, but --wildtype MKT is not a file"):
        read_wildtype("MKT", record_id="a")
    gapped = tmp_path / "aligned.txt"
    gapped.write_text("MKT..AY\n")
    with pytest.raises(DataError, match=r"aligned\.txt: '\.' at position 4 of the wild type is not an amino-acid letter"):
        read_wildtype(str(gapped))
    with pytest.raises(DataError, match=r"is a folder"):
        read_wildtype(str(tmp_path))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.txt: empty wild-type sequence"):
        read_wildtype(str(empty))


MISSING = "error: --wildtype wt.fasta: no such file, and not a protein sequence ('.' at position 3 is not an amino-acid letter)"


def _dms(tmp_path):
    table = tmp_path / "dms.csv"
    table.write_text("mutation,mutant,label\nWT,WT,0.1\nW1A,W1A,0.2\n")  # W1A would "match" the sequence WT.FASTA
    return table


def test_score_variants_refuses_a_missing_wildtype_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "protein", "score-variants", "--model", tmp_path / "no-model", "--wildtype", "wt.fasta", _dms(tmp_path))
    assert code == 2 and err.strip().splitlines() == [MISSING]


def test_finetune_refuses_a_missing_wildtype_file_like_score_variants(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table, out = _dms(tmp_path), tmp_path / "run"
    code, _, err = run(capsys, "protein", "finetune", "--model", "esm2_tiny", "--task", "variant-effect", "--wildtype", "wt.fasta",
                       "--train", table, "--valid", table, "--out", out, "--max-steps", "1", "--quiet", "--no-forgetting")
    assert code == 2 and err.strip().splitlines() == [MISSING]  # used to train on the "sequence" WT.FASTA and exit 0
    assert not out.exists()
