"""One loop, two registries: an objective and a task registered by an inline plugin train through
the CLI with no engine edit; every registered corpus objective (``batch_kind`` packed-tokens) and
every protein-admitting task trains (and resumes) on tiny data,
so a new registry entry is tested by registering it; fine-tuning resumes exactly after kill -9,
2 processes equal 1 with grad_accum=2, and a diverging fine-tune stops without a bad best model."""

import json
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DIE_AT_STEP_6, FINETUNE_DATA, foundry, head_rows, losses
from foundry.finetune.data import Record
from foundry.finetune.tasks import SequenceRegression
from foundry.hookspecs import hookimpl
from foundry.objectives import PACKED_TOKENS, MaskedLM, mask_tokens, objectives_for
from foundry.plugins import get_manager
from foundry.testing import plugins_registered, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

PROTEIN_PRETRAIN = ["--set", "model.overrides.n_layer=2", "--set", "model.overrides.d_model=32", "--set", "model.overrides.n_head=2",
                    "--set", "model.overrides.d_ff=64", "--set", "data.max_len=64", "--set", "data.batch_tokens=256",
                    "--set", "data.max_train_docs=40", "--set", "data.max_valid_docs=8", "--set", "train.eval_batches=1",
                    "--set", "train.warmup_steps=1", "--set", "train.log_every=1", "--quiet"]
CODE_PRETRAIN = ["--set", "tokenizer.vocab_size=300", "--set", "model.overrides.n_layer=2", "--set", "model.overrides.d_model=32",
                 "--set", "model.overrides.n_head=2", "--set", "model.overrides.n_kv_heads=1", "--set", "model.overrides.d_ff=64",
                 "--set", "data.max_len=64", "--set", "data.batch_tokens=256", "--set", "data.valid_fraction=0.2",
                 "--set", "train.eval_batches=1", "--set", "train.warmup_steps=1", "--set", "train.log_every=1", "--quiet"]
STRUCTURES = Path(__file__).parents[1] / "modalities" / "protein" / "data" / "structures" / "fold" / "zincfingers"
FINETUNE = ["--batch-size", "4", "--no-forgetting", "--quiet"]


def cli(*args):
    """``foundry ARGS`` in this process; fails the test with the output unless it exits 0."""
    result = run_cli(*map(str, args))
    assert result.exit_code == 0, result.output
    return result


# -- a toy objective and a toy task, registered from here ----------------------------------------


class HalfMasked(MaskedLM):
    """Masked LM that masks half of the tokens instead of 15%."""

    name = "mlm-half"
    batches = 0  # how many training batches it corrupted: proof the run used it

    def corrupt(self, tokens, document_ids, generator, train):
        HalfMasked.batches += int(train)
        t = self.tokenizer
        return mask_tokens(tokens, special_ids=t.special_ids, maskable_ids=t.maskable_ids, mask_id=t.mask_id, generator=generator, mask_prob=0.5)


class LengthRegression(SequenceRegression):
    """Predict a sequence's length: the label is the sequence itself, so any sequence file will do."""

    name = "length-regression"
    default_metric = "rmse"

    def read_split(self, path, labels_path, columns, readers, labelled=True):
        records = super().read_split(path, None, columns, readers, labelled=False)
        return [Record(r.id, r.sequence, str(len(r.sequence)), r.where) for r in records]


class DnaOnly(LengthRegression):
    name = "dna-length"
    modalities = ("dna",)


class ToyPlugin:
    @hookimpl
    def register_objectives(register):
        register(HalfMasked)

    @hookimpl
    def register_tasks(register):
        register(LengthRegression)
        register(DnaOnly)


def test_a_plugin_objective_pretrains_and_resumes_through_the_cli(tmp_path):
    out = tmp_path / "run"
    HalfMasked.batches = 0
    with plugins_registered(("toy", ToyPlugin), autoload=True):
        cli("protein", "pretrain", "--out", out, "--max-steps", "3", "--save-every", "1", "--set", "objective.name=mlm-half", *PROTEIN_PRETRAIN)
        assert HalfMasked.batches == 3
        assert "name: mlm-half" in (out / "config.yaml").read_text()
        reference = losses(out)
        _rewind(out, to_step=2)
        cli("protein", "pretrain", "--resume", out, "--quiet")
    assert losses(out) == reference


