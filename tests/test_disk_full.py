"""A disk that fills up: one line naming the path and the sizes, every earlier output intact and
loadable, nothing half-written left behind.

Most tests inject the failure the way each library reports it (an ``OSError`` with ENOSPC, numpy's
short write without an errno, safetensors' ``SafetensorError``, torch.save's "unexpected pos");
the last ones fill a real 1-2 MB tmpfs, and skip when this machine does not let us mount one.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import SafetensorError

from foundry.atomic import DiskFullError, atomic_directory, atomic_write, atomic_write_text, is_disk_full
from foundry.cli import main
from test_embed import small_fasta, tiny  # noqa: F401 - fixtures: a tiny fair-esm model and a FASTA
from test_pretrain_cli import TINY, foundry

FASTA = Path(__file__).parent / "data" / "protein" / "some_proteins.fasta"

# How each library says "disk full" (seen on a full tmpfs; numpy and torch give no errno).
LIBRARY_ERRORS = {
    "oserror": OSError(errno.ENOSPC, "No space left on device"),
    "quota": OSError(errno.EDQUOT, "Disk quota exceeded"),
    "numpy": OSError("1000000 requested and 262128 written"),
    "safetensors": SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    "torch": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
}


def run(capsys, *args) -> tuple[int, str, str]:
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    """The error line, checked to be the only thing on stderr apart from progress bars."""
    lines = [ln for ln in err.splitlines() if ln.strip() and "\r" not in ln and not ln.startswith("prepare:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# -- the helpers -----------------------------------------------------------------------------------


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_text("old\n")

    def write(handle):
        handle.write("new\n" * 300_000)  # 1.2 MB reached the disk before it filled up
        handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as info:
        atomic_write(target, write)
    assert str(info.value).startswith(f"{target}: no space left on device (needed more than 1.1 MB, ")
    assert str(info.value).endswith(" free on that filesystem)")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["config.yaml"]


@pytest.mark.parametrize("library", sorted(LIBRARY_ERRORS))
def test_atomic_directory_on_a_full_disk_keeps_the_old_directory(tmp_path, library):
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights").write_text("old")
    with pytest.raises(DiskFullError) as info:
        with atomic_directory(out, needed=5 * 2**20) as tmp:
            (tmp / "weights").write_text("half")
            raise LIBRARY_ERRORS[library]
    assert str(info.value).startswith(f"{out}: no space left on device (needed about 5.0 MB, ")
    assert (out / "weights").read_text() == "old" and os.listdir(tmp_path) == ["model"]


def test_other_failures_are_not_called_a_full_disk(tmp_path):
    for error in (OSError(errno.EACCES, "Permission denied"), RuntimeError("boom"), KeyError("x")):
        assert not is_disk_full(error)
        with pytest.raises(type(error)):
            with atomic_directory(tmp_path / "out"):
                raise error
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_outputs_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "file.txt", "x")
        with atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "inner.txt").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "file.txt").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~mask


def test_the_cli_turns_an_unwrapped_full_disk_into_one_line(capsys, monkeypatch):
    import click

    import foundry.cli as cli

    @click.group()
    def root():
        pass

    @root.command()
    def train():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/metrics.jsonl")

    monkeypatch.setattr(cli, "build_cli", lambda: root)
    code, _, err = run(capsys, "train")
    assert code == 2
    assert error_line(err).startswith("error: /data/run/metrics.jsonl: no space left on device (")


# -- the commands, with the failure injected ---------------------------------------------------------


def test_prepare_on_a_full_disk_keeps_the_earlier_data(tmp_path, capsys, monkeypatch):
    from foundry.data import shards
    from foundry.data.manifest import open_prepared

    out = tmp_path / "prepared"
    assert run(capsys, "protein", "prepare", FASTA, "-o", out)[0] == 0
    before = (out / "manifest.json").read_text()

    def short_write(path, arr, fsync):  # numpy's way: an OSError without errno
        raise OSError(f"{arr.size * 8} requested and 4096 written")

    monkeypatch.setattr(shards, "_save_npy", short_write)
    code, _, err = run(capsys, "protein", "prepare", FASTA, "-o", out, "--overwrite")
    assert code == 2
    assert error_line(err).startswith(f"error: {out}: no space left on device (needed more than ")
    assert (out / "manifest.json").read_text() == before and len(open_prepared(out).train) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temp folder left


def test_embed_on_a_full_disk_keeps_the_earlier_embeddings(tiny, small_fasta, tmp_path, capsys, monkeypatch):  # noqa: F811
    from modalities.protein import embed

    _, model = tiny
    out = tmp_path / "emb"
    assert run(capsys, "protein", "embed", "--model", model, small_fasta, "-o", out, "--device", "cpu")[0] == 0
    before = (out / "index.json").read_text()

    real, calls = embed._save, []

    def fills_up(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(*args)

    monkeypatch.setattr(embed, "_save", fills_up)
    code, _, err = run(capsys, "protein", "embed", "--model", model, small_fasta, "-o", out, "--device", "cpu", "--overwrite")
    assert code == 2
    assert error_line(err).startswith(f"error: {out}: no space left on device (needed about ")
    assert (out / "index.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]


def test_import_on_a_full_disk_leaves_nothing(tiny, tmp_path, capsys, monkeypatch):  # noqa: F811
    import safetensors.torch

    _, model = tiny

    def full(*args, **kwargs):
        raise LIBRARY_ERRORS["safetensors"]

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "imported"
    code, _, err = run(capsys, "protein", "import", model, "-o", out)
    assert code == 2
    assert "no space left on device" in error_line(err)
    assert not out.exists() and os.listdir(tmp_path) == []


# The checkpoint of step 4 fails the way torch.save fails on a full disk (RuntimeError, no errno).
FULL_AT_STEP_4 = """
import sys, torch
real = torch.save

