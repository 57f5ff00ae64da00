"""``foundry image …`` as scripts call it: presets, MAE pretraining and fine-tuning on folders of
8×8 and 28×28 grayscale PNGs, exact resume, predict/export, and one-line errors for bad input."""

import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foundry.testing import plugins_registered, run_cli
from modalities.image import plugin

DIGITS = Path(__file__).parents[1] / "modalities" / "image" / "data" / "digits.csv.gz"
CLASSES = (0, 1, 2)
FAST = ["--quiet", "--log-every", "1"]


def digits() -> np.ndarray:
    return np.loadtxt(gzip.open(DIGITS), delimiter=",")


def write_folder(root: Path, rows: np.ndarray, size: int, per_class: int, offset: int) -> Path:
    """DIR/<label>/*.png: ``per_class`` digits of each of CLASSES, upsampled to ``size`` (28: MNIST-like)."""
    for c in CLASSES:
        members = np.flatnonzero(rows[:, 64] == c)[offset : offset + per_class]
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in members:
            img = Image.fromarray((rows[i, :64].reshape(8, 8) * 255 / 16).astype(np.uint8), "L")
            img.resize((size, size), Image.BILINEAR).save(root / str(c) / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    rows = digits()
    out = {}
    for size in (8, 28):
        root = tmp_path_factory.mktemp(f"digits{size}")
        out[size] = {name: write_folder(root / name, rows, size, n, off)
                     for name, n, off in (("train", 6, 0), ("valid", 3, 6), ("test", 3, 9))}
    return out


def image(*args):
    with plugins_registered(plugin):
        return run_cli("image", *map(str, args))


def ok(*args):
    result = image(*args)
    assert result.exit_code == 0, result.output
    return result


def fails(*args) -> str:
    """The one-line error of a refused command (exit 2, no traceback)."""
    result = image(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def losses(run_dir: Path) -> dict:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if "lr" in m}


def rewind(out: Path, to_step: int) -> None:
    """Make a finished run look as if it had stopped right after its ``to_step`` checkpoint."""
    for checkpoint in (out / "checkpoints").glob("step-*"):
        if int(checkpoint.name.split("-")[1]) > to_step:
            shutil.rmtree(checkpoint)
    (out / "checkpoints" / "LATEST").write_text(f"step-{to_step:06d}\n")
    for leftover in ("final", "summary.json"):
        path = out / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def test_foundry_plugins_lists_image_and_presets_put_the_default_first():
    with plugins_registered(autoload=True):
        listing = run_cli("plugins")
        presets = run_cli("image", "presets")
    assert listing.exit_code == 0 and "image  (foundry " in listing.stdout
    lines = presets.stdout.splitlines()
    assert lines[0].split()[0] == "vit-micro" and {"vit-tiny", "vit-small"} <= {line.split()[0] for line in lines}


def test_the_engine_never_mentions_pixels():
    engine = Path(__file__).parents[1] / "foundry"
    offenders = [str(p) for p in engine.rglob("*.py") if "pixel" in p.read_text(encoding="utf-8").lower()]
    assert offenders == []


@pytest.mark.parametrize("size", [8, 28])
def test_the_command_line_contract_on_grayscale_folders(size, folders, tmp_path):
    data = folders[size]
    out, ft = tmp_path / "pre", tmp_path / "ft"
    ok("pretrain", "--data", data["train"].parent, "--model", "vit-micro", "--out", out, "--max-steps", 3, *FAST)
    assert (out / "final" / "encoder.safetensors").is_file() and json.loads((out / "summary.json").read_text())["channels"] == 1
    ok("finetune", "--from", out / "final", "--task", "image-classification", "--train", data["train"], "--valid", data["valid"],
       "--test", data["test"], "--out", ft, "--max-steps", 3, "--quiet")
    summary = json.loads((ft / "summary.json").read_text())
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0 and summary["labels"] == ["0", "1", "2"]
    assert {"macro_f1", "balanced_accuracy"} <= set(summary["test"]) and (ft / "confusion_test.png").is_file()
    with open(ft / "test_predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 and sum(float(rows[0][f"p_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-5)


def test_from_scratch_predict_and_export_to_timm(folders, tmp_path):
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    data, ft = folders[8], tmp_path / "ft"
    ok("finetune", "--model", "vit-micro", "--task", "image-classification", "--train", data["train"], "--valid", data["valid"],
       "--out", ft, "--max-steps", 2, "--quiet")
    ok("predict", "--model", ft / "best", "--data", data["test"], "--out", tmp_path / "p.csv")
    with open(tmp_path / "p.csv") as handle:
        predicted = list(csv.DictReader(handle))
    assert len(predicted) == 9 and set(predicted[0]) == {"id", "predicted", "p_0", "p_1", "p_2"}
    ok("export", ft / "best", "--out", tmp_path / "vit.safetensors")
    spec = json.loads((tmp_path / "vit.json").read_text())
    model = VisionTransformer(**spec["kwargs"]).eval()
    model.load_state_dict(load_file(str(tmp_path / "vit.safetensors")))  # strict: every timm key, head included
    first = Path(predicted[0]["id"])
    pixels = torch.from_numpy(np.asarray(Image.open(first), dtype=np.float32) / 255.0)[None, None]
    pixels = torch.nn.functional.interpolate(pixels, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        probs = torch.softmax(model((pixels - 0.5) / 0.5), -1)[0]
    assert probs.tolist() == pytest.approx([float(predicted[0][f"p_{c}"]) for c in CLASSES], abs=1e-5)


def test_pretraining_resumes_exactly(folders, tmp_path):
    out = tmp_path / "pre"
    ok("pretrain", "--data", folders[8]["train"], "--out", out, "--max-steps", 4, "--save-every", 2, "--batch-size", 8, *FAST)
    reference = losses(out)
    assert sorted(reference) == [1, 2, 3, 4]
    rewind(out, to_step=2)
    ok("pretrain", "--resume", out, "--quiet")
    assert losses(out) == reference


def test_resume_with_max_steps_extends_a_finished_pretraining_and_other_flags_are_refused(folders, tmp_path):
    out = tmp_path / "pre"
    ok("pretrain", "--data", folders[8]["train"], "--out", out, "--max-steps", 2, "--batch-size", 8, *FAST)
    ok("pretrain", "--resume", out, "--max-steps", 4, "--quiet")
    assert sorted(losses(out)) == [1, 2, 3, 4]
    assert json.loads((out / "summary.json").read_text())["step"] == 4
    ok("pretrain", "--resume", out, "--quiet")  # the new length is saved with the run: nothing left to do
    assert sorted(losses(out)) == [1, 2, 3, 4]
    message = fails("pretrain", "--resume", out, "--lr", "0.01", "--batch-size", 3)
    assert message == ("error: --resume continues the run with the settings in its config.yaml; --batch-size, --lr would be ignored "
                       "(it honours --max-steps): drop them, or start a new run")
    assert "--max-steps" in fails("finetune", "--resume", out, "--max-steps", 9)  # fine-tuning resumes as it was set up


def test_lora_finetuning_resumes_exactly(folders, tmp_path):
    data, ft = folders[8], tmp_path / "ft"
    args = ["--train", data["train"], "--valid", data["valid"], "--strategy", "lora", "--max-steps", 4, "--eval-every", 2,
            "--batch-size", 6, "--quiet"]
    ok("finetune", "--model", "vit-micro", *args, "--out", ft)
    reference = losses(ft)
    rewind(ft, to_step=2)
    ok("finetune", "--resume", ft)
    assert losses(ft) == reference
    summary = json.loads((ft / "summary.json").read_text())
    assert summary["strategy"] == "lora" and summary["trainable_parameters"] < summary["parameters"] / 2


def test_csv_pixel_rows_pretrain_and_finetune(tmp_path):
    rows = digits()
    pick = np.concatenate([np.flatnonzero(rows[:, 64] == c)[:5] for c in CLASSES])
    table = tmp_path / "digits.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", *(f"px{i}" for i in range(64))])
        writer.writerows([int(rows[i, 64]), *rows[i, :64].astype(int)] for i in pick)
    ok("pretrain", "--data", table, "--out", tmp_path / "pre", "--max-steps", 2, *FAST)
    ok("finetune", "--from", tmp_path / "pre", "--train", table, "--valid", table, "--test", table, "--out", tmp_path / "ft",
       "--max-steps", 2, "--quiet")
    assert json.loads((tmp_path / "ft" / "summary.json").read_text())["labels"] == ["0", "1", "2"]