def test_a_plugin_task_is_offered_by_the_modalities_it_admits_and_finetunes(tmp_path, protein_model):
    sequences = tmp_path / "train.fasta"
    sequences.write_text("".join(f">s{i}\n{'MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ'[: 8 + i]}\n" for i in range(16)))
    out = tmp_path / "run"
    with plugins_registered(("toy", ToyPlugin), autoload=True):
        assert "length-regression" in run_cli("protein", "finetune", "--help").stdout
        assert "length-regression" in run_cli("text", "finetune", "--help").stdout
        assert "dna-length" not in run_cli("protein", "finetune", "--help").stdout
        refused = run_cli("protein", "finetune", "--task", "dna-length")
        assert refused.exit_code == 2 and "'dna-length' is not one of" in refused.stderr
        cli("protein", "finetune", "--from", protein_model, "--task", "length-regression", "--train", sequences, "--valid", sequences,
            "--out", out, "--max-steps", "4", "--save-every", "2", "--lr", "1e-2", *FINETUNE)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "length-regression" and summary["metric"] == "rmse" and np.isfinite(summary["valid"]["rmse"])
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-000004"


def _rewind(out: Path, to_step: int) -> None:
    """Make a finished run look as if it had stopped right after its ``to_step`` checkpoint."""
    for checkpoint in (out / "checkpoints").glob("step-*"):
        if int(checkpoint.name.split("-")[1]) > to_step:
            shutil.rmtree(checkpoint)
    (out / "checkpoints" / "LATEST").write_text(f"step-{to_step:06d}\n")
    for leftover in ("final", "summary.json"):
        path = out / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


# -- every registered objective and task (timm's habit) -----------------------------------------


