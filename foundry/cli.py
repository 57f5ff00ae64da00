"""The ``foundry`` command. Modalities add their groups through the ``register_commands`` hook."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
            click.echo(f"  {kind}: {', '.join(_describe(kind, item, manager) for item in items)}")
    for failure in manager.failures:
        click.echo(f"{failure.name}  ({failure.package})  FAILED: {failure.error}")
        if verbose:
            click.echo(failure.detail)


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(["hf", "esm"]), required=True, help="hf: transformers directory; esm: fair-esm checkpoint.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output directory (hf) or .pt file / directory (esm).")
def export(model_dir: Path, target: str, out: Path) -> None:
    """Export a model directory for use without foundry.

    --to hf writes a directory that transformers' AutoModelForMaskedLM / AutoModelForCausalLM and
    AutoTokenizer load; --to esm writes a checkpoint fair-esm's load_model_and_alphabet_local reads.
    """
    from .model.store import load_model

    loaded = load_model(model_dir)
    if target == "hf":
        from .convert import export_hf

        if out.exists() and any(out.iterdir()):
            raise FoundryError(f"{out}: already exists and is not empty")
        export_hf(loaded.model, loaded.tokenizer, out, loaded.modality)
        click.echo(f"wrote a transformers model to {out}")
    else:
        from .convert import export_fair_esm

        cfg = loaded.model.config
        path = out if out.suffix == ".pt" else out / f"esm2_t{cfg.n_layer}_foundry.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        written = export_fair_esm(loaded.model, path)
        click.echo(f"wrote a fair-esm checkpoint to {written}")


def _describe(kind: str, item: str, manager) -> str:
    """A contribution with its details: a modality's objective, a command group's subcommands."""
    if kind == "modalities":
        modality = manager.modality(item)
        return f"{item} ({modality.objective}, default preset {modality.default_preset})"
    if kind == "commands" and isinstance(cli.commands.get(item), click.Group):
        return f"{item} [{' '.join(sorted(cli.commands[item].commands))}]"
    if kind == "readers":
        return f"{item} ({' '.join(manager.readers.get(item).suffixes)})"
    return item


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
