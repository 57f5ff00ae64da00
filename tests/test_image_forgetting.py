"""Forgetting of image fine-tuning: the pretraining objective (MAE, fixed masks, the pretrained
decoder) on the pretraining run's held-out images, before vs after — in the final report and
summary.json["forgetting"]; a frozen encoder forgets nothing; no report without a pretrained model."""

import json
import shutil

import pytest

from test_image_cli import FAST, digits, ok, write_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("forgetting")
    rows = digits()
    data = write_folder(root / "data", rows, 8, 4, 0)
    labelled = {name: write_folder(root / name, rows, 8, 3, off) for name, off in (("train", 4), ("valid", 7))}
    out = root / "pre"
    ok("pretrain", "--data", data, "--out", out, "--max-steps", 2, "--eval-every", 2, "--batch-size", 4, "--valid-fraction", 0.5, *FAST)
    return {"out": out, **labelled}


def finetune(setup, source, out, *extra):
    result = ok("finetune", *(("--from", source) if source else ("--model", "vit-micro")), "--train", setup["train"],
                "--valid", setup["valid"], "--out", out, "--max-steps", 2, "--batch-size", 4, "--lr", "0.05", "--quiet", *extra)
    return json.loads((out / "summary.json").read_text()), result.stdout


def test_the_report_scores_the_pretraining_objective_before_and_after(setup, tmp_path):
    summary, stdout = finetune(setup, setup["out"] / "final", tmp_path / "full")
    f = summary["forgetting"]
    runs = [json.loads(line) for line in (setup["out"] / "metrics.jsonl").read_text().splitlines()]
    val_loss = next(m["val_loss"] for m in runs if m.get("step") == 2 and "val_loss" in m)
    assert f["objective"] == "mae" and f["data"].startswith("6 held-out pretraining images of ") and f["targets"] == 6 * 12
    assert f["before"] == pytest.approx(val_loss, rel=1e-5)  # the same images, masks and model as the run's last validation
    assert f["after"] != f["before"] and f["increase"] == pytest.approx(f["after"] - f["before"])
    assert "forgetting: masked-patch MSE on 6 held-out pretraining images" in stdout
    logged = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("forgetting_after") == f["after"] for m in logged)


def test_a_frozen_encoder_forgets_nothing_and_a_moved_model_falls_back_to_validation_images(setup, tmp_path):
    moved = tmp_path / "model"
    shutil.copytree(setup["out"] / "final", moved)  # no run beside it: its held-out images are unknown
    summary, _ = finetune(setup, moved, tmp_path / "frozen", "--strategy", "frozen")
    f = summary["forgetting"]
    assert f["after"] == f["before"] and f["increase"] == 0.0
    assert f["data"].startswith("9 validation images of ") and "not available" in f["data"]


def test_no_report_without_a_pretrained_model_or_with_no_forgetting(setup, tmp_path):
    assert finetune(setup, None, tmp_path / "scratch")[0]["forgetting"] is None
    assert finetune(setup, setup["out"] / "final", tmp_path / "off", "--no-forgetting")[0]["forgetting"] is None