def save(obj, f, *args, **kwargs):
    if "step-000004" in str(f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    return real(obj, f, *args, **kwargs)

torch.save = save
from foundry.cli import main
main(sys.argv[1:])
"""


def test_pretrain_on_a_full_disk_keeps_the_earlier_checkpoints(tmp_path):
    out = tmp_path / "run"
    result = foundry("protein", "pretrain", "--out", str(out), "--max-steps", "6", "--save-every", "2", *TINY,
                     prelude=FULL_AT_STEP_4, check=False)
    assert result.returncode == 2, result.stderr
    assert "no space left on device" in error_line(result.stderr)
    _check_resumable(out, "step-000002")
    foundry("protein", "pretrain", "--resume", str(out), "--quiet")  # with room again, it finishes
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-000006"


def _check_resumable(run_dir: Path, step: str) -> None:
    """LATEST names ``step``; it loads; no temporary checkpoint or final model is left."""
    from foundry.checkpoint import latest_checkpoint, load_trainer_files
    from foundry.model.store import load_model

    path = latest_checkpoint(run_dir)
    assert path.name == step
    load_model(path / "model")
    load_trainer_files(path)
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} <= {"LATEST", "step-000002", step}
    assert not (run_dir / "final").exists() and not (run_dir / "summary.json").exists()
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]


# -- a real full filesystem --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of the given size (root only; skipped where mounting is not allowed)."""
    mounted = []

    def mount(size_bytes: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        kib = max(64, size_bytes // 1024)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip() or result.returncode}")
        mounted.append(where)
        return where

    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_prepare_fills_a_real_disk(small_disk, tmp_path, capsys):
    rng = random.Random(0)
    big = tmp_path / "big.fasta"
    big.write_text("".join(f">p{i}\n{''.join(rng.choices('ACDEFGHIKLMNPQRSTVWY', k=500))}\n" for i in range(3000)))
    disk = small_disk(1 << 20)  # 1 MB for 1.5 M tokens of uint16
    earlier = disk / "earlier"
    assert run(capsys, "protein", "prepare", FASTA, "-o", earlier)[0] == 0
    code, _, err = run(capsys, "protein", "prepare", big, "-o", disk / "big")
    assert code == 2
    assert error_line(err).startswith(f"error: {disk / 'big'}: no space left on device (needed more than ")
    assert sorted(p.name for p in disk.iterdir()) == ["earlier"]
    from foundry.data.manifest import open_prepared

    assert len(open_prepared(earlier).train) > 0


def test_pretrain_fills_a_real_disk(small_disk, tmp_path):
    # Size the disk from a real checkpoint: room for the first one, not for the second.
    probe = tmp_path / "probe"
    foundry("protein", "pretrain", "--out", str(probe), "--max-steps", "2", "--save-every", "2", *TINY)
    size = sum(p.stat().st_size for p in (probe / "checkpoints" / "step-000002").rglob("*") if p.is_file())
    disk = small_disk(int(size * 1.5))
    out = disk / "run"
    result = foundry("protein", "pretrain", "--out", str(out), "--max-steps", "6", "--save-every", "2", *TINY, check=False)
    assert result.returncode == 2, result.stderr
    assert "no space left on device" in error_line(result.stderr)
    _check_resumable(out, "step-000002")


def test_finetune_on_a_full_disk_keeps_the_best_model(tmp_path):
    import torch

    from foundry.model import Transformer, from_name
    from foundry.finetune.store import load_finetuned
    from foundry.model.store import save_model
    from modalities.protein.alphabet import EsmTokenizer

    torch.manual_seed(0)
    model = tmp_path / "tiny"
    save_model(model, Transformer(from_name("esm2_tiny", n_layer=1, d_model=32, n_head=2, d_ff=64)), EsmTokenizer(), "protein")
    data = Path(__file__).parent / "data" / "finetune"
    out = tmp_path / "run"
    result = foundry("protein", "finetune", "--from", str(model), "--task", "sequence-classification",
                     "--train", str(data / "amp_valid.csv"), "--valid", str(data / "amp_valid.csv"), "--out", str(out),
                     "--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--no-forgetting", "--quiet",
                     prelude=FULL_AT_STEP_4, check=False)
    assert result.returncode == 2, result.stderr
    assert "no space left on device" in error_line(result.stderr)
    load_finetuned(out / "best")  # saved at an earlier evaluation, still whole
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
