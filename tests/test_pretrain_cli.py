"""`foundry <modality> pretrain` as a user runs it: outputs, exact resume, and bad input."""

import json
import signal

import pytest

from conftest import DIE_AT_STEP_6, TINY_PRETRAIN as TINY, foundry, losses  # noqa: F401 - test_faults imports them from here


def test_protein_pretrain_writes_metrics_checkpoints_and_a_final_model(tmp_path):
    out = tmp_path / "run"
    result = foundry("protein", "pretrain", "--out", str(out), "--max-steps", "8", "--save-every", "4", *TINY)
    assert "final val_loss" in result.stdout and "unigram baseline" in result.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    for r in train:
        assert {"step", "loss", "lr", "tokens", "tokens_per_s"} <= set(r)
    assert train[-1]["tokens"] > train[0]["tokens"] > 0
    assert any("val_loss" in r for r in records)
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-000008"
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 8 and summary["modality"] == "protein"
    again = foundry("protein", "pretrain", "--out", str(out), "--max-steps", "8", *TINY, check=False)
    assert again.returncode != 0 and "already holds files; continue it with --resume" in again.stderr


def test_killed_run_resumes_with_identical_losses(tmp_path):
    reference = tmp_path / "reference"
    foundry("protein", "pretrain", "--out", str(reference), "--max-steps", "12", "--save-every", "2", *TINY)

    interrupted = tmp_path / "interrupted"
    killed = foundry("protein", "pretrain", "--out", str(interrupted), "--max-steps", "12", "--save-every", "2", *TINY,
                     prelude=DIE_AT_STEP_6, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (interrupted / "checkpoints" / "LATEST").read_text().strip() == "step-000004"
    assert max(losses(interrupted)) == 6 and not (interrupted / "summary.json").exists()

    foundry("protein", "pretrain", "--resume", str(interrupted), "--quiet")
    assert losses(interrupted) == losses(reference)


def test_bad_fasta_fails_with_one_line_and_leaves_no_run(tmp_path):
    bad = tmp_path / "bad.fasta"
    bad.write_text(">ok\nMKV\n>broken\nMK1V\n")
    out = tmp_path / "run"
    result = foundry("protein", "pretrain", "--data", str(bad), "--out", str(out), *TINY, check=False)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and "bad.fasta" in message and "broken" in message
    assert not out.exists()


def test_rows_longer_than_the_model_positions_are_refused_before_training(tmp_path):
    result = foundry("protein", "pretrain", "--out", str(tmp_path / "run"), *TINY, "--set", "data.max_len=2048",
                     "--set", "data.batch_tokens=4096", check=False)
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    assert result.stderr.strip().endswith("data.max_len 2048: the model has 1026 positions; set data.max_len <= 1026")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "esm2_t6_9M"], "unknown protein preset 'esm2_t6_9M'. Did you mean 'esm2_t6_8M'?"),
        (["--set", "train.lrr=1"], "unknown config key train.lrr. Did you mean train.lr?"),
        (["--data", "does/not/exist.fasta"], "does/not/exist.fasta: no such file or directory"),
        (["--set", "objective.name=clm"], "objective clm needs a causal model; this one is masked"),
        (["--set", "objective.name=mln"], "unknown objective 'mln'. Did you mean 'mlm'?"),
    ],
)
def test_bad_arguments_name_what_is_wrong(tmp_path, args, expected):
    out = tmp_path / "run"
    result = foundry("protein", "pretrain", "--out", str(out), *args, *TINY, check=False)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_resume_on_something_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = foundry("protein", "pretrain", "--resume", str(tmp_path), check=False)
    assert result.returncode != 0 and "not a foundry run" in result.stderr
    result = foundry("protein", "pretrain", "--resume", str(tmp_path / "nope"), check=False)
    assert result.returncode != 0 and "nope" in result.stderr


def test_unknown_modality():
    result = foundry("dna", "pretrain", check=False)
    assert result.returncode != 0 and "No such command 'dna'" in result.stderr


def test_a_tracker_that_is_not_installed_is_an_error(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    out = tmp_path / "run"
    result = foundry("protein", "pretrain", "--out", str(out), "--set", "train.report_to=[tensorboard]", *TINY, check=False)
    assert result.returncode != 0 and "train.report_to: tensorboard not installed (pip install tensorboard)" in result.stderr
    assert not out.exists()
