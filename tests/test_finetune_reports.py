"""What a fine-tuning run reports cannot hide a failure: per-class precision / recall and the
confusion matrix (summary, metrics.jsonl, a PNG per split), MCC as the default early-stopping
metric of classification, every labelled residue of valid/test scored whatever --max-len, ten
evaluations in a run shorter than an epoch, the test predictions beside the metrics, class weights."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import FINETUNE_DATA, head_rows

from foundry.errors import FoundryError
from foundry.finetune.tasks import get_task
from foundry.testing import run_cli

QUICK = ["--batch-size", "8", "--no-forgetting", "--quiet"]


def _finetune(protein_model, out, *args):
    return run_cli("protein", "finetune", "--from", protein_model, "--out", out, *QUICK, *args)


def test_classification_reports_classes_confusion_png_and_test_predictions(tmp_path, protein_model):
    out = tmp_path / "run"
    test = head_rows(FINETUNE_DATA / "amp_test.csv", tmp_path / "test.csv", 12)
    valid = head_rows(FINETUNE_DATA / "amp_valid.csv", tmp_path / "valid.csv", 16)
    counts = [sum(r["label"] == c for r in csv.DictReader(valid.open())) for c in ("amp", "other")]
    result = _finetune(protein_model, out, "--task", "sequence-classification", "--train", valid, "--valid", valid, "--test", test,
                       "--max-steps", "10", "--save-every", "10")
    assert result.exit_code == 0, result.stderr
    # the closing report shows each class: a collapse to the majority class cannot hide behind accuracy
    assert "valid: per class (best model)\nclass     precision    recall   support predicted\namp " in result.stdout
    assert "confusion (rows: true, columns: predicted)" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "mcc"  # the default for classification: 0 for a majority-class model
    assert {"mcc", "balanced_accuracy", "accuracy"} <= set(summary["valid"])
    valid = summary["classes"]["valid"]
    assert valid["classes"] == ["amp", "other"] and valid["support"] == counts and min(counts) > 0
    assert np.asarray(valid["confusion"]).sum(1).tolist() == counts
    assert sum(summary["classes"]["test"]["support"]) == 12
    for split in ("valid", "test"):
        assert (out / f"confusion_{split}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"final"' in line]
    assert [f["split"] for f in final] == ["valid", "test"] and final[0]["classes"] == valid
    rows = list(csv.DictReader((out / "test_predictions.csv").open()))
    truth = list(csv.DictReader(test.open()))
    assert [r["id"] for r in rows] == [t["id"] for t in truth] and [r["label"] for r in rows] == [t["label"] for t in truth]
    assert list(rows[0]) == ["id", "sequence", "prediction", "p_amp", "p_other", "label"]
    # --max-steps shorter than an epoch's worth of evaluations: ten evaluations, not one at the end
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["eval_every"] == 1
    evaluations = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evaluations if e.get("split") == "valid" and not e.get("final")] == list(range(1, 11))


def test_residue_scores_cover_every_labelled_residue_beyond_max_len(tmp_path, protein_model):
    train = head_rows(FINETUNE_DATA / "ss3_train.csv", tmp_path / "train.csv", 8)
    valid = head_rows(FINETUNE_DATA / "ss3_valid.csv", tmp_path / "valid.csv", 3)
    rows = list(csv.DictReader(valid.open()))
    labelled = sum(sum(c != "." for c in r["label"]) for r in rows)
    assert max(len(r["sequence"]) for r in rows) > 40  # longer than the 30 residues of --max-len 32
    out = tmp_path / "run"
    result = _finetune(protein_model, out, "--task", "residue-classification", "--train", train, "--valid", valid, "--test", valid,
                       "--max-len", "32", "--max-steps", "2")
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["classes"]["valid"]["support"]) == labelled
    assert sum(summary["classes"]["test"]["support"]) == labelled
    # training reads random windows of 32 tokens of the longer sequences (tests/test_finetune_windows.py), and says so
    longer = sum(len(r["sequence"]) > 30 for r in csv.DictReader(train.open()))
    assert longer and summary["train_sequences_windowed"] == longer
    assert f"training read random windows of 32 tokens of {longer} longer sequences" in result.stdout
    predicted = list(csv.DictReader((out / "test_predictions.csv").open()))
    assert [len(p["prediction"]) for p in predicted] == [len(r["sequence"]) for r in rows]
    assert [p["label"] for p in predicted] == [r["label"] for r in rows]


def _weighted(task_name: str, spec: str, labels: list[str]):
    task = get_task(task_name)
    task.configure({"class_weights": spec})
    info = task.fit(labels, [f"t.csv: line {i + 2}" for i in range(len(labels))])
    return task, info


def test_balanced_class_weights_follow_the_training_counts():
    task, info = _weighted("sequence-classification", "balanced", ["a", "a", "a", "b"])
    assert info.names == ["a", "b"]
    np.testing.assert_allclose(task.weights, [4 / (2 * 3), 4 / (2 * 1)])  # n / (classes x count), as scikit-learn
    logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[0], [1]])
    expected = torch.nn.functional.cross_entropy(logits, target.view(-1), weight=torch.tensor(task.weights))
    assert task.loss(logits, target, info) == pytest.approx(float(expected))
    task, info = _weighted("residue-classification", "balanced", ["HHHE", "HHEC"])
    np.testing.assert_allclose(task.weights, [8 / (3 * 1), 8 / (3 * 2), 8 / (3 * 5)])  # C, E, H


def test_explicit_class_weights_name_their_classes():
    task, _ = _weighted("sequence-classification", "b=3", ["a", "b", "a"])
    np.testing.assert_allclose(task.weights, [1.0, 3.0])
    with pytest.raises(FoundryError, match=r"^--class-weights: 'c' is not a class of t.csv \(classes: a, b\)$"):
        _weighted("sequence-classification", "c=2", ["a", "b"])
    with pytest.raises(FoundryError, match="multi-label"):
        _weighted("sequence-classification", "balanced", ["a;b", "a"])


def test_a_malformed_class_weight_is_one_clear_error(tmp_path, protein_model):
    result = _finetune(protein_model, tmp_path / "run", "--task", "sequence-classification", "--train", FINETUNE_DATA / "amp_valid.csv",
                       "--valid", FINETUNE_DATA / "amp_valid.csv", "--class-weights", "amp=lots")
    assert result.exit_code == 2
    assert ("error: --class-weights 'amp=lots': expected 'balanced' or NAME=WEIGHT,NAME=WEIGHT with weights >= 0, "
            "e.g. soluble=1,insoluble=3 (at 'amp=lots')") in result.stderr
    assert not (tmp_path / "run").exists()
