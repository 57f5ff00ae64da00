"""`foundry <modality> pretrain` as a user runs it: outputs, exact resume, and bad input."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# A few-second protein run: tiny model, short rows, a couple of hundred real UniProt sequences.
TINY = [
    "--set", "model.overrides.n_layer=2", "--set", "model.overrides.d_model=64", "--set", "model.overrides.n_head=4",
    "--set", "model.overrides.d_ff=128", "--set", "data.max_len=128", "--set", "data.batch_tokens=1024",
    "--set", "data.max_train_docs=300", "--set", "data.max_valid_docs=20", "--set", "train.log_every=1",
    "--set", "train.eval_every=4", "--set", "train.eval_batches=2", "--set", "train.warmup_steps=2", "--quiet",
]


# Only a guard against a hung run, never a race: a loaded machine may be ten times slower.
TIMEOUT = 1800


def foundry(*args, check=True, timeout=TIMEOUT, prelude=None):
    """Run ``python -m foundry ARGS`` (or ``python -c PRELUDE ARGS``, PRELUDE ending in main()).

    The command runs in its own session so that a timeout kills the whole process group
    (torchrun and its workers too), not only the launcher.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    command = [sys.executable, *(["-c", prelude] if prelude else ["-m", "foundry"]), *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"foundry {' '.join(args)} still running after {timeout} s:\n{stdout}\n{stderr}") from None
    result = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"foundry {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if "loss" in m}


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


# Dies by SIGKILL as it starts to write the step-6 checkpoint: steps 5 and 6 ran and were logged,
# step-000004 is the latest checkpoint. The crash point is fixed by the run itself, not by how fast
# the test notices a file, so the outcome does not depend on the machine's load.
DIE_AT_STEP_6 = """
import os, signal, sys
import foundry.train as train

real = train.save_checkpoint

def save_or_die(*args, **kwargs):
    step = args[1] if len(args) > 1 else kwargs["step"]
    if step >= 6:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

train.save_checkpoint = save_or_die
from foundry.cli import main
main(sys.argv[1:])
"""


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


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "esm2_t6_9M"], "unknown protein preset 'esm2_t6_9M'. Did you mean 'esm2_t6_8M'?"),
        (["--set", "train.lrr=1"], "unknown config key train.lrr. Did you mean train.lr?"),
        (["--data", "does/not/exist.fasta"], "does/not/exist.fasta: no such file or directory"),
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