def test_mixed_sizes_are_resized_and_a_csv_may_name_image_paths(folders, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(folders[8]["train"], data)
    for c in CLASSES:  # 28x28 images among the 8x8 ones: every image is resized to the model's size
        shutil.copy(next((folders[28]["train"] / str(c)).iterdir()), data / str(c) / "big.png")
    table = tmp_path / "paths.csv"
    table.write_text("path,label\n" + "".join(f"{p.relative_to(tmp_path)},{p.parent.name}\n" for p in sorted(data.rglob("*.png"))))
    ok("pretrain", "--data", data, "--out", tmp_path / "pre", "--max-steps", 1, *FAST)
    ok("finetune", "--from", tmp_path / "pre" / "final", "--train", table, "--valid", data, "--out", tmp_path / "ft",
       "--max-steps", 1, "--quiet")
    assert json.loads((tmp_path / "ft" / "summary.json").read_text())["train_examples"] == 21


# -- bad input: one line naming the file and the place, exit 2 ------------------------------------


def test_a_truncated_image_is_named(folders, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(folders[8]["train"], data)
    victim = sorted((data / "1").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])
    message = fails("pretrain", "--data", data, "--out", tmp_path / "pre", "--max-steps", 1, "--quiet")
    assert str(victim) in message and "truncated" in message
    assert not (tmp_path / "pre").exists()


def test_a_colour_image_among_grayscale_ones_is_named(folders, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(folders[8]["train"], data)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(data / "2" / "zz_colour.png")
    message = fails("finetune", "--model", "vit-micro", "--train", data, "--valid", data, "--out", tmp_path / "ft", "--quiet")
    assert "zz_colour.png" in message and "colour (3 channels)" in message and "grayscale" in message


def test_an_empty_class_folder_is_named(folders, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(folders[8]["train"], data)
    (data / "7").mkdir()
    message = fails("finetune", "--model", "vit-micro", "--train", data, "--valid", folders[8]["valid"], "--out", tmp_path / "ft")
    assert f"{data / '7'}: empty class folder" in message


def test_a_label_never_seen_in_training_is_named(folders, tmp_path):
    valid = tmp_path / "valid"
    shutil.copytree(folders[8]["valid"], valid)
    (valid / "2").rename(valid / "9")
    message = fails("finetune", "--model", "vit-micro", "--train", folders[8]["train"], "--valid", valid, "--out", tmp_path / "ft")
    assert "label '9' never seen in training" in message and str(valid / "9") in message


def test_a_csv_row_with_the_wrong_number_of_pixels_is_named(tmp_path):
    table = tmp_path / "bad.csv"
    table.write_text("label," + ",".join(f"p{i}" for i in range(16)) + "\n" + "1," + ",".join(["3"] * 16) + "\n"
                     + "0," + ",".join(["3"] * 15) + "\n")
    message = fails("pretrain", "--data", table, "--out", tmp_path / "pre", "--max-steps", 1)
    assert f"{table} line 3: 15 pixel values, expected 16" in message


def test_finetune_from_a_local_timm_checkpoint_adapts_rgb_weights_to_grayscale(folders, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    for name in ("test_vit", "test_convnext"):
        model = timm.create_model(name, pretrained=False)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / f"{name}.safetensors"))
    data, ft = folders[8], tmp_path / "ft"
    ok("finetune", "--from", tmp_path / "test_vit.safetensors", "--timm-model", "test_vit", "--train", data["train"],
       "--valid", data["valid"], "--out", ft, "--max-steps", 1, "--batch-size", 4, "--quiet")
    summary = json.loads((ft / "summary.json").read_text())
    assert summary["channels"] == 1 and summary["image_size"] == 160  # the checkpoint's size; its RGB filters summed
    assert json.loads((ft / "best" / "encoder.json").read_text())["timm_name"] == "test_vit"
    message = fails("finetune", "--from", tmp_path / "test_convnext.safetensors", "--timm-model", "test_convnext",
                    "--train", data["train"], "--valid", data["valid"], "--out", tmp_path / "ft2")
    assert "test_convnext: a ConvNeXt; the image modality trains VisionTransformer models" in message
