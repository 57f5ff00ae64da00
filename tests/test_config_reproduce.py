"""A run's saved config.yaml says what the run used (the default preset, the bundled corpus), so
`foundry <modality> pretrain --config OUT/config.yaml --out NEW` runs it again, loss for loss."""

import json

import yaml

from foundry.cli import main

TINY = ["--set", "model.overrides.n_layer=1", "--set", "model.overrides.d_model=32", "--set", "model.overrides.n_head=2",
        "--set", "model.overrides.d_ff=64", "--set", "data.max_len=64", "--set", "data.batch_tokens=256",
        "--set", "data.max_train_docs=200", "--set", "data.max_valid_docs=10", "--set", "train.eval_batches=1",
        "--set", "train.warmup_steps=1", "--max-steps", "2", "--quiet"]


def run(*args):
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert exc.code == 0, f"foundry {' '.join(map(str, args))} exited {exc.code}"


def test_saved_config_records_what_the_run_used_and_reproduces_it(tmp_path, capsys):
    from foundry.plugins import get_manager

    protein = get_manager().modality("protein")
    first = tmp_path / "first"
    run("protein", "pretrain", "--out", first, *TINY)
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["model"]["preset"] == protein.default_preset
    assert saved["data"]["paths"] == [str(p) for p in protein.default_data()]

    again = tmp_path / "again"
    run("protein", "pretrain", "--config", first / "config.yaml", "--out", again, "--quiet")
    resaved = yaml.safe_load((again / "config.yaml").read_text())
    assert {**resaved, "out": None} == {**saved, "out": None}
    losses = [json.loads((d / "summary.json").read_text())["val_loss"] for d in (first, again)]
    assert losses[0] == losses[1]
