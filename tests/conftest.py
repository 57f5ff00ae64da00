"""Helpers shared by the test files: run ``foundry`` as a user does, read a run's per-step losses,
tiny model settings, one intra-op thread, a tiny protein model, the bundled fine-tuning slices.

Test files import the plain helpers (``from conftest import foundry, losses``); fixtures need no import.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
FINETUNE_DATA = DATA / "finetune"

#: the trunk of every tiny test model: 2 layers, seconds per run on a shared CPU
TINY_MODEL = {"n_layer": 2, "d_model": 64, "n_head": 4, "d_ff": 128}

# A few-second protein pretraining run: tiny model, short rows, a couple of hundred real UniProt sequences.
TINY_PRETRAIN = [
    *(arg for key, value in TINY_MODEL.items() for arg in ("--set", f"model.overrides.{key}={value}")),
    "--set", "data.max_len=128", "--set", "data.batch_tokens=1024",
    "--set", "data.max_train_docs=300", "--set", "data.max_valid_docs=20", "--set", "train.log_every=1",
    "--set", "train.eval_every=4", "--set", "train.eval_batches=2", "--set", "train.warmup_steps=2", "--quiet",
]

# Only a guard against a hung run, never a race: a loaded machine may be ten times slower.
TIMEOUT = 1800


def foundry(*args, check=True, timeout=TIMEOUT, prelude=None, env=None):
    """Run ``python -m foundry ARGS`` (or ``python -c PRELUDE ARGS``, PRELUDE ending in main()).

    FOUNDRY_* switches of the calling shell are dropped (``env`` adds variables); one intra-op
    thread, as tiny models run fastest that way on shared cores. The command runs in its own
    session so that a timeout kills the whole process group (torchrun and its workers too).
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    environment["OMP_NUM_THREADS"] = "1"
    environment.update(env or {})
    args = [str(a) for a in args]
    command = [sys.executable, *(["-c", prelude] if prelude else ["-m", "foundry"]), *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
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


def losses(run_dir: Path) -> dict[int, float | None]:
    """The training loss of each logged optimizer step (None: a skipped step) from metrics.jsonl."""
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if "lr" in m}


# Dies by SIGKILL as it starts to write the step-6 checkpoint: steps 5 and 6 ran and were logged,
# step-000004 is the latest checkpoint (with checkpoints every 2 steps). The crash point is fixed by
# the run itself, not by how fast a test notices a file, so the outcome does not depend on the load.
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


def head_rows(src: Path, dst: Path, n: int) -> Path:
    """The header and first ``n`` rows of a table."""
    lines = Path(src).read_text().splitlines()
    Path(dst).write_text("\n".join(lines[: n + 1]) + "\n")
    return Path(dst)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster, and much faster when other work shares the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def protein_model(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer ESM-2-layout model directory (d_model 32), for fine-tuning."""
    import torch

    from foundry.model import Transformer, from_name
    from foundry.model.store import save_model
    from modalities.protein.alphabet import EsmTokenizer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_model(path, Transformer(from_name("esm2_tiny", n_layer=2, d_model=32, n_head=2, d_ff=64)), EsmTokenizer(), "protein")
    return path
