"""The plugin author's kit: presets as plain data (register_presets), foundry.testing (register
inline, run the CLI), modality groups that hide commands the modality cannot serve."""

import subprocess
import sys

import pytest

from foundry.cli_common import modality_group
from foundry.errors import ConfigError, FoundryError
from foundry.hookspecs import hookimpl
from foundry.modality import Modality
from foundry.model.presets import from_name, list_presets
from foundry.plugins import PluginManager
from foundry.testing import plugins_registered, run_cli

TINY = {"n_layer": 1, "n_head": 2, "d_model": 16, "d_ff": 32, "causal": False, "source": "a test"}


class _Letters:
    """A modality with its own preset and no importer (import_tokenizer is None)."""

    def __init__(self, presets=None):
        self.presets = presets if presets is not None else {"letters-tiny": TINY}

    @hookimpl
    def register_presets(self, register):
        for name, spec in self.presets.items():
            register(name, spec)

    @hookimpl
    def register_modalities(self, register):
        register(Modality(name="letters", description="letters", objective="mlm", presets=("letters-tiny",),
                          readers=(), build_tokenizer=lambda d, s: None, default_data=lambda: []))

    @hookimpl
    def register_commands(self, cli):
        cli.add_command(modality_group("letters"))


def test_a_plugin_preset_is_listed_and_builds_a_model_config():
    with plugins_registered(("letters", _Letters())) as manager:
        assert manager.plugins["letters"].contributes["presets"] == ["letters-tiny"]
        assert "letters-tiny" in list_presets() and "esm2_tiny" in list_presets()
        config = from_name("letters-tiny", vocab_size=30)
        assert (config.n_layer, config.d_model, config.vocab_size, config.name) == (1, 16, 30, "letters-tiny")
        listed = run_cli("plugins")
        assert "presets: letters-tiny (1 layers, d_model 16)" in listed.stdout
        shown = run_cli("letters", "presets")
        assert shown.exit_code == 0 and "letters-tiny     layers=1 d_model=16 heads=2  a test  (default)" in shown.stdout
    assert "letters-tiny" not in list_presets(), "gone with the plugin"


def test_preset_errors_name_the_preset_and_its_plugin():
    manager = PluginManager()
    assert manager.register_plugin(_Letters({"letters-tiny": {"n_layer": [1]}}), "bad", package="pkg-bad") is None
    assert manager.failures[-1].error == ("model preset 'letters-tiny': field 'n_layer' must be a plain value "
                                          "(number, string, bool, None), got list")
    with plugins_registered(("letters", _Letters({"letters-tiny": {**TINY, "n_layers": 2}}))):
        with pytest.raises(ConfigError, match=r"model preset 'letters-tiny' from letters \(letters\): unknown model "
                                              r"config key\(s\): n_layers"):
            from_name("letters-tiny")
    with pytest.raises(FoundryError, match="unknown model preset 'esm2_tiy'. Did you mean 'esm2_tiny'"):
        from_name("esm2_tiy")


def test_listing_plugins_with_presets_does_not_import_torch():
    code = (
        "import sys\n"
        "from foundry.hookspecs import hookimpl\n"
        "from foundry.testing import plugins_registered, run_cli\n"
        "class Presets:\n"
        "    @hookimpl\n"
        f"    def register_presets(self, register): register('letters-tiny', {TINY!r})\n"
        "with plugins_registered(('letters', Presets()), autoload=True):\n"
        "    result = run_cli('plugins')\n"
        "assert 'letters-tiny (1 layers' in result.stdout and 'protein  (foundry' in result.stdout, result.output\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", "listing plugins imported torch"


def test_a_modality_without_an_importer_hides_import():
    with plugins_registered(("letters", _Letters())):
        help_text = run_cli("letters", "--help").stdout
        assert "pretrain" in help_text and "import" not in help_text
        called = run_cli("letters", "import", "model.pt", "-o", "out")
    assert called.exit_code == 2
    assert ("No such command 'import': the letters modality cannot import outside models (its plugin gives no "
            "Modality.import_tokenizer)") in called.stderr


def test_builtins_keep_import():
    with plugins_registered(autoload=True):
        assert "import" in run_cli("protein", "--help").stdout


def test_run_cli_reports_errors_as_the_console_script_does():
    with plugins_registered(("letters", _Letters())):
        result = run_cli("letters", "pretrain", "--out", "/nonexistent/run", "--model", "nope")
    assert result.exit_code == 2 and result.stderr.startswith("error: ")


def test_plugins_registered_fails_the_test_when_a_plugin_is_refused():
    with pytest.raises(AssertionError, match="plugin 'copy' was refused: modality 'letters' is registered twice"):
        with plugins_registered(("letters", _Letters()), ("copy", _Letters({}))):
            pass
