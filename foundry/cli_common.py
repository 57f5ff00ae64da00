"""Commands every modality shares, bundled into the modality's ``click`` group.

A modality plugin calls ``modality_group(name)`` in its ``register_commands`` hook and may add its
own commands to the returned group (``foundry protein import``, ``foundry text train-tokenizer``).
"""

from __future__ import annotations

from pathlib import Path

import click

from .errors import FoundryError


class ModalityGroup(click.Group):
    """A modality's command group. Commands the modality cannot serve are hidden (left out of
    ``--help``) and, called anyway, refused with the reason, instead of failing once running."""

    def __init__(self, *args, modality_name: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.modality_name = modality_name

    def unavailable(self) -> dict[str, str]:
        """Command name -> why this modality cannot run it (looked up when the CLI is used)."""
        from .plugins import get_manager

        try:
            modality = get_manager().modality(self.modality_name)
        except FoundryError:
            return {}  # not this process's manager (a test's own): hide nothing
        if modality.import_tokenizer is None:
            return {"import": f"the {self.modality_name} modality cannot import outside models "
                              "(its plugin gives no Modality.import_tokenizer)"}
        return {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        hidden = self.unavailable()
        return [name for name in super().list_commands(ctx) if name not in hidden]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        reason = self.unavailable().get(cmd_name)
        if reason:
            raise click.UsageError(f"No such command {cmd_name!r}: {reason}.", ctx)
        return super().get_command(ctx, cmd_name)


def modality_group(name: str, help_text: str | None = None) -> click.Group:
    @click.group(name=name, cls=ModalityGroup, modality_name=name, help=help_text or f"Pretrain and use {name} models.")
    def group() -> None:
        pass

    group.add_command(_pretrain_command(name))
    group.add_command(_presets_command(name))
    group.add_command(_prepare_command(name))
    group.add_command(_import_command(name))
    from .evaluate_cmd import evaluate_command

    group.add_command(evaluate_command(name))
    return group


def _import_command(modality_name: str) -> click.Command:
    @click.command(name="import")
    @click.argument("source")
    @click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
    @click.option("--allow-missing-head", is_flag=True, help="Accept a trunk without its LM head (e.g. HF EsmModel); the head starts random.")
    def import_(source, out, allow_missing_head):
        """Convert an outside model (fair-esm .pt, transformers dir, cached hub id) into a model dir.

        The result loads with --from, fine-tunes, and exports back with `foundry export`.
        """
        from .loading import load_for_modality
        from .model.store import save_model
        from .plugins import get_manager

        if out.exists() and any(out.iterdir()):
            raise FoundryError(f"{out}: already exists and is not empty")
        modality = get_manager().modality(modality_name)
        model, tokenizer, source_format = load_for_modality(source, modality, allow_missing_head=allow_missing_head)
        if source_format == "foundry":
            raise FoundryError(f"{source}: already a foundry model directory; use it directly")
        save_model(out, model, tokenizer, modality_name, extras={"imported_from": str(source), "source_format": source_format})
        cfg = model.config
        click.echo(f"imported {source_format} model: {cfg.n_layer} layers, d_model {cfg.d_model}, "
                   f"{model.num_parameters():,} parameters, vocabulary {tokenizer.vocab_size} -> {out}")

    return import_


def _pretrain_command(modality_name: str) -> click.Command:
    @click.command(name="pretrain")
    @click.option("--data", "data", multiple=True, type=click.Path(path_type=Path), help="File, folder or prepared dataset (repeatable). Default: the bundled corpus.")
    @click.option("--out", type=click.Path(path_type=Path), help=f"Run directory (default runs/{modality_name}).")
    @click.option("--model", "preset", help=f"Model preset (see `foundry {modality_name} presets`).")
    @click.option("--from", "init_from", type=click.Path(path_type=Path), help="Start from this model dir (continued pretraining).")
    @click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML run config.")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. --set train.lr=1e-3 (repeatable).")
    @click.option("--max-steps", type=int, help="Optimizer steps to train.")
    @click.option("--save-every", type=int, help="Checkpoint every N steps.")
    @click.option("--seed", type=int, help="Random seed (data order, masking, init).")
    @click.option("--resume", type=click.Path(path_type=Path), help="Continue the run in this directory from its latest checkpoint.")
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    @click.option("--processes", type=click.IntRange(min=1), default=1, help="Data-parallel processes on this machine (launched through torchrun).")
    @click.option("--on-decode-error", type=click.Choice(["error", "skip"]), help="A file that is not UTF-8 text: stop (default) or skip it and count (data.on_decode_error).")
    def pretrain(data, out, preset, init_from, config_file, overrides, max_steps, save_every, seed, resume, quiet, processes, on_decode_error):
        """Pretrain a model with the modality's self-supervised objective."""
        from .distributed import process_state, relaunch_with_torchrun
        from .plugins import get_manager
        from .pretrain import pretrain as run_pretrain
        from .runconfig import resolve

        if processes > 1:
            relaunch_with_torchrun(processes)

        modality = get_manager().modality(modality_name)
        flags = {
            "data.paths": [str(p) for p in data] if data else None,
            "out": str(out) if out else None,
            "model.preset": preset,
            "model.init_from": str(init_from) if init_from else None,
            "train.max_steps": max_steps,
            "train.save_every": save_every,
            "train.seed": seed,
            "train.progress": False if quiet else None,
            "data.on_decode_error": on_decode_error,
        }
        if resume and (out or data or init_from or preset):
            raise FoundryError("--resume continues the run as configured; --data, --out, --model and --from cannot change")
        cfg = resolve(modality_name, defaults=modality.config_defaults, config_file=config_file, overrides=overrides,
                      flags=flags, resume=resume)
        summary = run_pretrain(cfg, resume=resume)
        if not process_state().is_main_process:
            return
        click.echo(
            f"final val_loss {summary['val_loss']:.4f} (perplexity {summary['val_perplexity']:.2f}) "
            f"vs unigram baseline {summary['baseline_loss']:.4f} after {summary['step']} steps, "
            f"{summary['tokens']:,} tokens"
        )
        click.echo(f"model: {summary['final_model']}")

    return pretrain


def _presets_command(modality_name: str) -> click.Command:
    @click.command(name="presets")
    def presets():
        """List the model presets of this modality."""
        from .plugins import get_manager

        manager = get_manager()
        modality = manager.modality(modality_name)
        for name in modality.presets:
            p = manager.presets.get(name)  # plain data: listing presets needs no torch
            layers, width, heads = p.get("n_layer"), p.get("d_model"), p.get("n_head")
            default = "  (default)" if name == modality.default_preset else ""
            click.echo(f"{name:16s} layers={layers} d_model={width} heads={heads}  {p.get('source', '')}{default}")

    return presets


def _prepare_command(modality_name: str) -> click.Command:
    @click.command(name="prepare")
    @click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output dataset directory.")
    @click.option("--workers", default=1, show_default=True, help="Tokenizer processes.")
    @click.option("--valid-fraction", default="0.01", show_default=True,
                  help="Records held out by hash of record id: a fraction (0.01 or 1%) or a count (500).")
    @click.option("--tokenizer", "tokenizer_path", type=click.Path(path_type=Path), help="Existing tokenizer or model dir (default: the modality builds one).")
    @click.option("--vocab-size", default=None, type=int, help="For learned vocabularies (BPE).")
    @click.option("--overwrite", is_flag=True, help="Replace a complete dataset at --out (kept until the new one is complete).")
    @click.option("--on-decode-error", type=click.Choice(["error", "skip"]), default="error", show_default=True,
                  help="A file that is not text: stop with its name, line and byte, or leave it out (counted).")
    def prepare(inputs, out, workers, valid_fraction, tokenizer_path, vocab_size, overwrite, on_decode_error):
        """Tokenize a corpus once into memory-mapped shards for `pretrain --data`."""
        from .prepare_cli import parse_valid_fraction, run_prepare

        run_prepare(modality_name, list(inputs), out, workers=workers, valid_fraction=parse_valid_fraction(valid_fraction), on_decode_error=on_decode_error,
                    tokenizer_path=tokenizer_path, vocab_size=vocab_size, overwrite=overwrite)

    return prepare
