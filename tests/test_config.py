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
