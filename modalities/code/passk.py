"""pass@k on HumanEval-format problems (Chen et al. 2021, "Evaluating Large Language Models Trained
on Code").

Problems: JSONL (or .jsonl.gz), one per line: ``task_id``, ``prompt`` (signature + docstring),
``test`` (defines ``check(candidate)``), ``entry_point`` (the function's name); optionally
``canonical_solution``. Completions: JSONL with ``task_id`` and ``completion`` (the code after the
prompt), any number per task. Each completion runs as ``prompt + completion + test +
check(entry_point)`` in its own subprocess (``execution.py``: time and memory limits, no network).

pass@k per task is the unbiased estimator 1 - C(n-c, k) / C(n, k) for n samples of which c pass,
computed as a product (no huge binomials); the score is its mean over tasks. pass@k is reported
only for k <= the smallest n of any task, as human-eval does.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from foundry.errors import DataError, FoundryError
from foundry.jsonl import read_jsonl, string_field

from .execution import Limits, Outcome, run_program

PROBLEM_FIELDS = ("task_id", "prompt", "test", "entry_point")
#: stop sequences human-eval's own sampling used: the function ends where a new top-level statement starts
HUMANEVAL_STOP = ("\nclass ", "\ndef ", "\n#", "\nif ", "\nprint(")


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that at least one of k samples drawn without
    replacement from n (c of them correct) is correct."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str = ""

    def program(self, completion: str) -> str:
        return f"{self.prompt}{completion}\n\n{self.test}\n\ncheck({self.entry_point})\n"


def read_problems(path: Path) -> dict[str, Problem]:
    problems: dict[str, Problem] = {}
    for line, row in read_jsonl(path):
        where = f"{path}:{line}"
        fields = {key: string_field(row, key, where, allow_empty=key == "prompt") for key in PROBLEM_FIELDS}
        if not fields["entry_point"].isidentifier():
            raise DataError(f"{where}: \"entry_point\" {fields['entry_point']!r} is not a Python name")
        if fields["task_id"] in problems:
            raise DataError(f"{where}: task_id {fields['task_id']!r} appears twice")
        solution = row.get("canonical_solution", "")
        problems[fields["task_id"]] = Problem(**fields, canonical_solution=solution if isinstance(solution, str) else "")
    if not problems:
        raise DataError(f"{path}: no problems")
    return problems


def read_completions(path: Path, problems: dict[str, Problem]) -> list[tuple[str, str]]:
    """(task_id, completion) pairs; a task_id the problems do not have is an error naming the line."""
    pairs = []
    for line, row in read_jsonl(path):
        where = f"{path}:{line}"
        task_id = string_field(row, "task_id", where)
        completion = string_field(row, "completion", where, allow_empty=True)
        if task_id not in problems:
            raise DataError(f"{where}: unknown task_id {task_id!r} (not in the problems file)")
        pairs.append((task_id, completion))
    if not pairs:
        raise DataError(f"{path}: no completions")
    return pairs


def execute(problems: dict[str, Problem], pairs: Sequence[tuple[str, str]], limits: Limits = Limits(),
            workers: int | None = None) -> list[Outcome]:
    """Run every completion against its problem's tests, ``workers`` subprocesses at a time."""
    workers = workers or min(4, os.cpu_count() or 1)
    programs = [problems[task].program(completion) for task, completion in pairs]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # threads only wait on subprocesses
        return list(pool.map(lambda source: run_program(source, limits), programs))


def summarize(pairs: Sequence[tuple[str, str]], outcomes: Sequence[Outcome], ks: Iterable[int] = (1, 10, 100)) -> dict:
    """pass@k for each k <= the smallest number of samples per task, plus counts."""
    n: dict[str, int] = defaultdict(int)
    c: dict[str, int] = defaultdict(int)
    for (task, _), outcome in zip(pairs, outcomes):
        n[task] += 1
        c[task] += int(outcome.passed)
    fewest = min(n.values())
    result: dict = {}
    for k in sorted(set(ks)):
        if k <= fewest:
            result[f"pass@{k}"] = float(np.mean([pass_at_k(n[t], c[t], k) for t in n]))
    result.update({"tasks": len(n), "samples": len(pairs), "passed": int(sum(c.values())), "samples_per_task_min": fewest})
    return result


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    if not ks or any(k < 1 for k in ks):
        raise FoundryError(f"--k: give positive integers, got {list(ks)}")
    return tuple(ks)


def write_results(path: Path, pairs, outcomes) -> None:
    """Per-completion results as JSONL (task_id, completion, passed, result), like human-eval's."""
    from foundry.atomic import atomic_write_text

    lines = [json.dumps({"task_id": t, "completion": comp, "passed": o.passed, "result": o.result}) for (t, comp), o in zip(pairs, outcomes)]
    atomic_write_text(path, "\n".join(lines) + "\n")