@pytest.fixture(scope="module")
def code_corpus(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("code")
    for i in range(30):
        (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i * i}\n\n\nprint(f{i}(3))\n")
    return src


# Objectives for other data (sft/dpo rows, a plugin's images) are trained by their own commands and
# tested there (tests/test_sft.py, test_dpo.py, test_image_registry.py): here, every corpus objective.
@pytest.mark.parametrize("name", objectives_for(PACKED_TOKENS))
def test_every_registered_objective_trains_two_steps_and_resumes(name, tmp_path, code_corpus):
    objective = get_manager().objective_class(name)
    # a causal objective trains a causal trunk: code (its tokenizer has the fill-in-the-middle tokens)
    where = ["code", "pretrain", "--data", code_corpus, *CODE_PRETRAIN] if objective.causal else ["protein", "pretrain", *PROTEIN_PRETRAIN]
    out = tmp_path / "run"
    cli(*where, "--out", out, "--max-steps", "2", "--save-every", "1", "--set", f"objective.name={name}")
    reference = losses(out)
    assert sorted(reference) == [1, 2] and all(np.isfinite(v) for v in reference.values())
    _rewind(out, to_step=1)
    cli(where[0], "pretrain", "--resume", out, "--quiet")
    assert losses(out) == reference


def _labelled_tables(task, root: Path) -> tuple[list[str], Path]:
    """(extra flags, a tiny table the task accepts), by what the task predicts."""
    data = FINETUNE_DATA
    names = {o.name for o in task.options}
    if "wildtype" in names:
        return ["--wildtype", data / "pab1_wt.fasta", "--wildtype-start", "126"], head_rows(data / "pab1_train.csv", root / "t.csv", 12)
    rows = [line.split(",") for line in (data / "ss3_train.csv").read_text().splitlines()[1:13]]
    rows = [(rid, seq[:40], ss[:40]) for rid, seq, ss in rows]
    rng = random.Random(0)
    if task.level == "residue":
        labels = [ss for _, _, ss in rows]
    elif task.level == "pair":
        labels = [";".join(f"{i}-{i + rng.randint(6, 30)}" for i in range(1, 9)) for _ in rows]
    elif task.regression:
        labels = [f"{rng.gauss(0, 1):.3f}" for _ in rows]
    else:
        labels = [rng.choice(["a", "b"]) for _ in rows[:-2]] + ["a", "b"]
    table = root / "t.csv"
    table.write_text("id,sequence,label\n" + "".join(f"{rid},{seq},{label}\n" for (rid, seq, _), label in zip(rows, labels)))
    return [], table


@pytest.mark.parametrize("name", get_manager().tasks.names())
def test_every_registered_task_finetunes_two_steps(name, tmp_path, protein_model):
    task = get_manager().task_class(name)
    if task.modalities is not None and "protein" not in task.modalities:
        pytest.skip(f"{name} is for {', '.join(task.modalities)}; this test has protein data only")
    flags, table = _labelled_tables(task, tmp_path)
    if name == "fold":  # it reads structures, not tables: two small bundled chains
        table = tmp_path / "structures"
        table.mkdir()
        for path in sorted(STRUCTURES.glob("*.pdb*"))[:2]:
            shutil.copy(path, table / path.name)
    out = tmp_path / "run"
    cli("protein", "finetune", "--from", protein_model, "--task", name, *flags, "--train", table, "--valid", table,
        "--out", out, "--max-steps", "2", *FINETUNE)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == name and summary["steps"] == 2 and summary["metric"] in summary["valid"]
    assert sorted(losses(out)) == [1, 2] and all(np.isfinite(v) for v in losses(out).values())


# -- fine-tuning on the one loop: resume, processes, divergence ---------------------------------


@pytest.fixture(scope="module")
def ss3(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ss3")
    return {"train": head_rows(FINETUNE_DATA / "ss3_train.csv", root / "t.csv", 16),
            "valid": head_rows(FINETUNE_DATA / "ss3_valid.csv", root / "v.csv", 6)}


def _ss3_args(model: Path, data: dict[str, Path], out: Path) -> list:
    return ["protein", "finetune", "--from", model, "--task", "residue-classification", "--train", data["train"],
            "--valid", data["valid"], "--out", out, *FINETUNE]


def test_killed_finetune_resumes_with_identical_losses(tmp_path, protein_model, ss3):
    reference = tmp_path / "reference"
    foundry(*_ss3_args(protein_model, ss3, reference), "--max-steps", "10", "--save-every", "2")

    interrupted = tmp_path / "interrupted"
    killed = foundry(*_ss3_args(protein_model, ss3, interrupted), "--max-steps", "10", "--save-every", "2",
                     prelude=DIE_AT_STEP_6, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (interrupted / "checkpoints" / "LATEST").read_text().strip() == "step-000004"
    assert max(losses(interrupted)) == 6 and not (interrupted / "summary.json").exists()

    foundry("protein", "finetune", "--resume", interrupted, "--quiet")
    assert losses(interrupted) == losses(reference)
    assert sorted(p.name for p in (interrupted / "checkpoints").glob("step-*"))[-1] == "step-000010"
    done = json.loads((interrupted / "summary.json").read_text())
    assert done["valid"] == json.loads((reference / "summary.json").read_text())["valid"]


def test_two_finetune_processes_equal_one_with_grad_accum_2(tmp_path, protein_model, ss3):
    one, two = tmp_path / "one", tmp_path / "two"
    foundry(*_ss3_args(protein_model, ss3, one), "--max-steps", "4", "--grad-accum", "2")
    foundry(*_ss3_args(protein_model, ss3, two), "--max-steps", "4", "--processes", "2")
    a, b = losses(one), losses(two)
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    tokens = [{json.loads(line)["step"]: json.loads(line)["tokens"] for line in (run / "metrics.jsonl").read_text().splitlines()
               if '"lr"' in line} for run in (one, two)]
    assert tokens[0] == tokens[1], "each process read its own share: the same real tokens were consumed"


def test_a_diverging_finetune_stops_with_one_line_and_keeps_no_broken_best(tmp_path, protein_model, ss3):
    from foundry.finetune.data import encode_records, read_records
    from foundry.finetune.store import load_finetuned
    from foundry.finetune.evaluation import predict_logits

    out = tmp_path / "run"
    result = run_cli(*map(str, _ss3_args(protein_model, ss3, out)), "--max-steps", "8", "--lr", "1e6", "--eval-every", "1", "--save-every", "1")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: training diverged at step "), result.stderr
    assert not (out / "summary.json").exists()
    if (out / "best").exists():  # an evaluation whose outputs overflowed (loss nan) must not have become the best model
        best = load_finetuned(out / "best")
        examples = encode_records(read_records(ss3["valid"]), best.tokenizer, best.task, best.labels, 1024)
        logits = predict_logits(best.model, examples, 4, best.tokenizer.pad_id, best.task.level)
        assert all(np.isfinite(x).all() for x in logits)
        assert all(torch.isfinite(p).all() for p in best.model.parameters())
