"""The image plugin on the engine's seams: ``mae`` and ``image-classification`` are registered
components (listed by ``foundry plugins``), every registered image objective pretrains and resumes
through ``foundry image pretrain``, a third-party plugin's image objective and task are offered by
the image commands with no edit, and objectives are only offered for the data they train on."""

import json

import numpy as np
import pytest

from foundry.hookspecs import hookimpl
from foundry.objectives import PACKED_TOKENS, objectives_for
from foundry.plugins import get_manager
from foundry.testing import plugins_registered, run_cli
from modalities.image import plugin
from modalities.image.components import IMAGE_BATCHES, ImageClassification, MaskedPatches
from test_image_cli import FAST, digits, losses, rewind, write_folder


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root, rows = tmp_path_factory.mktemp("digits8"), digits()
    return {name: write_folder(root / name, rows, 8, n, off) for name, n, off in (("train", 5, 0), ("valid", 2, 5))}


class HalfMasked(MaskedPatches):
    """MAE that drops half of the patches: a third party's image objective."""

    name = "mae-half"
    batches = 0  # training batches it scored: proof the run used it

    def build(self, encoder):
        model = super().build(encoder)
        model.mask_ratio = 0.5
        return model

    def __call__(self, model, images, *, generator, train=True, device="cpu"):
        HalfMasked.batches += int(train)
        return super().__call__(model, images, generator=generator, train=train, device=device)


class Smoothed(ImageClassification):
    """Image classification with label smoothing: a third party's image task."""

    name = "image-classification-smoothed"
    calls = 0

    def loss(self, logits, targets, info=None):
        import torch.nn.functional as F

        Smoothed.calls += 1
        return F.cross_entropy(logits.float(), targets, label_smoothing=0.1)


class ToyImagePlugin:
    @hookimpl
    def register_objectives(register):
        register(HalfMasked)

    @hookimpl
    def register_tasks(register):
        register(Smoothed)


def cli(*args, toy=False):
    with plugins_registered(plugin, *([("toy", ToyImagePlugin)] if toy else [])):
        return run_cli(*map(str, args))


def ok(*args, toy=False):
    result = cli(*args, toy=toy)
    assert result.exit_code == 0, result.output
    return result


def error(*args) -> str:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    return result.stderr.strip()


def test_the_plugin_registers_mae_and_image_classification_and_plugins_lists_them():
    manager = get_manager()
    assert manager.objective_class("mae").batch_kind == IMAGE_BATCHES and manager.objectives.owner("mae").startswith("image")
    assert manager.task_class("image-classification").modalities == ("image",)
    assert "mae" in objectives_for(IMAGE_BATCHES) and "mae" not in objectives_for(PACKED_TOKENS)
    with plugins_registered(autoload=True):
        listing = run_cli("plugins").stdout
        assert "image-classification" not in run_cli("protein", "finetune", "--help").stdout
    lines = listing.split("image  (")[1].splitlines()[1:]
    image_block = "\n".join(lines[: next((i for i, line in enumerate(lines) if not line.startswith(" ")), len(lines))])
    assert "objectives: mae" in image_block and "tasks: image-classification" in image_block


@pytest.mark.parametrize("name", objectives_for(IMAGE_BATCHES))
def test_every_registered_image_objective_pretrains_two_steps_and_resumes(name, small, tmp_path):
    out = tmp_path / "run"
    ok("image", "pretrain", "--data", small["train"], "--objective", name, "--out", out, "--max-steps", 2, "--save-every", 1,
       "--batch-size", 4, *FAST)
    reference = losses(out)
    assert sorted(reference) == [1, 2] and all(np.isfinite(v) for v in reference.values())
    assert json.loads((out / "final" / "image_model.json").read_text())["objective"] == name
    rewind(out, to_step=1)
    ok("image", "pretrain", "--resume", out, "--quiet")
    assert losses(out) == reference


def test_a_third_party_image_objective_and_task_train_through_the_image_commands(small, tmp_path):
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    HalfMasked.batches = Smoothed.calls = 0
    ok("image", "pretrain", "--data", small["train"], "--objective", "mae-half", "--out", pre, "--max-steps", 2, "--batch-size", 4,
       *FAST, toy=True)
    assert HalfMasked.batches == 2 and json.loads((pre / "summary.json").read_text())["objective"] == "mae-half"
    ok("image", "finetune", "--from", pre / "final", "--task", "image-classification-smoothed", "--train", small["train"],
       "--valid", small["valid"], "--out", ft, "--max-steps", 2, "--batch-size", 4, "--quiet", toy=True)
    assert Smoothed.calls == 2 and json.loads((ft / "summary.json").read_text())["task"] == "image-classification-smoothed"


def test_objectives_and_tasks_are_offered_only_for_their_data(small, tmp_path):
    assert error("image", "pretrain", "--data", small["train"], "--objective", "mlm", "--out", tmp_path / "a") == (
        "error: objective mlm trains on packed-tokens batches, not images; image objectives: mae")
    assert "Did you mean 'mae'?" in error("image", "pretrain", "--data", small["train"], "--objective", "maee", "--out", tmp_path / "b")
    assert error("image", "finetune", "--model", "vit-micro", "--task", "sequence-regression", "--train", small["train"],
                 "--valid", small["valid"], "--out", tmp_path / "c") == (
        "error: --task sequence-regression: not an image task; image tasks: image-classification")
    with plugins_registered(autoload=True):
        refused = run_cli("protein", "pretrain", "--set", "objective.name=mae", "--out", str(tmp_path / "d")).stderr
    assert refused.startswith("error: objective mae: trains on image-tensors batches, not a pretraining corpus; pretraining objectives: ")
    assert not any((tmp_path / d).exists() for d in "abcd")
