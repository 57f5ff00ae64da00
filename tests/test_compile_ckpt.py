"""train.compile and train.activation_checkpointing give the losses of eager training; bf16 autocast
runs on CPU; fine-tuning takes the same switches (the one loop).

Compilation here uses the ``aot_eager`` backend: dynamo's graph capture and AOTAutograd's backward,
without inductor's code generation, which alone takes about a minute for this tiny model on two
CPU cores (measured: 54 s; losses identical to eager). ``bench/gpu_check.py`` compiles with inductor.
"""

import json

import pytest

from conftest import TINY_PRETRAIN as TINY, foundry, losses

STEPS = ["--max-steps", "3", "--save-every", "3", "--set", "data.max_train_docs=60", "--set", "train.eval_every=3"]
# Dropout on, so recomputation must replay the same masks. Attention over packed rows (split by
# document lengths) stays outside the compiled graphs, so the blocks compile once for all batches.
MODEL = ["--set", "model.overrides.dropout=0.1"]


def pretrain(out, *extra):
    from foundry.testing import run_cli

    result = run_cli("protein", "pretrain", "--out", str(out), *TINY, *STEPS, *extra)
    assert result.exit_code == 0, result.output
    return losses(out)


@pytest.fixture(scope="module")
def eager(tmp_path_factory, one_thread):
    return pretrain(tmp_path_factory.mktemp("eager") / "run", *MODEL)


def test_activation_checkpointing_gives_the_eager_losses(eager, tmp_path, one_thread):
    checkpointed = pretrain(tmp_path / "ckpt", *MODEL, "--set", "train.activation_checkpointing=true")
    assert checkpointed.keys() == eager.keys()
    for step in eager:
        assert abs(checkpointed[step] - eager[step]) < 1e-5, (step, checkpointed[step], eager[step])


def test_compiled_blocks_give_the_eager_losses(eager, tmp_path, one_thread):
    compiled = pretrain(tmp_path / "compiled", *MODEL, "--set", "train.compile=true", "--set", "train.compile_backend=aot_eager")
    for step in eager:
        assert abs(compiled[step] - eager[step]) < 1e-4, (step, compiled[step], eager[step])
    # the checkpoint is the plain model: the same parameter names as an eager run's
    from foundry.model.store import load_model

    assert load_model(tmp_path / "compiled" / "final").model.config.n_layer == 2


def test_bf16_autocast_trains_on_cpu(eager, tmp_path):
    # a subprocess: accelerate fixes the precision once per process
    foundry("protein", "pretrain", "--out", tmp_path / "bf16", *TINY, *STEPS, *MODEL, "--set", "train.mixed_precision=bf16")
    bf16 = losses(tmp_path / "bf16")
    for step in eager:
        assert abs(bf16[step] - eager[step]) < 0.05, (step, bf16[step], eager[step])  # bf16 matmuls: ~3 significant digits


def test_an_unknown_compile_backend_is_one_line(tmp_path, one_thread):
    from foundry.testing import run_cli

    result = run_cli("protein", "pretrain", "--out", str(tmp_path / "run"), *TINY, *STEPS, "--set", "train.compile=true",
                     "--set", "train.compile_backend=inductorr")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith("error: train.compile_backend: 'inductorr' is not a torch.compile backend; one of ") and "inductor" in line


def test_finetuning_takes_the_same_switches(protein_model, tmp_path, one_thread):
    from conftest import FINETUNE_DATA
    from foundry.testing import run_cli

    out = tmp_path / "ft"
    result = run_cli("protein", "finetune", "--from", str(protein_model), "--task", "residue-classification",
                     "--train", str(FINETUNE_DATA / "ss3_train.csv"), "--valid", str(FINETUNE_DATA / "ss3_valid.csv"),
                     "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--quiet", "--strategy", "lora",
                     "--set", "train.activation_checkpointing=true")  # (compiling: padded batches change shape, dynamo re-traces)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(m["loss"] == m["loss"] for m in lines if "lr" in m)  # finite, not NaN
