"""One undecodable byte in one of 59 text files: a clear error by default (file, line, byte
offset) from `train-tokenizer` and `pretrain`; `--on-decode-error skip` leaves the file out and
says how many were skipped."""

from pathlib import Path

import pytest

from foundry.cli import main

BAD = "f58.txt:2: not UTF-8 text (byte 0xe9 at byte offset 20)"
TINY_TEXT = ["--set", "tokenizer.vocab_size=300", "--set", "model.overrides.n_layer=1", "--set", "model.overrides.d_model=32",
             "--set", "model.overrides.n_head=2", "--set", "model.overrides.n_kv_heads=1", "--set", "model.overrides.d_ff=64",
             "--set", "data.max_len=64", "--set", "data.batch_tokens=256", "--set", "train.eval_batches=1",
             "--set", "data.valid_fraction=0.2", "--max-steps", "1", "--quiet"]


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(58):
        (folder / f"f{i:02d}.txt").write_text(f"Document {i}: some words here and there.\n\n" * 20)
    (folder / "f58.txt").write_bytes(b"good line\nsecond caf\xe9 line\n")  # latin-1
    return folder


def foundry(capsys, *args) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_tokenizer_stops_at_the_bad_file_by_default(corpus, tmp_path, capsys):
    code, _, err = foundry(capsys, "text", "train-tokenizer", corpus, "-o", tmp_path / "tok", "--vocab-size", 300)
    assert code == 2
    assert err.strip() == (f"error: {(corpus / BAD).as_posix()}; convert it to UTF-8, or leave such files out with "
                           "--on-decode-error skip")
    assert not (tmp_path / "tok").exists()


def test_train_tokenizer_can_skip_and_count(corpus, tmp_path, capsys):
    code, out, err = foundry(capsys, "text", "train-tokenizer", corpus, "-o", tmp_path / "tok", "--vocab-size", 300,
                             "--on-decode-error", "skip")
    assert code == 0, err
    assert f"foundry: skipping {(corpus / BAD).as_posix()}" in err
    assert "foundry: skipped 1 of 59 files that are not UTF-8 text" in err
    assert (tmp_path / "tok" / "tokenizer.json").is_file()


def test_pretrain_stops_at_the_bad_file_by_default(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = foundry(capsys, "text", "pretrain", "--data", corpus, "--out", out, *TINY_TEXT)
    assert code == 2 and f"error: {(corpus / BAD).as_posix()}; " in err
    assert not (out / "config.yaml").exists()


def test_pretrain_skips_with_the_flag_and_records_the_policy(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = foundry(capsys, "text", "pretrain", "--data", corpus, "--out", out, "--on-decode-error", "skip", *TINY_TEXT)
    assert code == 0, err
    assert "foundry: skipped 1 of 59 files that are not UTF-8 text" in err and "final val_loss" in stdout
    assert "on_decode_error: skip" in (out / "config.yaml").read_text()


def test_prepare_stops_at_the_bad_file_or_skips_and_counts(corpus, tmp_path, capsys):
    code, _, err = foundry(capsys, "text", "prepare", corpus, "-o", tmp_path / "data", "--vocab-size", 300)
    assert code == 2 and f"error: {(corpus / BAD).as_posix()}; " in err
    assert not (tmp_path / "data").exists()
    code, out, err = foundry(capsys, "text", "prepare", corpus, "-o", tmp_path / "data", "--vocab-size", 300,
                             "--on-decode-error", "skip")
    assert code == 0, err
    assert "foundry: skipped 1 of 59 files that are not UTF-8 text" in err
    manifest = (tmp_path / "data" / "manifest.json").read_text()
    assert "f58.txt" not in manifest and "f57.txt" in manifest
