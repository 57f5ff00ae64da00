"""Several CPU processes (gloo) train the same model as one process with gradient accumulation,
and a run resumes with a different number of processes on the same sample stream."""

import json
import shutil

import pytest

from conftest import TINY_PRETRAIN as TINY, foundry, losses


def _tokens(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["tokens"] for m in lines if "loss" in m}


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    foundry("protein", "pretrain", "--out", str(out), "--max-steps", "8", "--save-every", "4", "--set", "train.grad_accum=2", *TINY)
    return out


def test_two_processes_equal_one_process_with_accumulation(single_process_run, tmp_path):
    out = tmp_path / "ddp"
    foundry("protein", "pretrain", "--processes", "2", "--out", str(out), "--max-steps", "8", "--save-every", "4", *TINY)
    one, two = losses(single_process_run), losses(out)
    assert one.keys() == two.keys() == set(range(1, 9))
    for step in one:
        assert abs(one[step] - two[step]) < 1e-5, (step, one[step], two[step])
    assert _tokens(single_process_run) == _tokens(out), "the same real tokens were consumed"


def test_resume_with_a_different_number_of_processes(single_process_run, tmp_path):
    # Stop a 2-process run right after its step-4 checkpoint, then finish it in 1 process.
    out = tmp_path / "ddp"
    foundry("protein", "pretrain", "--processes", "2", "--out", str(out), "--max-steps", "8", "--save-every", "4", *TINY)
    shutil.rmtree(out / "checkpoints" / "step-000008")
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    (out / "checkpoints" / "LATEST").write_text("step-000004\n")

    foundry("protein", "pretrain", "--resume", str(out), "--set", "train.grad_accum=2", "--quiet")
    reference = losses(single_process_run)
    resumed = losses(out)
    for step in range(5, 9):
        assert abs(reference[step] - resumed[step]) < 1e-5, (step, reference[step], resumed[step])


def test_an_error_in_the_workers_is_one_line_not_a_torchrun_traceback(tmp_path):
    result = foundry("protein", "pretrain", "--processes", "2", "--out", str(tmp_path / "run"), "--max-steps", "0", check=False)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == "error: train.max_steps: 0 is not allowed; must be an integer >= 1 (optimizer steps to train)", result.stderr
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in result.stderr
