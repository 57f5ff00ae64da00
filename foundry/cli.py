"""The ``foundry`` command. Modalities add their groups through the ``register_commands`` hook."""

from __future__ import annotations

import os
import sys

import click

from . import __version__
from .errors import FoundryError


@click.group()
@click.version_option(__version__, prog_name="foundry")
def cli() -> None:
    """foundry: pretrain and fine-tune transformer foundation models for text, code and proteins."""


@cli.command()
@click.option("-v", "--verbose", is_flag=True, help="Show full tracebacks of failed plugins.")
def plugins(verbose: bool) -> None:
    """List loaded plugins, where they come from and what they contribute."""
    from .plugins import get_manager

    manager = get_manager()
    if not manager.plugins and not manager.failures:
        click.echo("no plugins loaded" + (" (FOUNDRY_DISABLE_PLUGIN_AUTOLOAD is set)" if os.environ.get("FOUNDRY_DISABLE_PLUGIN_AUTOLOAD") else ""))
    for name, info in sorted(manager.plugins.items()):
        click.echo(f"{name}  ({info.package} {info.version})".rstrip())
        for kind, items in sorted(info.contributes.items()):
            click.echo(f"  {kind}: {', '.join(items)}")
    for failure in manager.failures:
        click.echo(f"{failure.name}  ({failure.package})  FAILED: {failure.error}")
        if verbose:
            click.echo(failure.detail)


def build_cli() -> click.Group:
    from .plugins import get_manager

    get_manager().add_commands(cli)
    return cli


def main(argv: list[str] | None = None) -> None:
    group = build_cli()
    try:
        group.main(args=argv, prog_name="foundry", standalone_mode=False)
    except FoundryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
