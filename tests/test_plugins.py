"""The plugin spine: entry points, switches, failure isolation, registries, plugin commands."""

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from foundry.errors import FoundryError
from foundry.hookspecs import hookimpl
from foundry.modality import Modality
from foundry.plugins import PluginManager
from foundry.readers import Reader


def _foundry(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, env=env, timeout=1800)  # a hang guard, never a race


def _install_broken_plugin(site):
    """A real installed distribution (dist-info with entry points) whose module raises on import."""
    dist = site / "foundry_broken_example-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: foundry-broken-example\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[foundry]\nbroken = foundry_broken_example\n")
    (dist / "RECORD").write_text("")
    (site / "foundry_broken_example.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")


def test_builtin_modalities_come_from_entry_points():
    result = _foundry("plugins")
    assert result.returncode == 0, result.stderr
    for name in ("protein", "text", "code"):
        assert f"{name}  (foundry " in result.stdout
    assert "tokenizers: esm" in result.stdout
    assert "readers: fasta" in result.stdout
    assert "commands: protein" in result.stdout


def test_a_broken_plugin_is_reported_and_the_others_keep_working(tmp_path):
    _install_broken_plugin(tmp_path)
    env = {"PYTHONPATH": str(tmp_path)}
    result = _foundry("plugins", env_extra=env)
    assert result.returncode == 0
    assert "broken  (foundry-broken-example)  FAILED: RuntimeError: this plugin is broken on purpose" in result.stdout
    assert "plugin 'broken' (foundry-broken-example) failed to load" in result.stderr
    assert "protein  (foundry" in result.stdout
    presets = _foundry("protein", "presets", env_extra=env)
    assert presets.returncode == 0 and "esm2_t6_8M" in presets.stdout


def test_allow_list_and_autoload_switch():
    only = _foundry("plugins", env_extra={"FOUNDRY_PLUGINS": "protein"})
    assert "protein  (" in only.stdout and "text  (" not in only.stdout and "code  (" not in only.stdout
    none = _foundry("plugins", env_extra={"FOUNDRY_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "no plugins loaded" in none.stdout
    missing = _foundry("text", "presets", env_extra={"FOUNDRY_PLUGINS": "protein"})
    assert missing.returncode != 0 and "No such command 'text'" in missing.stderr


def test_allow_list_entries_that_match_nothing_are_named():
    typo = _foundry("plugins", env_extra={"FOUNDRY_PLUGINS": "protien"})
    assert "FOUNDRY_PLUGINS names no installed plugin called 'protien' (did you mean 'protein'?); installed: " in typo.stdout
    assert "no plugins loaded" in typo.stdout
    assert "'protien' (did you mean 'protein'?)" in typo.stderr  # every command warns, not only `plugins`
    partly = _foundry("plugins", env_extra={"FOUNDRY_PLUGINS": "protein, txt"})
    assert "protein  (foundry" in partly.stdout and "called 'txt' (did you mean 'text'?)" in partly.stdout


@pytest.mark.parametrize("value", ["", " , "])
def test_an_empty_allow_list_loads_every_plugin(value):
    result = _foundry("plugins", env_extra={"FOUNDRY_PLUGINS": value})
    assert all(f"{name}  (foundry" in result.stdout for name in ("protein", "text", "code")), result.stdout


@pytest.mark.parametrize("value", ["0", "False", ""])
def test_autoload_switch_set_to_a_false_value_keeps_loading(value):
    result = _foundry("plugins", env_extra={"FOUNDRY_DISABLE_PLUGIN_AUTOLOAD": value})
    assert "protein  (foundry" in result.stdout and "no plugins loaded" not in result.stdout


class _DnaPlugin:
    """A third-party modality registered inline, the way a test or a notebook would."""

    @hookimpl
    def register_modalities(self, register):
        register(Modality(name="dna", description="nucleotides", objective="mlm", presets=("esm2_tiny",),
                          readers=("dna-fasta",), build_tokenizer=lambda docs, s: None, default_data=lambda: []))

    @hookimpl
    def register_readers(self, register):
        register(Reader(name="dna-fasta", suffixes=(".fna",), read=lambda path: iter(())))

    @hookimpl
    def register_commands(self, cli):
        @click.command(name="dna-hello")
        def hello():
            click.echo("hello from dna")

        cli.add_command(hello)


def test_register_use_and_unregister_a_plugin_inline():
    manager = PluginManager()
    info = manager.register_plugin(_DnaPlugin(), "dna", package="foundry-dna", version="0.0.1")
    assert info.contributes == {"modalities": ["dna"], "readers": ["dna-fasta"]}
    assert manager.modality("dna").objective == "mlm"
    cli = click.Group()
    manager.add_commands(cli)
    assert CliRunner().invoke(cli, ["dna-hello"]).output == "hello from dna\n"
    manager.unregister_plugin("dna")
    with pytest.raises(FoundryError, match="unknown modality 'dna'"):
        manager.modality("dna")


def test_duplicates_name_both_plugins_and_the_second_is_rejected():
    manager = PluginManager()
    manager.register_plugin(_DnaPlugin(), "dna", package="foundry-dna")
    assert manager.register_plugin(_DnaPlugin(), "dna-copy", package="foundry-dna-fork") is None
    failure = manager.failures[-1]
    assert failure.name == "dna-copy"
    assert "is registered twice: by dna (foundry-dna) and by dna-copy (foundry-dna-fork)" in failure.error
    assert manager.modality("dna") is not None, "the first registration survives"


def test_unknown_names_suggest_the_closest():
    manager = PluginManager()
    manager.register_plugin(_DnaPlugin(), "dna")
    with pytest.raises(FoundryError, match=r"unknown modality 'dn'. Did you mean 'dna'\? Known: dna"):
        manager.modality("dn")
