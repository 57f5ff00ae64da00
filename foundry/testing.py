"""Helpers for testing foundry plugins: register a plugin inline, run the CLI, read exit code and output.

    from foundry.testing import plugins_registered, run_cli
    from my_package import plugin

    def test_presets():
        with plugins_registered(plugin):                  # only this plugin (plus the engine)
            result = run_cli("mymodality", "presets")
        assert result.exit_code == 0, result.output
        assert "mymodality-tiny" in result.stdout

``run_cli`` runs ``foundry ARGS…`` in this process exactly as the console script does (errors
become ``error: …`` and exit code 2); an unexpected exception is raised, not hidden, so a test
shows its traceback. Outside ``plugins_registered`` it sees the installed plugins.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import click
from click.testing import CliRunner

from .plugins import PluginManager, set_manager


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout then stderr: what a failing assertion should show."""
        return self.stdout + self.stderr


@contextmanager
def plugins_registered(*plugins: Any, autoload: bool = False) -> Iterator[PluginManager]:
    """Run the block with a fresh process-wide plugin manager holding ``plugins``.

    Each plugin is a module or object with ``@hookimpl`` functions, or a ``(name, plugin)`` pair;
    the name defaults to the module's or class's name. ``autoload=True`` loads the installed
    plugins first (built-ins included), so the test sees what a user would, plus these. A refused
    plugin (a broken hook, a name clash) fails the test with the reason. The previous manager is
    restored afterwards.
    """
    manager = PluginManager()
    if autoload:
        manager.load_entry_points()
    for plugin in plugins:
        name, obj = plugin if isinstance(plugin, tuple) else (_name_of(plugin), plugin)
        if manager.register_plugin(obj, name, package=name) is None:
            raise AssertionError(f"plugin {name!r} was refused: {manager.failures[-1].error}")
    previous = set_manager(manager)
    try:
        yield manager
    finally:
        set_manager(previous)


def run_cli(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """``foundry ARGS…`` in this process; returns exit code, stdout and stderr."""
    from .cli import main

    @click.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    def entry(argv: tuple[str, ...]) -> None:
        main(list(argv))

    result = CliRunner().invoke(entry, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    try:
        stdout, stderr = result.stdout, result.stderr
    except ValueError:  # click < 8.2 mixes the streams
        stdout, stderr = result.output, ""
    return CliResult(result.exit_code, stdout, stderr)


def _name_of(plugin: Any) -> str:
    name = getattr(plugin, "__name__", None) or type(plugin).__name__
    return name.replace("_", "-").lower()
