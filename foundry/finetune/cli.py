"""``foundry <modality> finetune`` and ``foundry <modality> predict``, shared by every modality.

A modality attaches them to its group (``finetune_command(name)``); it offers every registered
task whose ``Task.modalities`` admits it (a plugin's task too), optionally only some ``levels``.
Each task adds its own options (``Task.options``: ``--wildtype`` comes with variant-effect). Every flag is a key of the run config's ``finetune``/``train``/``model``
sections, so ``--config FILE.yaml`` and ``--set finetune.batch_size=8`` work as for pretraining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import click

from ..errors import FoundryError

P = click.Path(path_type=Path)

#: flag -> config key (None values are "not given")
FLAG_KEYS = {
    "source": "model.init_from", "preset": "model.preset", "task": "finetune.task", "train": "finetune.train", "valid": "finetune.valid",
    "test": "finetune.test", "train_labels": "finetune.train_labels", "valid_labels": "finetune.valid_labels",
    "test_labels": "finetune.test_labels", "train_mask": "finetune.train_mask", "valid_mask": "finetune.valid_mask",
    "test_mask": "finetune.test_mask", "sequence_column": "finetune.sequence_column", "label_column": "finetune.label_column",
    "id_column": "finetune.id_column", "out": "out", "strategy": "finetune.strategy", "lora_rank": "finetune.lora_rank",
    "lora_alpha": "finetune.lora_alpha", "merge": "finetune.merge", "layer_decay": "finetune.layer_decay", "lr": "train.lr",
    "epochs": "finetune.epochs", "max_steps": "train.max_steps", "batch_size": "finetune.batch_size", "max_len": "finetune.max_len",
    "pooling": "finetune.pooling", "dropout": "finetune.dropout", "weight_decay": "train.weight_decay", "metric": "finetune.metric",
    "patience": "train.patience", "eval_every": "train.eval_every", "save_every": "train.save_every", "l2sp": "finetune.l2sp",
    "replay": "finetune.replay", "forgetting_docs": "finetune.forgetting_docs", "seed": "train.seed", "tokenizer": "finetune.tokenizer",
    "grad_accum": "train.grad_accum", "mixed_precision": "train.mixed_precision", "batch_tokens": "finetune.batch_tokens",
}


def _task_options(tasks: Sequence[str]):
    """The union of the offered tasks' own options, as click options (``--wildtype`` …)."""
    from .tasks import task_class

    seen: dict[str, tuple[str, object]] = {}
    for name in tasks:
        for option in task_class(name).options:
            seen.setdefault(option.name, (name, option))
    decorators = []
    for key, (owner, option) in seen.items():
        owners = [t for t in tasks if any(o.name == key for o in task_class(t).options)]
        flag = {"is_flag": True, "flag_value": True} if option.type is bool else {"type": option.type}  # bool: an on/off switch
        decorators.append(click.option(f"--{key.replace('_', '-')}", f"task_option_{key}", default=None, **flag,
                                       help=f"{', '.join(owners)}: {option.help}"))
    return decorators


def offered_tasks(modality_name: str, levels: Sequence[str] | None = None) -> list[str]:
    """The registered tasks ``foundry MODALITY finetune`` offers: each whose ``Task.modalities``
    admits the modality (None: every modality) and, when the modality names ``levels``, whose
    level is one of them. So a task a plugin registers is offered without editing the modality."""
    from ..plugins import get_manager
    from .tasks import task_class

    classes = {name: task_class(name) for name in get_manager().tasks.names()}
    return [name for name, cls in classes.items()
            if (cls.modalities is None or modality_name in cls.modalities) and (levels is None or cls.level in levels)]


class _TaskOptionsCommand(click.Command):
    """A command whose task-dependent options (``--task`` and each task's own flags) are built on
    first use: finding them imports every registered task class (and torch), which building the
    CLI for ``foundry plugins`` or any other command must not pay for."""

    def __init__(self, *args, task_params, **kwargs):
        self._task_params = task_params
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._task_params is not None:
            build, self._task_params = self._task_params, None
            after = next(i for i, p in enumerate(self._params) if p.name == "tokenizer") + 1
            self._params[after:after] = build()
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = value


