"""The learning rate a fine-tuning run gets when none is given, and that config.yaml records it."""

import pytest
import yaml

from conftest import FINETUNE_DATA as DATA, foundry, head_rows as head
from foundry.finetune.run import default_lr


@pytest.mark.parametrize("d_model, lr", [(32, 1e-3), (128, 1e-3), (320, 4e-4), (1280, 1e-4), (2560, 5e-5), (10**6, 1e-5)])
def test_full_fine_tuning_lr_shrinks_with_width(d_model, lr):
    assert default_lr("full", d_model) == pytest.approx(lr)


def test_head_and_adapter_lr_do_not_depend_on_width():
    assert default_lr("frozen", 1280) == default_lr("lora", 32) == 1e-3


def test_run_records_the_width_aware_default_and_an_explicit_lr_wins(tmp_path):
    train, valid = head(DATA / "amp_valid.csv", tmp_path / "t.csv", 16), head(DATA / "amp_valid.csv", tmp_path / "v.csv", 8)
    common = ["protein", "finetune", "--model", "esm2_tiny", "--model-set", "n_layer=1", "--model-set", "d_model=256",
              "--model-set", "n_head=2", "--model-set", "d_ff=64", "--task", "sequence-classification", "--train", train,
              "--valid", valid, "--max-steps", "1", "--quiet", "--no-forgetting"]
    foundry(*common, "--out", tmp_path / "default")
    assert yaml.safe_load((tmp_path / "default" / "config.yaml").read_text())["train"]["lr"] == pytest.approx(5e-4)
    foundry(*common, "--out", tmp_path / "given", "--lr", "3e-3")
    assert yaml.safe_load((tmp_path / "given" / "config.yaml").read_text())["train"]["lr"] == pytest.approx(3e-3)
