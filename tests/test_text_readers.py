"""Text and JSONL readers (modalities.text.readers) and the code modality's source reader."""

import gzip
import json

import pytest

from foundry.errors import DataError
from foundry.readers import read_documents
from modalities.code.readers import SOURCE_READER
from modalities.text.plugin import BUNDLED_TEXT
from modalities.text.readers import JSONL_READER, MAX_CHARS, TEXT_READER, chunk_spans, read_jsonl, read_text


def _docs(path, **kw):
    return list(read_text(path, **kw))


def test_text_is_cut_at_blank_lines_with_line_ids(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("para one\nstill one\n\n\n  \npara two\n\npara three\n", encoding="utf-8")
    docs = _docs(f, max_chars=19)
    assert [(d.id, d.text) for d in docs] == [
        (f"{f.as_posix()}:1", "para one\nstill one"),
        (f"{f.as_posix()}:6", "para two"),
        (f"{f.as_posix()}:8", "para three"),
    ]
    joined = _docs(f, max_chars=1000)  # short paragraphs are joined, exact slice of the file
    assert [(d.id, d.text) for d in joined] == [(f"{f.as_posix()}:1", "para one\nstill one\n\n\n  \npara two\n\npara three")]


def test_long_paragraphs_are_cut_at_line_ends_and_crlf_kept(tmp_path):
    f = tmp_path / "b.md"
    lines = [f"line {i:03d} " + "x" * 20 for i in range(100)]
    f.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    docs = _docs(f, max_chars=200)
    assert all(len(d.text) <= 200 for d in docs) and len(docs) > 10
    assert "\r\n".join(d.text for d in docs) == "\r\n".join(lines)
    assert docs[1].id.endswith(f":{1 + docs[0].text.count(chr(10)) + 1}")


def test_a_single_huge_line_stays_one_document():
    text = "y" * 10_000
    assert list(chunk_spans(text, 100)) == [(1, 0, 10_000)]


def test_bundled_shakespeare_chunks():
    docs = list(read_text(BUNDLED_TEXT))
    assert 400 < len(docs) < 1000
    assert all(len(d.text) <= MAX_CHARS or "\n" not in d.text for d in docs)
    assert docs[0].id.endswith("tinyshakespeare.txt:1") and docs[0].text.startswith("First Citizen:")
    words = lambda s: s.split()  # noqa: E731 - every word of the file is in exactly one document
    assert sum(len(words(d.text)) for d in docs) == len(words(BUNDLED_TEXT.read_text()))


def test_text_bad_input_names_file_and_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.txt: file is empty"):
        _docs(empty)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\t\n")
    with pytest.raises(DataError, match="blank.txt: file has only whitespace"):
        _docs(blank)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("ok\nstill ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt:3: not UTF-8 text \(byte 0xe9 at byte offset 15\); .*--on-decode-error skip"):
        _docs(latin)
    binary = tmp_path / "data.txt"
    binary.write_bytes(b"text\n\x00\x01\x02 binary")
    with pytest.raises(DataError, match=r"data.txt:2: not text \(NUL byte at byte offset 5; a binary file\?\)"):
        _docs(binary)


def test_bom_is_dropped(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeffHello".encode())
    assert [d.text for d in _docs(f)] == ["Hello"]


def test_jsonl_plain_and_gzip(tmp_path):
    rows = [{"text": "first"}, {"text": "", "meta": 1}, {"text": "third ünï", "id": 7}]
    plain = tmp_path / "c.jsonl"
    plain.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    packed = tmp_path / "c.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for f in (plain, packed):
        docs = list(read_jsonl(f))
        assert [(d.id, d.text) for d in docs] == [(f"{f.as_posix()}:1", "first"), (f"{f.as_posix()}:3", "third ünï")]


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"text": "ok"}\n{"text": "broken"\n', r"bad.jsonl:2: not valid JSON"),
        (b'{"text": "ok"}\n["a list"]\n', r"bad.jsonl:2: expected a JSON object with a 'text' field, got list"),
        (b'{"text": "ok"}\n\n{"body": "x", "title": "y"}\n', r"bad.jsonl:3: no 'text' field \(keys: body, title\)"),
        (b'{"text": 12}\n', r"bad.jsonl:1: field 'text' must be a string, got int"),
        (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"bad.jsonl:2: not UTF-8 text \(byte 0xe9 at byte offset 28\)"),
        (b"", r"bad.jsonl: file is empty"),
        (b'{"text": ""}\n', r"bad.jsonl: no record has a non-empty 'text' field"),
    ],
)
def test_jsonl_bad_input_names_file_and_line(tmp_path, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(content)
    with pytest.raises(DataError, match=message):
        list(read_jsonl(f))


def test_broken_gzip_is_a_data_error(tmp_path):
    f = tmp_path / "t.jsonl.gz"
    f.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:60])
    with pytest.raises(DataError, match="t.jsonl.gz:.*broken gzip"):
        list(read_jsonl(f))
    g = tmp_path / "u.jsonl.gz"
    g.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="u.jsonl.gz"):
        list(read_jsonl(g))