def finetune_command(modality_name: str, help_text: str = "", *, levels: Sequence[str] | None = None) -> click.Command:
    """``foundry MODALITY finetune``, offering every registered task that admits the modality
    (``offered_tasks``); ``levels`` narrows them (text offers sequence-level tasks only)."""
    offered: list[str] = []  # filled on first use, with the options that depend on it

    def command(**kw):
        """Fine-tune a pretrained model (or train a preset from scratch) on labelled sequences."""
        run_finetune_cli(modality_name, offered, kw)

    def task_params() -> list[click.Parameter]:
        offered[:] = offered_tasks(modality_name, levels)

        def holder():
            pass
        for option in reversed([click.option("--task", type=click.Choice(offered), help="What to predict."), *_task_options(offered)]):
            holder = option(holder)
        return list(reversed(holder.__click_params__))

    options = [
        click.option("--from", "source", help="Pretrained model: a model dir, a fair-esm .pt, an HF directory (or cached hub id)."),
        click.option("--model", "preset", help="Train this preset from scratch instead (the baseline for --from)."),
        click.option("--model-set", "model_set", multiple=True, metavar="KEY=VALUE", help="Model config override for --model, e.g. n_layer=2."),
        click.option("--tokenizer", help="Tokenizer dir, for trunks that do not carry one."),
        click.option("--train", type=P, help="Training split: CSV/TSV with sequence and label columns, or a sequence file + --train-labels."),
        click.option("--valid", type=P, help="Validation split (early stopping, best model)."),
        click.option("--test", type=P, help="Test split, scored once with the best model."),
        click.option("--train-labels", type=P, help="Labels for a sequence-file --train: table (id,label), '>id' file, or one per line."),
        click.option("--valid-labels", type=P), click.option("--test-labels", type=P),
        click.option("--train-mask", type=P, help="Per-residue mask FASTA for --train-labels (FLIP's mask.fasta: '>id' then 0 = ignore, 1 = use)."),
        click.option("--valid-mask", type=P), click.option("--test-mask", type=P),
        click.option("--sequence-column", help="Table column holding sequences [sequence]."),
        click.option("--label-column", help="Table column holding labels [label]."),
        click.option("--id-column", help="Table column holding ids [id]."),
        click.option("--out", type=P, help=f"Run directory (default runs/{modality_name}-finetune)."),
        click.option("--config", "config_file", type=P, help="YAML run config (finetune:, train:, model: sections)."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. --set finetune.batch_size=8."),
        click.option("--resume", type=P, help="Continue the fine-tuning run in this directory from its latest checkpoint."),
        click.option("--strategy", type=click.Choice(["full", "frozen", "lora"]), help="full [default], frozen trunk, or LoRA adapters."),
        click.option("--lora-rank", type=int), click.option("--lora-alpha", type=float),
        click.option("--merge", is_flag=True, default=None, help="LoRA: fold the adapters into the trunk when saving."),
        click.option("--layer-decay", type=float, help="Layer-wise LR decay factor (1 = none)."),
        click.option("--lr", type=float, help="Peak learning rate (default: 1e-3 frozen/lora; full: 1e-3 x 128/d_model, e.g. 4e-4 for ESM-2 8M, 1e-4 for 650M)."),
        click.option("--epochs", type=int, help="Passes over the training split [10]."),
        click.option("--max-steps", type=int, help="Optimizer steps (overrides --epochs)."),
        click.option("--batch-size", type=int, help="Sequences per micro-batch [16]."),
        click.option("--batch-tokens", type=int, help="Instead of --batch-size: padded tokens per micro-batch (rows x longest), "
                     "sequences of similar length batched together; a longer sequence gets a batch of its own."),
        click.option("--grad-accum", type=int, help="Micro-batches per optimizer step [1]."),
        click.option("--max-len", type=int, help="Tokens per sequence [1024]."),
        click.option("--pooling", type=click.Choice(["mean", "cls", "last"]), help="Sequence tasks (default: last token for causal trunks, else mean)."),
        click.option("--dropout", type=float, help="Head dropout [0.1]."),
        click.option("--weight-decay", type=float),
        click.option("--metric", help="Early-stopping metric on valid (default: the task's)."),
        click.option("--patience", type=int, help="Stop after this many evaluations without improvement."),
        click.option("--eval-every", type=int, help="Steps between evaluations (default: one epoch)."),
        click.option("--save-every", type=int, help="Steps between checkpoints under OUT/checkpoints (default: every evaluation)."),
        click.option("--l2sp", type=float, help="L2-SP weight: pull toward the pretrained weights."),
        click.option("--replay", type=float, help="Share of each batch that is pretraining data (objective replay)."),
        click.option("--forgetting-data", multiple=True, type=P, help="Held-out pretraining files for the forgetting report."),
        click.option("--forgetting-docs", type=int),
        click.option("--no-forgetting", is_flag=True, help="Skip the before/after pretraining-loss report."),
        click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"])),
        click.option("--seed", type=int),
        click.option("--processes", type=click.IntRange(min=1), default=1, help="Data-parallel processes on this machine (torchrun)."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        command = option(command)
    return click.command(name="finetune", cls=_TaskOptionsCommand, task_params=task_params, help=help_text or None)(command)


def run_finetune_cli(modality_name: str, tasks: Sequence[str], kw: dict) -> None:
    from ..config import parse_override
    from ..distributed import process_state, relaunch_with_torchrun
    from ..runconfig import resolve
    from .run import finetune, format_report

    if kw["processes"] > 1:
        relaunch_with_torchrun(kw["processes"])
    resume = kw["resume"]
    flags = {key: kw[name] for name, key in FLAG_KEYS.items() if name in kw}
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items()}
    flags["model.overrides"] = dict(parse_override(item) for item in kw["model_set"]) or None
    flags["finetune.task_options"] = {k.removeprefix("task_option_"): v for k, v in kw.items() if k.startswith("task_option_") and v is not None} or None
    flags["finetune.forgetting_data"] = [str(p) for p in kw["forgetting_data"]] or None
    flags["finetune.forgetting"] = False if kw["no_forgetting"] else None
    flags["train.progress"] = False if kw["quiet"] else None
    if resume and any(flags.get(k) is not None for k in ("model.init_from", "model.preset", "finetune.train", "out")):
        raise FoundryError("--resume continues the run as configured; --from, --model, --train and --out cannot change")
    defaults = {"out": f"runs/{modality_name}-finetune", "train.min_lr_ratio": 0.0, "train.keep_best": True, "train.log_every": 1}
    cfg = resolve(modality_name, defaults=defaults, config_file=kw["config_file"], overrides=kw["overrides"], flags=flags, resume=resume)
    check_finetune_config(cfg, tasks)
    explicit = _explicit_keys(kw["config_file"], kw["overrides"], flags)
    summary = finetune(cfg, resume=resume, explicit=explicit)
    if process_state().is_main_process:
        click.echo(format_report(summary))


def check_finetune_config(cfg, tasks: Sequence[str]) -> None:
    f = cfg.finetune
    if f.task not in tasks:
        raise FoundryError(f"finetune.task: {f.task!r}; choose one with --task: {', '.join(tasks)}" if f.task else
                           f"--task is required: one of {', '.join(tasks)}")
    for key in ("train", "valid"):
        if not getattr(f, key):
            raise FoundryError(f"--{key} is required (finetune.{key}: the {'training' if key == 'train' else 'validation'} split)")
    if not cfg.model.init_from and not cfg.model.preset:
        raise FoundryError("give --from MODEL (fine-tune a pretrained model) or --model PRESET (train from scratch)")
    if cfg.model.preset and f.strategy != "full":
        raise FoundryError(f"--strategy {f.strategy} needs pretrained weights (--from); a model from scratch trains fully")


def _explicit_keys(config_file: Path | None, overrides: Sequence[str], flags: dict) -> set[str]:
    """Config keys the user set (so the data-derived defaults leave them alone)."""
    from ..config import load_yaml, parse_override
    from ..runconfig import _flat

    keys = {k for k, v in flags.items() if v is not None}
    keys |= {parse_override(item)[0] for item in overrides}
    if config_file:
        keys |= set(_flat(load_yaml(config_file)))
    return keys


def predict_command(modality_name: str) -> click.Command:
    @click.command(name="predict")
    @click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="A fine-tuned model dir (OUT/best from finetune).")
    @click.argument("input_path", type=click.Path(path_type=Path))
    @click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="CSV to write: id,sequence,prediction[,p_<label>...].")
    @click.option("--sequence-column", help="Sequence column of a table input (default: the one used in training).")
    @click.option("--id-column", help="Id column of a table input.")
    @click.option("--batch-size", default=16, show_default=True)
    @click.option("--tokenizer", help="Tokenizer dir, for adapters over trunks that do not carry one.")
    @click.option("--probabilities", is_flag=True, help="Per-residue tasks: also write OUTPUT_residues.csv, one row per residue "
                  "with the probability of each state (p_<state>).")
    def predict(model_dir, input_path, output, sequence_column, id_column, batch_size, tokenizer, probabilities):
        """Predict with a fine-tuned model; writes id,sequence,prediction. Long sequences are read in
        overlapping windows, never cut. A table that has the model's label column is also scored:
        the metrics are printed and written to OUTPUT_metrics.json."""
        from .predict import predict_file

        n = predict_file(model_dir, input_path, output, sequence_column=sequence_column, id_column=id_column, batch_size=batch_size,
                         tokenizer_path=tokenizer, say=click.echo, probabilities=probabilities)
        click.echo(f"wrote {n} predictions to {output}")

    return predict
