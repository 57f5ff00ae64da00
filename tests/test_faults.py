"""Faults a long run meets: divergence, a second writer, kills and signals, changes on resume.

Each test drives `foundry protein pretrain` as a user (or a scheduler) would; subprocesses are
waited on through files they write, never through a clock, so a busy machine only makes them slower.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from foundry.hookspecs import hookimpl
from foundry.objectives import MaskedLM
from foundry.rundir import locked
from foundry.testing import plugins_registered, run_cli
from conftest import TINY_PRETRAIN as TINY, foundry, losses


def start(*args) -> subprocess.Popen:
    # The same environment as conftest's foundry(): one intra-op thread, so a run and its
    # reference reduce in the same order and their losses compare exactly.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")} | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "foundry", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, what: str, limit: float = 1800) -> None:
    """Poll until ``condition()``; fail if the process ends first. ``limit`` only guards a hang."""
    deadline = time.monotonic() + limit
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{proc.stdout.read()}\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"no {what} after {limit} s")
        time.sleep(0.2)


def logged_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if '"loss"' in line) if path.is_file() else 0


def all_finite(checkpoint: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(checkpoint / "model" / "model.safetensors")).values())


class NanAtStep3(MaskedLM):
    """Masked LM whose loss turns NaN from the third training batch on: a divergence on cue."""

    name = "mlm-nan-at-3"

    def __call__(self, model, tokens, document_ids, *, generator, train=True, device="cpu"):
        loss, labels = super().__call__(model, tokens, document_ids, generator=generator, train=train, device=device)
        return (loss * float("nan") if train and self.calls_so_far() >= 3 else loss), labels

    def calls_so_far(self) -> int:
        self.calls = getattr(self, "calls", 0) + 1
        return self.calls


class NanPlugin:
    @hookimpl
    def register_objectives(register):
        register(NanAtStep3)


def test_divergence_stops_the_run_and_keeps_only_finite_checkpoints(tmp_path):
    out = tmp_path / "run"
    with plugins_registered(("nan", NanPlugin), autoload=True):
        result = run_cli("protein", "pretrain", "--out", str(out), "--max-steps", "8", "--save-every", "1",
                         "--set", "objective.name=mlm-nan-at-3", *TINY)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: training diverged at step 3: loss nan")
    kept = sorted((out / "checkpoints").glob("step-*"))
    assert [p.name for p in kept] == ["step-000001", "step-000002"] and all(all_finite(p) for p in kept)
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-000002"
    assert not (out / "final").exists() and not (out / "summary.json").exists()

    # on_nonfinite=skip: the bad steps are skipped (logged without a loss), the run finishes
    with plugins_registered(("nan", NanPlugin), autoload=True):
        result = run_cli("protein", "pretrain", "--out", str(tmp_path / "skip"), "--max-steps", "4", "--save-every", "2",
                         "--set", "objective.name=mlm-nan-at-3", "--set", "train.on_nonfinite=skip", *TINY)
    assert result.exit_code == 0, result.output
    steps = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]
    assert [s["loss"] is None for s in steps] == [False, False, True, True]


def test_a_huge_learning_rate_is_caught_not_saved(tmp_path):
    out = tmp_path / "run"
    result = foundry("protein", "pretrain", "--out", str(out), "--max-steps", "30", "--save-every", "1",
                     "--set", "train.lr=1e4", "--set", "train.warmup_steps=0", *TINY, check=False)
    assert result.returncode == 2 and "training diverged" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    for checkpoint in (out / "checkpoints").glob("step-*") if out.exists() else []:
        assert all_finite(checkpoint), checkpoint


def test_a_second_run_on_the_same_out_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with locked(out):  # as a running foundry process holds it
        result = foundry("protein", "pretrain", "--out", str(out), "--max-steps", "2", *TINY, check=False)
    assert result.returncode == 2, result.stderr
    assert f"error: {out}: another foundry run is writing to this directory (pid {os.getpid()})" in result.stderr
    foundry("protein", "pretrain", "--out", str(out), "--max-steps", "2", *TINY)  # free again: it runs


def kill_before_first_checkpoint(out: Path) -> None:
    proc = start("protein", "pretrain", "--out", str(out), "--max-steps", "500", "--save-every", "500", *TINY)
    wait_for(lambda: logged_steps(out) >= 2, proc, "two logged steps")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "config.yaml").is_file() and not (out / "checkpoints" / "LATEST").exists()


def test_a_run_killed_before_its_first_checkpoint_resumes_from_scratch_or_starts_over(tmp_path):
    out = tmp_path / "run"
    kill_before_first_checkpoint(out)
    result = foundry("protein", "pretrain", "--resume", str(out), "--max-steps", "3")
    assert "no checkpoint yet: starting the run over from step 0" in result.stderr
    assert sorted(losses(out)) == [1, 2, 3] and (out / "final").is_dir()

    again = tmp_path / "again"
    kill_before_first_checkpoint(again)
    foundry("protein", "pretrain", "--out", str(again), "--max-steps", "2", *TINY)  # a fresh start may reuse it
    assert sorted(losses(again)) == [1, 2]


def test_sigterm_saves_a_checkpoint_and_resume_continues_exactly(tmp_path):
    reference = tmp_path / "reference"
    foundry("protein", "pretrain", "--out", str(reference), "--max-steps", "12", "--save-every", "100", *TINY)
    out = tmp_path / "run"
    proc = start("protein", "pretrain", "--out", str(out), "--max-steps", "12", "--save-every", "100", *TINY)
    wait_for(lambda: logged_steps(out) >= 3, proc, "three logged steps")
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate()
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (a very fast machine)")
    assert proc.returncode == 143, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: stopped by SIGTERM at step ") and "checkpoint saved" in line and "--resume" in line
    step = int(line.split("at step ")[1].split(";")[0])
    assert (out / "checkpoints" / f"step-{step:06d}").is_dir()
    foundry("protein", "pretrain", "--resume", str(out))
    assert losses(out) == losses(reference)


def test_resume_refuses_changes_that_alter_the_run_and_keeps_config_true(tmp_path):
    out = tmp_path / "run"
    foundry("protein", "pretrain", "--out", str(out), "--max-steps", "2", *TINY)
    saved = (out / "config.yaml").read_text()
    for change in (["--seed", "5"], ["--set", "model.overrides.n_layer=4"], ["--set", "objective.mask_prob=0.3"]):
        result = foundry("protein", "pretrain", "--resume", str(out), *change, check=False)
        assert result.returncode == 2 and "cannot change" in result.stderr and "that would alter the run" in result.stderr, change
        assert (out / "config.yaml").read_text() == saved
    result = foundry("protein", "pretrain", "--resume", str(out), "--set", "model.overrides.n_layer=4", check=False)
    assert "model.overrides" in result.stderr
    foundry("protein", "pretrain", "--resume", str(out), "--max-steps", "3")
    assert "max_steps: 3" in (out / "config.yaml").read_text()
    assert sorted(losses(out)) == [1, 2, 3]


def test_leftovers_of_killed_writes_are_cleaned_on_the_next_start(tmp_path):
    out = tmp_path / "run"
    foundry("protein", "pretrain", "--out", str(out), "--max-steps", "2", "--save-every", "1", *TINY)
    (out / "checkpoints" / ".step-000003.tmp-abc").mkdir()
    (out / "checkpoints" / ".step-000003.tmp-abc" / "optimizer.pt").write_bytes(b"x" * 1000)
    (out / ".final.tmp").mkdir()
    foundry("protein", "pretrain", "--resume", str(out), "--max-steps", "3")
    assert not list(out.glob(".*tmp*")) and not list((out / "checkpoints").glob(".*tmp*"))


def test_resuming_keeps_the_metrics_log_if_the_rewrite_is_interrupted(tmp_path, monkeypatch):
    from foundry import metrics

    log = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 6)]
    log.write_text("\n".join(lines) + "\n" + '{"step": 6, "lo')  # a line cut short by a crash

    def interrupted(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(metrics, "atomic_write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        metrics.MetricsLog(log, truncate_after_step=3)
    assert log.read_text().startswith("\n".join(lines))  # untouched, not emptied
    monkeypatch.undo()
    metrics.MetricsLog(log, truncate_after_step=3).close()
    assert log.read_text() == "\n".join(lines[:3]) + "\n"
