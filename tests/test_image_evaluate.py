"""``foundry image evaluate``: the pretraining objective on held-out images with fixed masks — on the
run's own held-out images it gives the run's validation loss; the last stdout line is JSON; bad
input is one line, exit 2."""

import json
import shutil

import pytest

from test_image_cli import FAST, digits, image, ok, write_folder


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 2-step MAE run on 12 digits with every second image held out, and those held-out images
    copied to a folder of their own (same relative names, so they are read in the same order)."""
    root = tmp_path_factory.mktemp("evaluate")
    data = write_folder(root / "data", digits(), 8, 4, 0)
    out = root / "pre"
    ok("pretrain", "--data", data, "--out", out, "--max-steps", 2, "--eval-every", 2, "--batch-size", 4, "--valid-fraction", 0.5, *FAST)
    files = sorted(p for p in data.rglob("*.png"))
    held = root / "held" / "data"
    for f in files[1::2]:
        (held / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, held / f.parent.name / f.name)
    return {"out": out, "data": data, "held": held}


def test_evaluate_on_the_held_out_images_gives_the_runs_validation_loss(pretrained):
    runs = [json.loads(line) for line in (pretrained["out"] / "metrics.jsonl").read_text().splitlines()]
    val_loss = next(m["val_loss"] for m in runs if m.get("step") == 2 and "val_loss" in m)
    got = last_json(ok("evaluate", "--model", pretrained["out"] / "final", pretrained["held"], "--batch-size", 4))
    assert got["loss"] == pytest.approx(val_loss, rel=1e-5)
    assert got["images"] == 6 and got["objective"] == "mae" and got["scored"] == 6 * 12  # 16 patches, 4 kept, 12 masked
    again = last_json(ok("evaluate", "--model", pretrained["out"], pretrained["held"], "--batch-size", 4))  # OUT means OUT/final
    assert again["loss"] == got["loss"]
    other = last_json(ok("evaluate", "--model", pretrained["out"] / "final", pretrained["held"], "--batch-size", 4, "--seed", 1))
    assert other["loss"] != got["loss"]  # other masks: the seed is what fixes them


def test_evaluate_bad_input_is_one_line_exit_2(pretrained, tmp_path):
    final = pretrained["out"] / "final"
    spec = json.loads((final / "image_model.json").read_text())
    classifier = tmp_path / "ft"
    shutil.copytree(final, classifier)
    (classifier / "image_model.json").write_text(json.dumps({**spec, "kind": "classifier"}))
    (tmp_path / "empty").mkdir()
    cases = [
        (("--model", final), "give one or more held-out images, folders or CSV files"),
        (("--model", final, tmp_path / "missing"), "missing: no such file or directory"),
        (("--model", final, tmp_path / "empty"), "empty: no images"),
        (("--model", tmp_path / "nope", pretrained["held"]), "nope: no such model directory"),
        (("--model", classifier, pretrained["held"]), "a fine-tuned classifier (no pretraining objective to score)"),
        (("--model", final, pretrained["held"], "--batch-size", 0), "--batch-size: must be at least 1"),
    ]
    for args, expected in cases:
        result = image("evaluate", *args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (args, result.output)
