"""The FASTA reader: real files, gzip, and one clear DataError per kind of bad input."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from Bio import SeqIO

from foundry.errors import DataError
from foundry.readers import Document, iter_files, read_documents
from modalities.protein import plugin
from modalities.protein.fasta import read_fasta

DATA = Path(__file__).parent / "data" / "protein"


def _write(path: Path, text: str | bytes) -> Path:
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def _error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        list(read_fasta(path))
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


# -- good input -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["some_proteins.fasta", "few_proteins.fasta"])
def test_reads_like_biopython(name):
    path = DATA / name
    docs = list(read_fasta(path))
    expected = [(r.id, str(r.seq)) for r in SeqIO.parse(path, "fasta")]
    assert [(d.id, d.text) for d in docs] == expected
    assert all(isinstance(d, Document) and d.source == str(path) for d in docs)


def test_gzip_gives_the_same_documents(tmp_path):
    plain = DATA / "some_proteins.fasta"
    packed = _write(tmp_path / "some.fasta.gz", plain.read_bytes())
    assert [(d.id, d.text) for d in read_fasta(packed)] == [(d.id, d.text) for d in read_fasta(plain)]


def test_bundled_corpus():
    docs = list(read_fasta(plugin.BUNDLED_FASTA))
    assert len(docs) == 8000
    assert docs[0].id == "tr|W0FSK4|W0FSK4_9FLAV"
    assert all(d.text for d in docs)


def test_wrapped_lines_crlf_blank_lines_and_lowercase(tmp_path):
    path = _write(tmp_path / "x.fa", "\n\n>p1 first protein\r\nMKV\r\nlag\r\n\r\n>p2\nAC DE\n")
    docs = list(read_fasta(path))
    assert [(d.id, d.text) for d in docs] == [("p1", "MKVlag"), ("p2", "ACDE")]


def test_header_without_id_gets_file_and_line(tmp_path):
    path = _write(tmp_path / "x.fa", ">a\nMK\n>\nLV\n")
    assert [d.id for d in read_fasta(path)] == ["a", "x.fa:3"]


def test_trailing_stop_codon_is_accepted(tmp_path):
    path = _write(tmp_path / "x.faa", ">orf1\nMKV*\n")
    assert [d.text for d in read_fasta(path)] == ["MKV*"]


def test_found_through_the_registered_reader(tmp_path):
    readers = []
    plugin.register_readers(readers.append)
    (reader,) = readers
    _write(tmp_path / "a.fasta", ">a\nMK\n")
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "b.fa.gz", ">b\nLV\n")
    _write(tmp_path / "notes.txt", "not a fasta")
    files = [p.name for p, _ in iter_files([tmp_path], [reader])]
    assert files == ["a.fasta", "b.fa.gz"]
    assert [d.id for d in read_documents([tmp_path], [reader])] == ["a", "b"]


# -- bad input: one DataError naming the file and the line or record ------------------------


def test_empty_file(tmp_path):
    assert "no FASTA records (the file is empty)" in _error(_write(tmp_path / "e.fasta", ""))
    assert "only blank lines" in _error(_write(tmp_path / "b.fasta", "\n\n  \n"))
    assert "the file is empty" in _error(_write(tmp_path / "e.fasta.gz", ""))


def test_no_header(tmp_path):
    message = _error(_write(tmp_path / "bare.fasta", "\nMKVLAG\nLLV\n"))
    assert "line 2: expected a FASTA header line starting with '>', found 'MKVLAG'" in message


def test_text_before_first_header(tmp_path):
    message = _error(_write(tmp_path / "c.fasta", "id,sequence\n>a\nMK\n"))
    assert "line 1: expected a FASTA header" in message


def test_binary_garbage_names_line_byte_and_offset(tmp_path):
    garbage = bytes(range(256)) * 4 + os.urandom(512)
    assert "bin.fasta:2: not text (NUL byte at byte offset 3; a binary file?)" in _error(_write(tmp_path / "bin.fasta", b">x\n" + garbage))
    assert "bin2.fasta:1: not UTF-8 text (byte 0xff at byte offset 0)" in _error(_write(tmp_path / "bin2.fasta", b"\xff\xfe\x00garbage"))
    assert "nul.fasta:2: not text (NUL byte at byte offset 5" in _error(_write(tmp_path / "nul.fasta", b">x\nMK\x00\x00V\n"))
    latin1 = _write(tmp_path / "l.fasta.gz", b">x\nMKV\n>y\nMK\xe9V\n")  # offsets of the uncompressed text
    message = _error(latin1)
    assert "l.fasta.gz:4: not UTF-8 text (byte 0xe9 at byte offset 12)" in message
    assert "--on-decode-error skip" in message, "the error says how to get past it"
    crlf = _write(tmp_path / "crlf.fasta", b">x\r\nMKV\r\n>y\r\nMK\xe9V\r\n")
    assert "crlf.fasta:4: not UTF-8 text (byte 0xe9 at byte offset 15)" in _error(crlf)
    old_mac = _write(tmp_path / "cr.fasta", b">x\rMKV\r>y\rMK\xe9V\r")  # lone CR line ends
    assert "cr.fasta:4: not UTF-8 text (byte 0xe9 at byte offset 12)" in _error(old_mac)


def test_skip_policy_leaves_out_binary_files_and_counts_them(tmp_path, capsys):
    readers = []
    plugin.register_readers(readers.append)
    (tmp_path / "a.fasta").write_text(">a\nMKV\n")
    (tmp_path / "b.fasta").write_bytes(b">b\nMKV\n>c\nMK\xe9V\n")  # its first record is good: still all left out
    with pytest.raises(DataError, match=r"b.fasta:4: not UTF-8 text \(byte 0xe9 at byte offset 12\)"):
        list(read_documents([tmp_path], readers))
    skipped: list[str] = []
    docs = list(read_documents([tmp_path], readers, on_decode_error="skip", skipped=skipped))
    assert [d.id for d in docs] == ["a"]
    assert len(skipped) == 1 and "b.fasta:4: not UTF-8 text" in skipped[0]
    err = capsys.readouterr().err
    assert "skipping" in err and "skipped 1 of 2 files that are not UTF-8 text" in err


def test_record_without_sequence(tmp_path):
    message = _error(_write(tmp_path / "n.fasta", ">a\nMK\n>empty_one desc\n>c\nLV\n"))
    assert "record 2 'empty_one' (line 3) has no sequence" in message
    message = _error(_write(tmp_path / "last.fasta", ">a\nMK\n>last\n\n"))
    assert "record 2 'last' (line 3) has no sequence" in message


def test_corrupt_gzip(tmp_path):
    good = gzip.compress(b">a\n" + b"MKVLAG" * 20000 + b"\n", mtime=0)
    truncated = tmp_path / "t.fasta.gz"
    truncated.write_bytes(good[: len(good) // 2])
    assert "corrupt or truncated gzip" in _error(truncated)
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    corrupt = tmp_path / "c.fasta.gz"
    corrupt.write_bytes(bytes(flipped))
    assert "corrupt or truncated gzip" in _error(corrupt)
    header_only = tmp_path / "h.fasta.gz"
    header_only.write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert "corrupt or truncated gzip" in _error(header_only)


def test_character_outside_the_alphabet(tmp_path):
    path = _write(tmp_path / "bad.fasta", ">ok\nMKV\n>sp|P1|BAD_HUMAN some protein\nMKVLA\nGGJLV\n")
    message = _error(path)
    assert "record 2 'sp|P1|BAD_HUMAN' (line 3)" in message
    assert "character 'J' at position 8 " in message


def test_internal_stop_codon(tmp_path):
    message = _error(_write(tmp_path / "s.fasta.gz", ">orf\nMK*V\n"))
    assert "record 1 'orf' (line 1)" in message and "stop codon '*' at position 3" in message


def test_missing_file(tmp_path):
    assert "no such file" in _error(tmp_path / "nope.fasta")
