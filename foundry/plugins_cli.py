"""``foundry plugins``: what is loaded, from which package, what each contributes, what was refused
and why; ``foundry plugins new NAME`` scaffolds a plugin package (see docs/plugins.md).

Listing never imports torch: presets are plain data and modalities are dataclasses.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group(name="plugins", invoke_without_command=True)
@click.option("-v", "--verbose", is_flag=True, help="Show full tracebacks of failed plugins.")
@click.pass_context
def plugins(ctx: click.Context, verbose: bool) -> None:
    """List loaded plugins, where they come from and what they contribute.

    \b
    FOUNDRY_PLUGINS=a,b                 load only these entry points (unset or empty: all)
    FOUNDRY_DISABLE_PLUGIN_AUTOLOAD=1   load none (0, false, no, off: load as usual)
    """
    if ctx.invoked_subcommand is not None:
        return
    from .plugins import autoload_disabled, get_manager, unmatched_message

    manager = get_manager()
    if manager.unmatched:
        click.echo(unmatched_message(manager.unmatched, manager.installed))
    if not manager.plugins and not manager.failures:
        why = " (FOUNDRY_DISABLE_PLUGIN_AUTOLOAD is set)" if autoload_disabled() else ""
        click.echo(f"no plugins loaded{why}")
    root = ctx.find_root().command
    for name, info in sorted(manager.plugins.items()):
        click.echo(f"{name}  ({info.package} {info.version})".rstrip())
        for kind, items in sorted(info.contributes.items()):
            click.echo(f"  {kind}: {', '.join(_describe(kind, item, manager, root) for item in items)}")
    for failure in manager.failures:
        click.echo(f"{failure.name}  ({failure.package})  FAILED: {failure.error}")
        if verbose:
            click.echo(failure.detail)


@plugins.command(name="new")
@click.argument("name")
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Directory to create (default: ./foundry-NAME).")
@click.pass_context
def new(ctx: click.Context, name: str, out: Path | None) -> None:
    """Scaffold a plugin package NAME: pyproject with the entry point, tokenizer, reader, modality,
    preset, command group and tests that pass right after `pip install`."""
    from .scaffold import create_plugin

    created = create_plugin(name, out, taken_commands=ctx.find_root().command.commands)
    click.echo(f"created {created}")
    click.echo(f"next: pip install -e {created} && python -m pytest {created / 'tests'}")


def _describe(kind: str, item: str, manager, root: click.Group) -> str:
    """A contribution with its details: a modality's objective, a command group's subcommands."""
    if kind == "modalities":
        modality = manager.modality(item)
        return f"{item} ({modality.objective}, default preset {modality.default_preset})"
    if kind == "commands" and isinstance(root.commands.get(item), click.Group):
        group = root.commands[item]
        return f"{item} [{' '.join(sorted(group.list_commands(click.Context(group))))}]"
    if kind == "readers":
        return f"{item} ({' '.join(manager.readers.get(item).suffixes)})"
    if kind == "presets":
        spec = manager.presets.get(item)
        return f"{item} ({spec.get('n_layer', '?')} layers, d_model {spec.get('d_model', '?')})"
    return item
