"""FSDP2 through accelerate, proved on CPU: two gloo processes sharding the model with the shipped
``configs/accelerate/8gpu_fsdp.yml`` train the same model as one process, write ordinary model
directories, and a sharded run resumes on one process on the same sample stream.

accelerate (1.15) builds FSDP only on GPUs; foundry.distributed switches its state to FSDP on CPU
(torch's fully_shard runs over gloo), so these tests run accelerate's own FSDP2 code path. The
launcher's environment comes from accelerate's own config parsing of the shipped file.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY_PRETRAIN as TINY, foundry, losses

CONFIGS = Path(__file__).parent.parent / "configs" / "accelerate"
SETTINGS = ["--max-steps", "8", "--save-every", "4", *TINY, "--set", "train.eval_batches=3"]  # 3 batches: uneven over 2


def launch_env(config: Path, processes: int) -> dict[str, str]:
    """The FSDP_* / ACCELERATE_* variables ``accelerate launch --config_file CONFIG`` gives its workers."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "--num_processes", str(processes),
                                               "--mixed_precision", "no", "-m", "foundry"])
    args, _, _ = _validate_launch_command(args)
    return {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}


def _evals(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["val_loss"] for m in lines if "val_loss" in m}


def in_process(*args):
    """One-process runs in this process (no interpreter start-up): the same losses as a subprocess."""
    from foundry.testing import run_cli

    result = run_cli(*map(str, args))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("fsdp")
    in_process("protein", "pretrain", "--out", root / "one", *SETTINGS, "--set", "train.grad_accum=2")
    env = launch_env(CONFIGS / "8gpu_fsdp.yml", 2)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    foundry("protein", "pretrain", "--processes", "2", "--out", root / "sharded", *SETTINGS, env=env)
    return root / "one", root / "sharded"


def test_two_sharded_processes_train_the_same_model_as_one(runs):
    one, sharded = runs
    assert json.loads((sharded / "summary.json").read_text())["fsdp_processes"] == 2, "the run was not sharded"
    a, b = losses(one), losses(sharded)
    assert a.keys() == b.keys() == set(range(1, 9))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    for step, value in _evals(one).items():  # every process evaluates every batch under FSDP
        assert abs(value - _evals(sharded)[step]) < 1e-5


def test_a_sharded_checkpoint_is_an_ordinary_model_directory(runs):
    from safetensors.torch import load_file

    from foundry.model.store import load_model

    one, sharded = runs
    model_dir = sharded / "checkpoints" / "step-000008" / "model"
    weights = load_file(str(next(model_dir.glob("*.safetensors"))))
    reference = load_file(str(next((one / "checkpoints" / "step-000008" / "model").glob("*.safetensors"))))
    assert weights.keys() == reference.keys()
    for name, tensor in weights.items():  # full tensors, not shards
        assert tensor.shape == reference[name].shape, name
        assert torch.allclose(tensor, reference[name], atol=1e-5), name
    assert load_model(sharded / "final").model.config.d_model == 64


def test_a_sharded_run_resumes_on_one_process(runs, tmp_path, one_thread):
    one, sharded = runs
    out = tmp_path / "resumed"
    shutil.copytree(sharded, out)
    shutil.rmtree(out / "checkpoints" / "step-000008")
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    (out / "checkpoints" / "LATEST").write_text("step-000004\n")
    in_process("protein", "pretrain", "--resume", out, "--set", "train.grad_accum=2", "--quiet")
    reference, resumed = losses(one), losses(out)
    for step in range(5, 9):
        assert abs(reference[step] - resumed[step]) < 1e-5, (step, reference[step], resumed[step])


def test_shipped_accelerate_configs_parse_and_fsdp_ones_shard_blocks():
    from accelerate.commands.config.config_args import load_config_from_file

    from foundry.model.layers import Block

    files = sorted(CONFIGS.glob("*.yml"))
    assert {f.name for f in files} >= {"1gpu_bf16.yml", "8gpu_ddp.yml", "8gpu_fsdp.yml", "2node_fsdp.yml"}
    for path in files:
        config = load_config_from_file(str(path))
        if "fsdp" in path.name:
            assert str(config.distributed_type).endswith("FSDP"), path.name
            assert config.fsdp_config["fsdp_version"] == 2, path.name
            assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == Block.__name__, path.name
            assert config.fsdp_config["fsdp_activation_checkpointing"] is False, path.name


def test_a_model_too_small_to_shard_is_refused():
    from foundry.distributed import check_shardable
    from foundry.errors import ConfigError
    from foundry.model import Transformer
    from foundry.model.config import ModelConfig

    model = Transformer(ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, vocab_size=33))
    check_shardable(model, 8)
    with pytest.raises(ConfigError) as err:
        check_shardable(model, 64)
    assert str(err.value) == ("FSDP: the model is too small to shard over 64 processes (blocks.0.attn.q_proj.weight has 16 rows); "
                              "launch without an fsdp config (data-parallel) or on fewer processes")


def test_more_processes_than_gpus_is_one_line_exit_2(monkeypatch, tmp_path):
    from foundry.testing import run_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    result = run_cli("protein", "pretrain", "--out", str(tmp_path / "run"), "--max-steps", "1", "--set", "data.max_train_docs=20",
                     "--set", "data.max_valid_docs=2", "--quiet")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == ("error: launch: 8 processes on this machine but 1 GPU(s); start at most 1 "
                                     "(accelerate launch --num_processes, or --processes)")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_bf16_on_a_gpu_without_it_is_one_line_exit_2(monkeypatch, tmp_path):
    from foundry.testing import run_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-16GB")
    result = run_cli("protein", "pretrain", "--out", str(tmp_path / "run"), "--max-steps", "1", "--set", "train.mixed_precision=bf16",
                     "--quiet")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == ("error: train.mixed_precision: 'bf16' is not supported by this GPU (Tesla V100-SXM2-16GB); "
                                     "use 'fp16' or 'no'")


def test_the_launch_configs_precision_is_used_unless_the_run_config_says_otherwise(monkeypatch):
    from foundry.distributed import launcher_precision
    from foundry.errors import ConfigError

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what configs/accelerate/1gpu_bf16.yml sets
    assert launcher_precision("no") == "bf16" and launcher_precision("bf16") == "bf16"
    with pytest.raises(ConfigError) as err:
        launcher_precision("fp16")
    assert str(err.value) == ("train.mixed_precision: 'fp16', but the accelerate launch config asks for 'bf16'; make them agree")