def test_folders_pick_readers_by_suffix(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.jsonl").write_text('{"text": "beta"}\n')
    (tmp_path / "notes.csv").write_text("ignored")
    docs = list(read_documents([tmp_path], [TEXT_READER, JSONL_READER]))
    assert [d.text for d in docs] == ["alpha", "beta"]


# -- source trees (code modality) --------------------------------------------------------------


def test_source_reader_walks_trees_exactly(tmp_path, capsys):
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__pycache__").mkdir()
    exact = b"def f():\r\n\treturn '\xc3\xbc'  \r\n"
    (root / "pkg" / "mod.py").write_bytes(exact)
    (root / "pkg" / "__init__.py").write_bytes(b"")  # empty: no document
    (root / "pkg" / "lib.c").write_bytes(b"int main(void) { return 0; }\n")
    (root / "tests" / "test_mod.py").write_text("skipped")
    (root / "pkg" / "__pycache__" / "mod.py").write_text("skipped")
    (root / "README.md").write_text("not source")
    docs = list(read_documents([root], [SOURCE_READER]))
    assert [d.id for d in docs] == ["pkg/lib.c", "pkg/mod.py"], "ids are relative to the folder given"
    assert docs[1].text.encode("utf-8") == exact


def _tree_with_a_latin1_file(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n")
    (root / "old.py").write_bytes(b"x = 2\n# caf\xe9\n")
    (root / "z.py").write_text("y = 3\n")
    return root


@pytest.mark.parametrize("reader, name", [(SOURCE_READER, "old.py"), (TEXT_READER, "old.txt"), (JSONL_READER, "old.jsonl")])
def test_every_reader_stops_at_a_file_that_is_not_text(tmp_path, reader, name):
    """One policy for every reader: by default an error naming file, line, byte and offset."""
    root = tmp_path / "proj"
    root.mkdir()
    good = b'{"text": "fine"}\n' if name.endswith(".jsonl") else b"fine\n"
    (root / ("a" + name[3:])).write_bytes(good)
    (root / name).write_bytes(good + b"caf\xe9\n")
    with pytest.raises(DataError) as info:
        list(read_documents([root], [reader]))
    assert str(info.value) == (f"{(root / name).as_posix()}:2: not UTF-8 text (byte 0xe9 at byte offset {len(good) + 3}); "
                               "convert it to UTF-8, or leave such files out with --on-decode-error skip")


def test_skip_policy_leaves_files_out_with_a_warning_and_a_count(tmp_path, capsys):
    root = _tree_with_a_latin1_file(tmp_path)
    skipped: list[str] = []
    docs = list(read_documents([root], [SOURCE_READER], on_decode_error="skip", skipped=skipped))
    assert [d.id for d in docs] == ["a.py", "z.py"]
    assert skipped == [f"{(root / 'old.py').as_posix()}:2: not UTF-8 text (byte 0xe9 at byte offset 11)"]
    err = capsys.readouterr().err
    assert f"foundry: skipping {skipped[0]}" in err
    assert "foundry: skipped 1 of 3 files that are not UTF-8 text" in err
    with pytest.raises(DataError, match="on_decode_error: 'ignore' is not allowed; choose one of error, skip"):
        list(read_documents([root], [SOURCE_READER], on_decode_error="ignore"))
