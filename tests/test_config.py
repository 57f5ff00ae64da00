"""Run configs: every shipped YAML loads, and typos or wrong types fail naming the key."""

from pathlib import Path

import pytest

from foundry.config import build_config, load_yaml
from foundry.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def test_configs_folder_is_not_empty():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parent.parent)))
def test_every_shipped_config_validates(path):
    cfg = build_config(yaml_file=path)
    assert cfg.modality == path.parent.name
    from foundry.model.presets import PRESETS

    assert cfg.model.preset in PRESETS


def test_overrides_are_typed_and_nested():
    cfg = build_config(overrides=["train.lr=1e-3", "data.paths=[a.fasta, b.fasta]", "model.overrides.n_layer=2", "train.progress=false"])
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)
    assert cfg.data.paths == ["a.fasta", "b.fasta"]
    assert cfg.model.overrides == {"n_layer": 2}
    assert cfg.train.progress is False


def test_later_sources_win(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  lr: 0.1\n  max_steps: 5\n")
    cfg = build_config(base={"train": {"lr": 0.5, "seed": 3}}, yaml_file=f, overrides=["train.max_steps=7"])
    assert (cfg.train.lr, cfg.train.max_steps, cfg.train.seed) == (0.1, 7, 3)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config key train.lrr. Did you mean train.lr?"),
        ("train.max_steps=ten", "train.max_steps: expected an integer, got 'ten'"),
        ("train.mixed_precision=fp8", "train.mixed_precision: 'fp8' is not allowed; choose one of 'no', 'bf16', 'fp16'"),
        ("trian.lr=1", "unknown config key trian. Did you mean train?"),
        ("train.progress=maybe", "train.progress: expected true or false"),
        ("novalue", "expected key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        build_config(overrides=[override])
    assert message in str(err.value)


def test_yaml_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_yaml(f)
    g = tmp_path / "list.yaml"
    g.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(g)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_yaml_typo_in_file(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("data:\n  max_lenght: 128\n")
    with pytest.raises(ConfigError, match="unknown config key data.max_lenght. Did you mean data.max_len?"):
        build_config(yaml_file=f)


# -- ranges: every number is checked before anything runs ------------------------------------


def _numeric_keys(cls, prefix=""):
    import dataclasses
    import typing

    from foundry.config import _numeric

    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            keys += _numeric_keys(tp, f"{prefix}{f.name}.")
        elif item is not None and dataclasses.is_dataclass(item):
            keys += _numeric_keys(item, f"{prefix}{f.name}[].")
        elif _numeric(tp) is not None:
            keys.append(prefix + f.name)
    return keys


def test_every_numeric_key_has_a_range():
    from foundry.config import RANGES, RunConfig

    keys = _numeric_keys(RunConfig)
    assert len(keys) > 20
    assert sorted(set(keys) - set(RANGES)) == [], "add the allowed range of each new numeric key to RANGES"
    assert sorted(set(RANGES) - set(keys)) == [], "RANGES names keys that no longer exist"
    build_config(base=RunConfig().to_dict())  # every default is inside its own range


@pytest.mark.parametrize(
    "override, message",
    [
        # the values of the bug report, each of which crashed or ran wrongly
        ("train.lr=-1e-3", "train.lr: -0.001 is not allowed; must be a finite number > 0"),
        ("train.lr=nan", "train.lr: nan is not allowed; must be a finite number > 0"),
        ("train.save_every=0", "train.save_every: 0 is not allowed; must be an integer >= 1 (steps between checkpoints)"),
        ("train.eval_every=0", "train.eval_every: 0 is not allowed; must be an integer >= 1 (steps between evaluations)"),
        ("data.max_len=0", "data.max_len: 0 is not allowed; must be an integer >= 2 (tokens per row: at least one input and one target)"),
        ("train.grad_accum=0", "train.grad_accum: 0 is not allowed; must be an integer >= 1 (micro-batches per optimizer step)"),
        ("train.max_steps=0", "train.max_steps: 0 is not allowed; must be an integer >= 1 (optimizer steps to train)"),
        ("train.max_steps=-3", "train.max_steps: -3 is not allowed; must be an integer >= 1"),
        ("data.batch_tokens=0", "data.batch_tokens: 0 is not allowed; must be an integer >= 1 (tokens per micro-batch)"),
        ("objective.fim_rate=1.5", "objective.fim_rate: 1.5 is not allowed; must be a finite number in [0, 1]"),
        ("objective.mask_prob=1.5", "objective.mask_prob: 1.5 is not allowed; must be a finite number in (0, 1]"),
        ("train.warmup_steps=-5", "train.warmup_steps: -5 is not allowed; must be an integer >= 0"),
        # and the rest of the table, one of each kind
        ("train.beta2=1", "train.beta2: 1.0 is not allowed; must be a finite number in [0, 1)"),
        ("train.lr=inf", "train.lr: inf is not allowed"),
        ("train.seed=-1", "train.seed: -1 is not allowed; must be an integer in [0, 4294967295]"),
        ("data.valid_fraction=1", "data.valid_fraction: 1.0 is not allowed; must be a finite number in [0, 1)"),
        ("data.max_train_docs=0", "data.max_train_docs: 0 is not allowed; must be an integer >= 1 (or null for no cap)"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints: 0 is not allowed; must be an integer >= 1"),
        ("data.sources=[{path: a, weight: 0}]", "data.sources[0].weight: 0.0 is not allowed; must be a finite number > 0"),
        ("data.batch_tokens=100", "data.batch_tokens: 100 is not allowed; must be >= data.max_len (512)"),
        ("objective.random_replace=0.5", "objective.mask_replace + objective.random_replace: 0.8 + 0.5 is not allowed"),
        ("data.on_decode_error=ignore", "data.on_decode_error: 'ignore' is not allowed; choose one of 'error', 'skip'"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as err:
        build_config(overrides=[override])
    assert message in str(err.value)


def test_allowed_edges_pass():
    cfg = build_config(overrides=["train.max_steps=1", "objective.fim_rate=1", "objective.mask_prob=1", "train.warmup_steps=0",
                                  "train.clip_norm=0", "data.max_train_docs=null", "data.valid_fraction=0", "train.seed=4294967295"])
    assert cfg.train.max_steps == 1 and cfg.data.max_train_docs is None


def test_yaml_values_are_checked_too(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  save_every: 0\n")
    with pytest.raises(ConfigError, match="train.save_every: 0 is not allowed"):
        build_config(yaml_file=f)


def test_bad_value_on_the_command_line_fails_before_anything_runs(tmp_path, capsys):
    from foundry.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["protein", "pretrain", "--out", str(out), "--max-steps", "0", "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: train.max_steps: 0 is not allowed; must be an integer >= 1 (optimizer steps to train)"
    assert not out.exists(), "a refused config leaves no run folder behind"


# -- resolving for a run: what the run uses is what config.yaml says -------------------------


def _modality(name="protein"):
    from foundry.plugins import get_manager

    return get_manager().modality(name)


def test_resolved_config_records_the_preset_and_the_bundled_data():
    from foundry.config import resolve_for_run

    protein = _modality()
    cfg = build_config(base={"modality": "protein"})
    resolved = resolve_for_run(cfg, protein)
    assert resolved.model.preset == protein.default_preset
    assert resolved.data.paths == [str(p) for p in protein.default_data()] and resolved.data.paths
    assert cfg.model.preset == "" and cfg.data.paths == [], "the given config is not changed"
    again = build_config(base=load_yaml_text(resolved.to_yaml()))
    assert resolve_for_run(again, protein) == resolved, "a saved resolved config resolves to itself"


def test_resolving_keeps_what_the_user_chose():
    from foundry.config import resolve_for_run

    protein = _modality()
    chosen = resolve_for_run(build_config(overrides=["model.preset=esm2_t6_8M", "data.paths=[mine.fasta]"]), protein)
    assert (chosen.model.preset, chosen.data.paths) == ("esm2_t6_8M", ["mine.fasta"])
    continued = resolve_for_run(build_config(overrides=["model.init_from=runs/x/final"]), protein)
    assert continued.model.preset == "", "a run that starts from a model takes its shape from it, not from a preset"
    mixed = resolve_for_run(build_config(overrides=["data.sources=[{path: a}, {path: b}]"]), protein)
    assert mixed.data.paths == []


def load_yaml_text(text):
    import yaml

    return yaml.safe_load(text)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_fp16_without_a_gpu_is_refused_not_ignored():
    from foundry.config import resolve_for_run

    with pytest.raises(ConfigError) as err:
        resolve_for_run(build_config(overrides=["train.mixed_precision=fp16"]), _modality())
    assert str(err.value) == ("train.mixed_precision: 'fp16' needs a CUDA GPU and this machine has none "
                              "(CPU autocast has no float16); use 'bf16' or 'no' here")
    resolve_for_run(build_config(overrides=["train.mixed_precision=bf16"]), _modality())  # CPU autocast runs bf16


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_fp16_pretrain_on_cpu_exits_with_the_reason(tmp_path, capsys):
    from foundry.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["protein", "pretrain", "--out", str(out), "--set", "train.mixed_precision=fp16", "--set", "data.max_train_docs=20",
              "--set", "data.max_valid_docs=2", "--max-steps", "1", "--quiet"])
    assert exit_info.value.code == 2
    assert "error: train.mixed_precision: 'fp16' needs a CUDA GPU" in capsys.readouterr().err
    assert not (out / "config.yaml").exists()
