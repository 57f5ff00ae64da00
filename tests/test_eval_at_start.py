"""The loop's keep-best bookkeeping: ``train.eval_at_start`` (a step-0 evaluation of the untrained
model that counts for keep-best and patience, never repeated on --resume), a task's
``lower_is_better`` metric picking the lowest evaluation across a resume, and a task's
``default_strategy`` (fold: frozen) holding when --strategy is not given, also after --resume."""

import json
from pathlib import Path

import pytest

from conftest import FINETUNE_DATA, head_rows
from foundry.testing import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = Path(__file__).parents[1] / "modalities/protein/data/structures/fit/PF00249_1GUU_A.pdb.gz"  # 50 residues
PRETRAIN = ["--set", "model.overrides.n_layer=1", "--set", "model.overrides.d_model=32", "--set", "model.overrides.n_head=2",
            "--set", "model.overrides.d_ff=64", "--set", "data.max_len=64", "--set", "data.batch_tokens=256",
            "--set", "data.max_train_docs=40", "--set", "data.max_valid_docs=8", "--set", "train.eval_batches=1",
            "--set", "train.warmup_steps=1", "--quiet"]


def cli(*args):
    result = run_cli(*map(str, args))
    assert result.exit_code == 0, result.output + result.stderr
    return result


def evaluations(out: Path) -> list[dict]:
    """The validation rows the loop logged (not the final scores of the best model)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == "valid" and not r.get("final")]


def test_step_0_is_evaluated_logged_and_can_stay_the_best(tmp_path, protein_model):
    """A learning rate too small to move a weight: no step beats the untrained model, so the best is
    step 0, and patience 1 stops at the first evaluation after it."""
    train = head_rows(FINETUNE_DATA / "ss3_train.csv", tmp_path / "t.csv", 8)
    out = tmp_path / "run"
    result = cli("protein", "finetune", "--from", protein_model, "--task", "residue-classification", "--train", train, "--valid", train,
                 "--out", out, "--max-steps", "3", "--eval-every", "1", "--patience", "1", "--lr", "1e-12", "--batch-size", "4",
                 "--no-forgetting", "--quiet", "--set", "train.eval_at_start=true")
    summary = json.loads((out / "summary.json").read_text())
    rows = evaluations(out)
    assert [r["step"] for r in rows] == [0, 1] and rows[0]["tokens"] == 0 and summary["metric"] in rows[0]
    assert rows[0][summary["metric"]] == rows[1][summary["metric"]]
    assert summary["best_step"] == 0 and summary["steps"] == 1 and summary["stopped_early"]
    assert (out / "best" / "finetune.json").is_file() and "(step 0 of 1" in result.stdout
    assert "step 0: valid" in result.stdout


def test_pretraining_evaluates_step_0_once_also_across_a_resume(tmp_path):
    out = tmp_path / "run"
    cli("protein", "pretrain", "--out", out, "--max-steps", "2", "--save-every", "1", "--set", "train.eval_every=2",
        "--set", "train.eval_at_start=true", *PRETRAIN)
    first = evaluations(out)
    assert [r["step"] for r in first] == [0, 2] and first[0]["val_loss"] > first[1]["val_loss"]
    cli("protein", "pretrain", "--resume", out, "--set", "train.max_steps=3", "--quiet")
    assert [r["step"] for r in evaluations(out)] == [0, 2, 3]  # the resumed run does not evaluate a step 0 again


def test_a_lower_is_better_metric_keeps_the_lowest_across_resume_with_the_default_strategy(tmp_path, protein_model):
    """fold: --metric distogram_loss (in Fold.lower_is_better) and no --strategy (Fold.default_strategy
    frozen). The best step is the lowest distogram loss of every evaluation, before and after --resume.
    With these settings (a large learning rate) the losses go 4.27, 4.46, 4.22, 3.94 | resume | 4.22:
    higher-is-better would keep step 1, a resumed run that forgot its best would take step 4."""
    out = tmp_path / "run"
    cli("protein", "finetune", "--task", "fold", "--from", protein_model, "--train", SMALL, "--valid", SMALL, "--out", out,
        "--max-steps", "3", "--eval-every", "1", "--save-every", "1", "--metric", "distogram_loss", "--distogram-steps", "10",
        "--structure-blocks", "1", "--crop-size", "24", "--lr", "5e-2", "--no-forgetting", "--quiet", "--set", "train.eval_at_start=true")
    before = json.loads((out / "summary.json").read_text())
    assert before["strategy"] == "frozen" and "strategy: frozen" in (out / "config.yaml").read_text()
    cli("protein", "finetune", "--resume", out, "--set", "train.max_steps=4", "--quiet")
    after = json.loads((out / "summary.json").read_text())
    assert after["strategy"] == "frozen" and after["trainable_parameters"] == before["trainable_parameters"] < after["parameters"]
    losses = {r["step"]: r["distogram_loss"] for r in evaluations(out)}
    assert sorted(losses) == [0, 1, 2, 3, 4] and len(set(losses.values())) > 1
    assert after["best_step"] == min(losses, key=losses.get)
    assert after["valid"]["distogram_loss"] == pytest.approx(min(losses.values()), rel=1e-5)  # OUT/best is that step's model
