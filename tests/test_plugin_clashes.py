"""Built-ins load first and keep their names: a third-party plugin that claims a taken name (a
modality, a command, a preset, its entry-point name) is refused with both packages named, is
reported by `foundry plugins`, and the built-in keeps working."""

import os
import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner

from foundry.hookspecs import hookimpl
from foundry.modality import Modality
from foundry.plugins import PluginManager

REFUSED = "the first keeps it, the second is refused"


def _install(site, dist, entry_points, module, source):
    """A real installed distribution: dist-info with METADATA and entry points, plus its module."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[foundry]\n{lines}")
    (info / "RECORD").write_text("")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    # Sorts before "protein": before the fix it registered first and the built-in failed.
    _install(site, "aa-protein", {"aa-protein": "aa_protein"}, "aa_protein", """
        from foundry.hookspecs import hookimpl
        from foundry.modality import Modality

        @hookimpl
        def register_modalities(register):
            register(Modality(name="protein", description="impostor", objective="mlm", presets=("esm2_tiny",),
                              readers=("fasta",), build_tokenizer=lambda d, s: None, default_data=lambda: []))
    """)
    _install(site, "aa-commands", {"aa-commands": "aa_commands"}, "aa_commands", """
        import click
        from foundry.hookspecs import hookimpl

        @hookimpl
        def register_commands(cli):
            @click.group(name="protein")
            def hijack():
                pass

            @hijack.command(name="presets")
            def presets():
                click.echo("hijacked")

            cli.add_command(hijack)
    """)
    _install(site, "aa-presets", {"aa-presets": "aa_presets"}, "aa_presets", """
        from foundry.hookspecs import hookimpl

        @hookimpl
        def register_presets(register):
            register("esm2_tiny", {"n_layer": 1, "d_model": 8, "n_head": 1, "d_ff": 8})
    """)
    # A second distribution whose entry point is called "protein".
    _install(site, "zz-protein", {"protein": "zz_protein"}, "zz_protein", "x = 1\n")
    return site


def _foundry(site, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-m", "foundry", *args], capture_output=True, text=True, env=env, timeout=120)


def test_newcomers_that_claim_builtin_names_are_refused_and_named(site):
    result = _foundry(site, "plugins")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert ("aa-protein  (aa-protein)  FAILED: modality 'protein' is registered twice: by protein (foundry) and by "
            f"aa-protein (aa-protein); {REFUSED}") in out
    assert ("aa-commands  (aa-commands)  FAILED: command 'protein' is registered twice: by protein (foundry) and by "
            f"aa-commands (aa-commands); {REFUSED}") in out
    assert ("aa-presets  (aa-presets)  FAILED: model preset 'esm2_tiny' is registered twice: by foundry (engine) and "
            f"by aa-presets (aa-presets); {REFUSED}") in out
    assert ("protein  (zz-protein)  FAILED: plugin name 'protein' is registered twice: by protein (foundry) and by "
            f"protein (zz-protein); {REFUSED}") in out
    assert "protein  (foundry 0.1.0)\n  commands: protein [" in out, "the built-in is credited with its command"
    assert "plugin 'aa-protein' (aa-protein) failed to load and is skipped" in result.stderr


def test_the_builtin_keeps_working_beside_refused_newcomers(site):
    result = _foundry(site, "protein", "presets")
    assert result.returncode == 0, result.stderr
    assert "esm2_t6_8M" in result.stdout and "hijacked" not in result.stdout
    assert "esm2_tiny        layers=4 d_model=128" in result.stdout  # the engine's preset, not the impostor's


class _Hello:
    """An inline plugin adding `foundry hello`; ``text`` is what it prints."""

    def __init__(self, text, modality=None):
        self.text, self.modality = text, modality

    @hookimpl
    def register_modalities(self, register):
        if self.modality:
            register(Modality(name=self.modality, description="x", objective="mlm", presets=("esm2_tiny",),
                              readers=(), build_tokenizer=lambda d, s: None, default_data=lambda: []))

    @hookimpl
    def register_commands(self, cli):
        text = self.text

        @click.command(name="hello")
        def hello():
            click.echo(text)

        cli.add_command(hello)


def test_a_command_name_taken_by_an_earlier_plugin_is_refused_as_a_whole():
    manager = PluginManager()
    manager.register_plugin(_Hello("first"), "first", package="pkg-first")
    manager.register_plugin(_Hello("second", modality="second-modality"), "second", package="pkg-second")
    cli = click.Group(commands={"export": click.Command("export")})
    manager.add_commands(cli)
    assert CliRunner().invoke(cli, ["hello"]).output == "first\n"
    assert manager.failures[-1].error == f"command 'hello' is registered twice: by first (pkg-first) and by second (pkg-second); {REFUSED}"
    assert "second" not in manager.plugins and "second-modality" not in manager.modalities, "nothing of it is kept"
    assert manager.plugins["first"].contributes["commands"] == ["hello"]


def test_a_plugin_cannot_replace_a_core_command():
    manager = PluginManager()

    class Export:
        @hookimpl
        def register_commands(self, cli):
            cli.add_command(click.Command("export", callback=lambda: click.echo("mine")))

    manager.register_plugin(Export(), "exporter", package="pkg-export")
    core = click.Command("export", callback=lambda: click.echo("core"))
    cli = click.Group(commands={"export": core})
    manager.add_commands(cli)
    assert cli.commands["export"] is core
    assert "command 'export' is registered twice: by foundry (engine) and by exporter (pkg-export)" in manager.failures[-1].error
