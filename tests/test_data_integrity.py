"""Prepared data that changed after ``prepare``: refused before training, naming the file.

A shard corrupted in place keeps its size, so the size checks pass: with out-of-range ids the
run used to crash mid-training (``IndexError: index out of range in self``), with in-range ids it
trained silently on garbage. The manifest now records the sha256 of every shard file and opening
the data for training checks them. A missing or malformed ``manifest.json`` is named (it used to
read as "no readable files in this folder"), and token ids beyond the model's vocabulary are
refused by ``check_fits_vocab``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from foundry.cli import main
from foundry.data.dataset import InMemoryTokens, check_fits_vocab
from foundry.data.manifest import is_prepared, open_prepared
from foundry.data.order import ConcatTokens
from foundry.data.shards import file_sha256
from foundry.errors import DataError

FASTA = Path(__file__).parent / "data" / "protein" / "some_proteins.fasta"


def run(capsys, *args) -> tuple[int, str]:
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture
def prepared(tmp_path, capsys) -> Path:
    out = tmp_path / "prepared"
    assert run(capsys, "protein", "prepare", FASTA, "-o", out, "--valid-fraction", "0.2")[0] == 0
    return out


def pretrain_error(capsys, tmp_path, data: Path) -> str:
    """What ``pretrain --data DATA`` says on stderr; it must fail before training, with exit 2."""
    code, err = run(capsys, "protein", "pretrain", "--data", data, "--out", tmp_path / "run", "--max-steps", "1", "--quiet")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp_path / "run" / "final").exists()
    return lines[0]


def test_manifest_records_a_checksum_for_every_shard_file(prepared):
    checksums = json.loads((prepared / "manifest.json").read_text())["checksums"]
    files = sorted(str(p.relative_to(prepared)) for p in prepared.glob("*/shard-*/*"))
    assert sorted(checksums) == files and len(files) == 8  # train + valid, one shard each, four files
    assert all(checksums[f] == file_sha256(prepared / f) for f in files)


@pytest.mark.parametrize("new_id", [5, 60000], ids=["in-range", "out-of-range"])
def test_same_size_corruption_is_refused_before_training(prepared, tmp_path, capsys, new_id):
    tokens = prepared / "train" / "shard-00000" / "tokens.bin"
    data = np.fromfile(tokens, dtype=np.uint16)
    data[7] = new_id if data[7] != new_id else new_id + 1
    data.tofile(tokens)  # same size: only the checksum can tell
    with pytest.raises(DataError) as err:
        open_prepared(prepared)
    assert str(err.value).startswith(f"{tokens}: contents differ from the sha256 recorded in {prepared / 'manifest.json'} (")
    assert pretrain_error(capsys, tmp_path, prepared).startswith(f"error: {tokens}: contents differ from the sha256")
    open_prepared(prepared, checksums=False)  # a caller that only wants the tokenizer is not held up


def test_manifest_without_checksums_still_refuses_out_of_range_ids(prepared):
    manifest = prepared / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["checksums"]  # as written before checksums were recorded
    manifest.write_text(json.dumps(data))
    tokens = prepared / "train" / "shard-00000" / "tokens.bin"
    ids = np.fromfile(tokens, dtype=np.uint16)
    ids[3] = 40
    ids.tofile(tokens)
    with pytest.raises(DataError, match=rf"^{tokens}: record '[^']+' holds token id 40, outside the vocabulary of 33 ids in {manifest}"):
        open_prepared(prepared)


def test_a_shard_file_without_a_checksum_is_named(prepared):
    manifest = prepared / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["checksums"]["valid/shard-00000/offsets.npy"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"manifest.json: no checksum for valid/shard-00000/offsets.npy"):
        open_prepared(prepared)


def test_missing_or_malformed_manifest_is_named_not_read_as_raw_files(prepared, tmp_path, capsys):
    manifest = prepared / "manifest.json"
    good = manifest.read_text()
    manifest.write_text(good[: len(good) // 2])
    assert pretrain_error(capsys, tmp_path, prepared).startswith(f"error: {manifest}: not valid JSON")
    manifest.write_text(json.dumps({**json.loads(good), "vocab_size": "many"}))
    assert pretrain_error(capsys, tmp_path, prepared).startswith(f"error: {manifest}: malformed entry")
    manifest.unlink()
    assert pretrain_error(capsys, tmp_path, prepared) == (
        f"error: {prepared}: manifest.json is missing: the prepare did not finish; run prepare again"
    )


def test_a_raw_folder_with_another_tools_manifest_is_still_raw(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "proteins.fasta").write_text(FASTA.read_text())
    (tmp_path / "corpus" / "manifest.json").write_text('{"name": "my-extension", "version": "1.0"}')
    assert not is_prepared(tmp_path / "corpus")


def test_ids_beyond_the_models_vocabulary_are_refused(prepared):
    data = open_prepared(prepared)
    check_fits_vocab(data.train, 33)  # the ESM alphabet: fits, and no scan is needed
    with pytest.raises(DataError) as err:
        check_fits_vocab(ConcatTokens([data.train, data.train]), 20)  # a mixture checks every source
    message = str(err.value)
    assert message.startswith(f"{prepared / 'train' / 'shard-00000' / 'tokens.bin'}: record ")
    assert "holds token id 2" in message and "only 20 token embeddings" in message

    memory = InMemoryTokens([np.array([0, 5, 2]), np.array([0, 31, 2])], ["a", "b"], "fp")
    check_fits_vocab(memory, 32)
    with pytest.raises(DataError, match=r"^training data, record 'b' holds token id 31, but the model has only 31 token embeddings"):
        check_fits_vocab(memory, 31)
