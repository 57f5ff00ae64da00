"""The ``foundry`` command. Modalities add their groups through the ``register_commands`` hook."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import click

from . import __version__
from .errors import FoundryError
from .plugins_cli import plugins


@click.group()
@click.version_option(__version__, prog_name="foundry")
def cli() -> None:
    """foundry: pretrain and fine-tune transformer foundation models for text, code and proteins."""


cli.add_command(plugins)


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
        from .convert.hf import tokenizer_not_exported

        if out.exists() and any(out.iterdir()):
            raise FoundryError(f"{out}: already exists and is not empty")
        export_hf(loaded.model, loaded.tokenizer, out, loaded.modality, chat_template=loaded.extras.get("chat_template"))
        click.echo(f"wrote a transformers model to {out}")
        missing = tokenizer_not_exported(loaded.tokenizer)
        if missing:
            where = f"; tokenize with foundry's tokenizer in {model_dir / 'tokenizer'}" if loaded.tokenizer is not None else ""
            click.echo(f"note: {out} holds no tokenizer, AutoTokenizer will not load it: {missing}{where}", err=True)
    else:
        from .convert import export_fair_esm
        from .convert.fair_esm import regression_path

        cfg = loaded.model.config
        path = out if out.suffix == ".pt" else out / f"esm2_t{cfg.n_layer}_foundry.pt"
        taken = [p for p in (path, regression_path(path)) if p.exists()]
        if taken:  # as --to hf: never overwrite what is there
            raise FoundryError(f"{taken[0]}: already exists; choose another -o or remove it first")
        path.parent.mkdir(parents=True, exist_ok=True)
        written = export_fair_esm(loaded.model, path)
        click.echo(f"wrote a fair-esm checkpoint to {written}")


def build_cli() -> click.Group:
    """The root command with every plugin's commands. Built fresh on each call (a copy of ``cli``),
    so a plugin registered inline by a test, or one refused for a name clash, never lingers."""
    from .plugins import get_manager

    root = copy.copy(cli)
    root.commands = dict(cli.commands)
    get_manager().add_commands(root)
    return root


def main(argv: list[str] | None = None) -> None:
    group = build_cli()
    try:
        group.main(args=argv, prog_name="foundry", standalone_mode=False)
    except FoundryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))  # a stop signal keeps its status (143 for SIGTERM)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        # Last resort for a write that no atomic helper wrapped: a full disk is the user's to fix,
        # so it gets one line, not a traceback. Anything else is a bug and keeps its traceback.
        from .atomic import DiskFullError, is_disk_full

        if not is_disk_full(exc):
            raise
        click.echo(f"error: {DiskFullError(getattr(exc, 'filename', None))}", err=True)
        sys.exit(2)
