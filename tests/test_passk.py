"""pass@k: the unbiased estimator equals the closed form; canonical stdlib solutions pass their tests;
hanging, crashing, exiting-early and networking completions are failures that never take foundry down;
bad problem/completion files are one line naming file and line."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import pytest

from foundry.testing import run_cli
from modalities.code.execution import Limits, run_program
from modalities.code.passk import execute, pass_at_k, read_problems, summarize

PROBLEMS = Path(__file__).parent / "data" / "stdlib_humaneval.jsonl"


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (5, 2, 1), (10, 3, 5), (20, 1, 10), (200, 13, 100), (7, 7, 3), (10, 2, 9)])
def test_pass_at_k_equals_the_closed_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), rel=1e-9, abs=1e-12)


def test_pass_at_1_is_the_fraction_correct_and_k_needs_samples():
    pairs = [("a", "")] * 4 + [("b", "")] * 4
    passed = [True, False, False, False, True, True, False, False]
    outcomes = [type("O", (), {"passed": p})() for p in passed]
    got = summarize(pairs, outcomes, ks=(1, 2, 10))
    assert got["pass@1"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert got["pass@2"] == pytest.approx(((1 - math.comb(3, 2) / 6) + (1 - math.comb(2, 2) / 6)) / 2)
    assert "pass@10" not in got  # 4 samples per task cannot estimate pass@10


def test_canonical_solutions_pass_and_wrong_ones_fail(tmp_path):
    problems = read_problems(PROBLEMS)
    assert len(problems) >= 12
    pairs = [(t, p.canonical_solution) for t, p in problems.items()] + [("stdlib/calendar.isleap", "    return year % 4 == 0\n")]
    outcomes = execute(problems, pairs, Limits(timeout=20), workers=2)
    assert all(o.passed for o in outcomes[:-1]), [(t, o.result) for (t, _), o in zip(pairs, outcomes) if not o.passed]
    assert outcomes[-1].result == "failed: AssertionError"


def test_hangs_crashes_and_early_exits_are_failures():
    hang, quick = Limits(timeout=1.0), Limits(timeout=30.0)  # generous where the program ends by itself
    assert run_program("while True:\n    pass\n", hang).result.startswith("timed out")
    assert run_program("import time\ntime.sleep(60)\n", hang).result == "timed out"
    assert run_program("import os\nos._exit(0)\n", quick).result == "failed: exited before the tests finished"
    assert run_program("import sys\nsys.exit(0)\n", quick).result == "failed: exited before the tests finished"
    assert run_program("import ctypes\nctypes.string_at(0)\n", quick).result == "crashed: signal 11 (SIGSEGV)"
    assert "MemoryError" in run_program("x = bytearray(8 << 30)\n", quick).result
    assert "network access is disabled" in run_program("import socket\nsocket.create_connection(('127.0.0.1', 9))\n", quick).result
    assert run_program("print('ok')\n", quick).passed


def test_cli_scores_completions_from_gzipped_problems(tmp_path):
    problems = tmp_path / "p.jsonl.gz"
    with open(PROBLEMS, "rb") as src, gzip.open(problems, "wb") as dst:
        shutil.copyfileobj(src, dst)
    rows = [json.loads(line) for line in PROBLEMS.read_text().splitlines()][:2]
    completions = tmp_path / "c.jsonl"
    completions.write_text("".join(json.dumps({"task_id": r["task_id"], "completion": c}) + "\n"
                                   for r in rows for c in (r["canonical_solution"], "    while True:\n        pass\n")))
    result = run_cli("code", "evaluate", "--problems", problems, "--completions", completions, "--timeout", "2",
                     "--results", tmp_path / "r.jsonl", "--k", "1", "--k", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["pass@1"] == pytest.approx(0.5) and summary["pass@2"] == pytest.approx(1.0)
    assert summary["tasks"] == 2 and summary["samples"] == 4
    results = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in results] == [True, False, True, False]
    assert results[1]["result"].startswith("timed out")


def test_bad_problem_and_completion_files(tmp_path):
    good = json.loads(PROBLEMS.read_text().splitlines()[0])
    bad_problems = tmp_path / "bad.jsonl"
    bad_problems.write_text(json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "test"}) + "\n")
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps(good) + "\n")
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"task_id": good["task_id"], "completion": ""}) + "\n" + json.dumps({"task_id": "nope", "completion": ""}) + "\n")
    no_completion = tmp_path / "nc.jsonl"
    no_completion.write_text(json.dumps({"task_id": good["task_id"]}) + "\n")
    cases = [
        ((bad_problems, unknown), f"{bad_problems}:2: missing field \"test\""),
        ((problems, unknown), f"{unknown}:2: unknown task_id 'nope'"),
        ((problems, no_completion), f"{no_completion}:1: missing field \"completion\""),
        ((problems, tmp_path / "none.jsonl"), "none.jsonl: file not found"),
    ]
    for (p, c), message in cases:
        result = run_cli("code", "evaluate", "--problems", p, "--completions", c)
        assert result.exit_code == 2, result.output
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    both = run_cli("code", "evaluate", "--problems", problems, "--completions", unknown, "--model", "m")
    assert both.exit_code == 2 and "not both" in both.stderr


def test_model_samples_completions_and_scores_them(tmp_path):
    import torch

    from foundry.model import Transformer, from_name
    from foundry.model.store import save_model
    from modalities.code.tokenizer import train_code_tokenizer

    rows = [json.loads(line) for line in PROBLEMS.read_text().splitlines()][:2]
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = train_code_tokenizer([r["prompt"] + r["canonical_solution"] for r in rows] * 10, vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(from_name("llama-tiny", vocab_size=tok.vocab_size, pad_id=tok.pad_id, n_layer=1, d_model=32, n_head=4, d_ff=64))
    save_model(tmp_path / "m", model, tok, "code")
    saved = tmp_path / "generated.jsonl"
    result = run_cli("code", "evaluate", "--problems", problems, "--model", tmp_path / "m", "--samples", "2", "--max-new-tokens", "6",
                     "--timeout", "20", "--save-completions", saved, "--seed", "1", "--k", "1", "--k", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"pass@1", "pass@2"} and summary["samples"] == 4 and summary["tasks"] == 2
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [x["task_id"] for x in lines] == [rows[0]["task_id"]] * 2 + [rows[1]["task_id"]] * 2
    greedy = run_cli("code", "evaluate", "--problems", problems, "--model", tmp_path / "m", "--samples", "2", "--temperature", "0")
    assert greedy.exit_code == 2 and "greedy decoding gives the same completion" in greedy.stderr
