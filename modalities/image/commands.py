"""``foundry image …``: presets, pretrain (MAE), evaluate, finetune (image-classification), predict, export.

Only click is imported here; torch and timm load when a command runs, so ``foundry plugins`` and
``foundry --help`` stay fast.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from .presets import DEFAULT_PRESET, PRESETS

DEFAULT_OBJECTIVE, DEFAULT_TASK = "mae", "image-classification"  # registered by this plugin (components.py)


def _path(**kwargs):
    return click.Path(path_type=Path, **kwargs)


@click.group(name="image", help="Vision Transformers (timm): masked-patch (MAE) pretraining and image classification.")
def image_group() -> None:
    pass


@image_group.command("presets")
def presets_command() -> None:
    """List the presets, one per line, name first; the first line is the default."""
    for name, p in PRESETS.items():
        click.echo(f"{name}  img_size={p['img_size']} patch={p['patch_size']} dim={p['embed_dim']} depth={p['depth']} "
                   f"heads={p['num_heads']}  ({p['source']})")


def _refuse_flags_on_resume(ctx: click.Context, allowed: tuple[str, ...]) -> None:
    """A resumed run keeps its own settings (OUT/config.yaml): a flag given beside --resume would be
    ignored, so it is refused by name instead (``allowed``: the ones resuming honours)."""
    from click.core import ParameterSource

    from foundry.errors import FoundryError

    given = [p.opts[0] for p in ctx.command.params
             if p.name not in ("resume", "quiet", *allowed) and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    if given:
        honoured = f" (it honours {', '.join('--' + a.replace('_', '-') for a in allowed)})" if allowed else ""
        raise FoundryError(f"--resume continues the run with the settings in its config.yaml; {', '.join(given)} would be "
                           f"ignored{honoured}: drop them, or start a new run")


def _train_settings(max_steps, lr, warmup_steps, weight_decay, seed, eval_every, save_every, log_every, quiet, **extra) -> dict:
    return {"max_steps": max_steps, "lr": lr, "warmup_steps": warmup_steps, "weight_decay": weight_decay, "seed": seed,
            "eval_every": eval_every, "save_every": save_every, "log_every": log_every, "progress": not quiet, **extra}


@image_group.command("pretrain")
@click.option("--data", type=_path(exists=True), help="A folder of images (searched recursively) or a CSV of pixel rows.")
@click.option("--model", "preset", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET, show_default=True, help="Preset to build.")
@click.option("--from", "source", help="Continue from a model dir (OUT/final) or a local timm checkpoint file (with --timm-model).")
@click.option("--timm-model", help="timm architecture of a --from checkpoint file, e.g. vit_tiny_patch16_224.")
@click.option("--out", type=_path(), default=Path("runs/image"), show_default=True, help="Run directory.")
@click.option("--resume", type=_path(exists=True, file_okay=False), help="Continue the run in this directory from its last checkpoint.")
@click.option("--max-steps", type=click.IntRange(min=1), default=400, show_default=True,
              help="With --resume: train on to this many steps (extends a finished run).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=None, help="Default: a tenth of the steps, at most 40.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.05, show_default=True)
@click.option("--objective", default=DEFAULT_OBJECTIVE, show_default=True,
              help="A registered image objective (this plugin's: mae; `foundry plugins` lists all).")
@click.option("--mask-ratio", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=0.75, show_default=True)
@click.option("--norm-pix-loss/--no-norm-pix-loss", default=True, show_default=True, help="Targets: per-patch normalised pixels.")
@click.option("--image-size", type=click.IntRange(min=1), help="Resize images to this size (default: the preset's).")
@click.option("--valid-fraction", type=click.FloatRange(min=0, max=0.5, min_open=True), default=0.05, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--save-every", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def pretrain_command(ctx, data, preset, source, timm_model, out, resume, max_steps, batch_size, lr, warmup_steps, weight_decay, objective, mask_ratio,
                     norm_pix_loss, image_size, valid_fraction, seed, eval_every, save_every, log_every, quiet) -> None:
    """Self-supervised pretraining on unlabelled images (default: masked patches, MAE)."""
    from foundry.errors import FoundryError

    from .pretrain import pretrain_images

    if resume:
        _refuse_flags_on_resume(ctx, ("max_steps",))
        given = ctx.get_parameter_source("max_steps") == click.core.ParameterSource.COMMANDLINE
        summary = pretrain_images({}, resume=resume, max_steps=max_steps if given else None)
    else:
        if data is None:
            raise FoundryError("image pretrain needs --data DIR_OR_CSV: a folder of images (searched recursively) or a CSV of pixel rows")
        p = PRESETS[preset]
        settings = {
            "command": "pretrain", "data": str(data), "out": str(out), "preset": preset, "from": source, "timm_model": timm_model,
            "image_size": image_size, "objective": objective, "mask_ratio": mask_ratio, "norm_pix_loss": norm_pix_loss, "batch_size": batch_size,
            "valid_fraction": valid_fraction,
            "decoder": {"dim": p["decoder_dim"], "depth": p["decoder_depth"], "heads": p["decoder_heads"]},
            "train": _train_settings(max_steps, lr, min(40, max_steps // 10) if warmup_steps is None else warmup_steps, weight_decay,
                                     seed, eval_every, save_every, log_every, quiet, beta2=0.95),
        }
        summary = pretrain_images(settings)
    click.echo(f"pretrained {summary['step']} steps on {summary['train_images']} images ({summary['channels']} channel(s), "
               f"{summary['image_size']}px): val_loss {summary['val_loss']:.4f}; model: {summary['final_model']}")


@image_group.command("finetune")
@click.option("--from", "source", help="Pretrained model: OUT/final of `image pretrain`, or a local timm checkpoint file (with --timm-model).")
@click.option("--model", "preset", type=click.Choice(list(PRESETS)), help="Train this preset from scratch instead.")
@click.option("--timm-model", help="timm architecture of a --from checkpoint file, e.g. vit_tiny_patch16_224.")
@click.option("--task", default=DEFAULT_TASK, show_default=True, help="A registered image task (this plugin's: image-classification).")
@click.option("--train", "train_path", type=_path(exists=True), help="DIR/<label>/*.png, or a CSV with a label column.")
@click.option("--valid", "valid_path", type=_path(exists=True), help="Validation split (best model), same layout.")
@click.option("--test", "test_path", type=_path(exists=True), help="Test split, scored once with the best model.")
@click.option("--out", type=_path(), help="Run directory.")
@click.option("--resume", type=_path(exists=True, file_okay=False), help="Continue the run in this directory.")
@click.option("--strategy", type=click.Choice(["full", "frozen", "lora"]), default="full", show_default=True)
@click.option("--lora-rank", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--lora-alpha", type=click.FloatRange(min=0, min_open=True), default=16.0, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), help="Default: --epochs over the training split.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Default: 1e-3 full, 3e-3 frozen / lora.")
@click.option("--warmup-steps", type=click.IntRange(min=0), help="Default: 6% of the steps.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.05, show_default=True)
@click.option("--dropout", type=click.FloatRange(min=0, max=1, max_open=True), default=0.1, show_default=True)
@click.option("--image-size", type=click.IntRange(min=1), help="--model only: resize images to this size (default: the preset's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-every", type=click.IntRange(min=1), help="Default: once per epoch, at least ten times per run.")
@click.option("--patience", type=click.IntRange(min=1), help="Stop after this many evaluations without a better accuracy.")
@click.option("--forgetting/--no-forgetting", default=True, show_default=True,
              help="With --from a pretrained model: its pretraining objective on held-out images before vs after fine-tuning.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def finetune_command(ctx, source, preset, timm_model, task, train_path, valid_path, test_path, out, resume, strategy, lora_rank, lora_alpha,
                     max_steps, epochs, batch_size, lr, warmup_steps, weight_decay, dropout, image_size, seed, eval_every, patience,
                     forgetting, quiet) -> None:
    """Fine-tune a classifier on labelled images (folders per class or CSV)."""
    from foundry.errors import FoundryError

    from .classify import finetune_images, format_report

    if resume:
        _refuse_flags_on_resume(ctx, ())
        summary = finetune_images({}, resume=resume)
    else:
        if source and preset:
            raise FoundryError("--from and --model exclude each other: --from fine-tunes a pretrained model, --model trains a preset from scratch")
        missing = [flag for flag, value in (("--train", train_path), ("--valid", valid_path), ("--out", out)) if value is None]
        if missing:
            raise FoundryError(f"image finetune needs {', '.join(missing)}")
        given = {"max_steps": max_steps, "lr": lr, "warmup_steps": warmup_steps, "eval_every": eval_every}
        train = _train_settings(max_steps or 1, lr or 1e-3, warmup_steps or 0, weight_decay, seed, eval_every or 1, eval_every or 1,
                                10, quiet, patience=patience)
        settings = {
            "command": "finetune", "task": task, "from": source, "preset": None if source else (preset or DEFAULT_PRESET),
            "timm_model": timm_model, "image_size": image_size, "train": train, "train_data": str(train_path), "valid_data": str(valid_path),
            "test_data": str(test_path) if test_path else None,
            "out": str(out), "strategy": strategy, "lora_rank": lora_rank, "lora_alpha": lora_alpha, "epochs": epochs,
            "batch_size": batch_size, "dropout": dropout, "forgetting": forgetting, "explicit": [k for k, v in given.items() if v is not None],
        }
        summary = finetune_images(settings)
    click.echo(format_report(summary))


@image_group.command("evaluate")
@click.argument("paths", nargs=-1, type=_path())
@click.option("--model", "model_dir", type=_path(), required=True, help="A pretrained model: OUT/final of `image pretrain` (or OUT).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, help="Seed of the objective's randomness (default: validation's, so the loss compares with val_loss).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, … (auto: cuda when available).")
def evaluate_command(paths, model_dir, batch_size, seed, device) -> None:
    """The model's pretraining objective (MAE: MSE on masked patches, fixed masks) on held-out
    images: folders (recursive), image files or CSVs. The last stdout line is one JSON object:
    loss, images, scored (masked patches), objective."""
    from .evaluate import run_evaluate

    result = run_evaluate(model_dir, paths, batch_size=batch_size, seed=seed, device=device)
    click.echo(f"{result['images']} images, {result['loss_name']} {result['loss']:.4f} ({result['objective']})", err=True)
    click.echo(json.dumps(result))


@image_group.command("predict")
@click.option("--model", "model_dir", type=_path(exists=True, file_okay=False), required=True, help="A fine-tuned model (FT/best).")
@click.option("--data", type=_path(exists=True), required=True, help="Images: a folder (recursive), an image file or a CSV.")
@click.option("--out", type=_path(dir_okay=False), required=True, help="CSV: id, predicted, p_<class> per class.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
def predict_command(model_dir, data, out, batch_size) -> None:
    """Per-class probabilities for each image."""
    from .classify import load_classifier, logits_of, write_probabilities
    from .imagedata import read_images

    model, labels, size = load_classifier(model_dir)
    images = read_images(data, size, int(model.patch_embed.proj.in_channels))
    write_probabilities(out, images.ids, logits_of(model, images.images, batch_size), labels)
    click.echo(f"{len(images)} predictions ({len(labels)} classes) -> {out}")


@image_group.command("export")
@click.argument("model_dir", type=_path(exists=True, file_okay=False))
@click.option("--out", type=_path(dir_okay=False), required=True, help="FILE.safetensors (FILE.json is written beside it).")
def export_command(model_dir, out) -> None:
    """Write a model's weights as a file timm loads (timm parameter names, safetensors)."""
    from foundry.errors import CheckpointError

    source = Path(model_dir) / "encoder.safetensors"
    if not source.is_file():
        raise CheckpointError(f"{model_dir}: not an image model directory (no encoder.safetensors)")
    if out.suffix != ".safetensors":
        raise CheckpointError(f"{out}: the export is a .safetensors file")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out)
    shutil.copyfile(source.with_suffix(".json"), out.with_suffix(".json"))
    spec = json.loads(out.with_suffix(".json").read_text())
    how = (f"timm.create_model({spec['timm_name']!r}, pretrained=True, pretrained_cfg_overlay=dict(file={str(out)!r}), "
           f"num_classes={spec['kwargs']['num_classes']}, in_chans={spec['kwargs']['in_chans']})" if spec.get("timm_name")
           else f"timm.models.VisionTransformer(**json.load(open({str(out.with_suffix('.json'))!r}))['kwargs'])"
                f".load_state_dict(safetensors.torch.load_file({str(out)!r}))")
    click.echo(f"exported {out} (+ {out.with_suffix('.json').name}); load it with {how}")
