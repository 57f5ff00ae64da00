"""``finetune()``: from a run config (its ``finetune`` section) to ``OUT/best/``, metrics and a report.

The training itself is the one loop (``foundry.train``) running a ``FinetuneWorkload``, so
fine-tuning resumes exactly (``--resume OUT``), accumulates gradients, shards data over
``--processes N``, and reports to trackers like pretraining. Everything that can fail on bad
input (model, data, labels, options) is checked before ``OUT`` is created, so a failed start
leaves nothing that looks like a run.

    OUT/config.yaml        the resolved run config (reproduces the run with --config)
    OUT/metrics.jsonl      training steps, validation evaluations, final scores
    OUT/checkpoints/       as for pretraining: model dir + optimizer + data position
    OUT/best/              the fine-tuned model with the best validation metric
    OUT/confusion_valid.png  classification: the best model's confusion matrix (and _test.png)
    OUT/test_predictions.csv with --test: the best model's test predictions beside their labels
    OUT/summary.json       written last: the run finished
"""

from __future__ import annotations

import json
from dataclasses import replace
import math
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..config import RunConfig
from ..distributed import process_state
from ..errors import FoundryError
from ..metrics import MetricsLog
from ..plugins import get_manager
from ..rundir import checkpoint_to_resume, writing
from ..train import run_training
from .data import Columns, batch_plan, encode_records, served_length, special_layout
from .forgetting import forgetting_tools
from .heads import FinetuneModel
from .plots import write_confusion_png
from .predict import write_predictions
from .store import load_finetuned, save_finetuned
from .strategies import apply_strategy, base_transformer, count_trainable
from .tasks import get_task
from .evaluation import UNCUT, score
from .metrics import format_class_report
from .workload import FinetuneSettings, FinetuneWorkload

#: learning rates when none is given: a fresh head or adapter takes large steps ...
DEFAULT_LR = {"frozen": 1e-3, "lora": 1e-3}
#: ... a trunk that trains fully takes steps that shrink with its width (``default_lr``).
FULL_LR_AT_WIDTH_128, FULL_LR_FLOOR = 1e-3, 1e-5


def default_lr(strategy: str, d_model: int) -> float:
    """The peak learning rate of ``strategy`` when none is given. Full fine-tuning: 1e-3 at
    d_model 128, inversely proportional to the width (hidden-layer updates scale as 1/width, as in
    muP): 4e-4 for ESM-2 8M (320), 1e-4 for 650M (1280), 5e-5 for 3B. At 128 wide, 1e-4 lost
    almost all of what pretraining gave on three held-out tasks and 1e-3 kept it
    (examples/README.md, "Fine-tuning settings")."""
    if strategy != "full":
        return DEFAULT_LR[strategy]
    return max(FULL_LR_FLOOR, min(FULL_LR_AT_WIDTH_128, FULL_LR_AT_WIDTH_128 * 128 / d_model))


def load_trunk(modality, source: str | None, preset: str | None, overrides: dict, tokenizer_path: str | None, seed: int):
    """(Transformer, tokenizer, base spec). ``source`` a model dir or an outside format; ``preset`` a
    model from scratch. ``tokenizer_path`` replaces the tokenizer the model would come with."""
    from ..convert.hub import resolve_model_path
    from ..loading import load_for_modality, model_from_preset

    if source and preset:
        raise FoundryError("--from and --model exclude each other: --from fine-tunes a pretrained model, --model trains a preset from scratch")
    given = modality.build_tokenizer([], {"path": tokenizer_path}) if tokenizer_path else None
    if source:
        path = resolve_model_path(source)
        model, tokenizer, _ = load_for_modality(path, modality, allow_missing_head=True, tokenizer=given)
        return model, tokenizer, str(Path(path).resolve())
    if given is None and modality.learned_vocabulary:
        raise FoundryError(f"--model {preset or modality.default_preset}: a {modality.name} model from scratch "
                           "needs --tokenizer DIR (a tokenizer or model dir)")
    tokenizer = given or modality.build_tokenizer([], {"path": None})
    torch.manual_seed(seed)
    return model_from_preset(modality, preset, tokenizer, overrides), tokenizer, None


def _freeze_lm_head(trunk) -> None:
    """The trunk's LM head takes no part in a task's forward pass (only replay uses it): freeze it,
    so it is not reported as trained and data-parallel training does not wait for gradients that
    never come (DDP stops with "parameters that were not used in producing loss")."""
    lm_head = getattr(base_transformer(trunk), "lm_head", None)
    if lm_head is not None:
        lm_head.requires_grad_(False)


def resolve_schedule(cfg: RunConfig, explicit: set[str], train_lengths: list[int], d_model: int) -> None:
    """Fill what the user left to the data: steps from epochs, warm-up from its fraction, an
    evaluation (and checkpoint) every epoch but at least ten per run (a run of ``--max-steps``
    shorter than an epoch would otherwise validate once, at its end, and "best" would be "last"),
    the learning rate of the strategy. In place; the
    result is what ``config.yaml`` records, so a resume or a rerun uses the same numbers.
    ``train_lengths``: the training examples' token counts (a token budget's batches depend on them);
    ``d_model``: the trunk's width (the default full fine-tuning learning rate depends on it)."""
    f, t = cfg.finetune, cfg.train
    batches = batch_plan(train_lengths, batch_size=f.batch_size, batch_tokens=f.batch_tokens, seed=t.seed, epoch=0)
    # Each optimizer step takes grad_accum batches on every process.
    per_epoch = math.ceil(len(batches) / (t.grad_accum * process_state().num_processes))
    if "train.max_steps" not in explicit:
        t.max_steps = max(1, f.epochs * per_epoch)
    if "train.warmup_steps" not in explicit:
        t.warmup_steps = max(1, int(round(f.warmup_fraction * t.max_steps)))
    if "train.eval_every" not in explicit:
        t.eval_every = max(1, min(per_epoch, t.max_steps // 10))
    if "train.save_every" not in explicit:
        t.save_every = t.eval_every
    if "train.lr" not in explicit:
        t.lr = default_lr(f.strategy, d_model)


def finetune(cfg: RunConfig, *, resume: Path | None = None, explicit: set[str] = frozenset()) -> dict[str, Any]:
    manager, f = get_manager(), cfg.finetune
    modality = manager.modality(cfg.modality)
    readers = manager.reader_objects(modality.readers)
    task = get_task(f.task)
    out = Path(resume or cfg.out)
    main_process = process_state().is_main_process
    checkpoint = checkpoint_to_resume(out, resume, main_process)

    # -- everything that can fail on input, before OUT is written -------------------------------
    if task.default_strategy and checkpoint is None and cfg.model.init_from and "finetune.strategy" not in explicit:
        f.strategy = task.default_strategy  # e.g. fold: the language model stays frozen (ESMFold)
    task.configure(f.task_options, readers)
    columns = Columns(f.sequence_column, f.label_column, f.id_column)
    splits = {"train": (f.train, f.train_labels, f.train_mask), "valid": (f.valid, f.valid_labels, f.valid_mask),
              "test": (f.test, f.test_labels, f.test_mask)}
    records = {name: task.read_split(Path(path), Path(labels) if labels else None, replace(columns, split=name, mask=mask), readers)
               for name, (path, labels, mask) in splits.items() if path}
    trunk, tokenizer, base = load_trunk(modality, cfg.model.init_from, cfg.model.preset or None, cfg.model.overrides, f.tokenizer, cfg.train.seed)
    labels = task.fit([r.label for r in records["train"]], [r.where for r in records["train"]])
    # Training reads a random window of max_len tokens of a longer sequence, a new one each epoch
    # (data.training_window); scored splits keep every residue (read in overlapping windows by
    # foundry.finetune.evaluation), so no label drops out of a metric.
    examples = {k: encode_records(v, tokenizer, task, labels, f.max_len if k == "train" else UNCUT) for k, v in records.items()}
    if checkpoint is None:
        resolve_schedule(cfg, explicit, [served_length(e) for e in examples["train"]], trunk.config.d_model)
    torch.manual_seed(cfg.train.seed)
    head = task.build_head(trunk.config, task.n_outputs(labels), pooling=f.pooling, dropout=f.dropout)
    probe, replay = forgetting_tools(modality, readers, tokenizer, cfg, pretrained=cfg.model.init_from is not None)
    before = probe.loss(trunk) if probe is not None else None
    trunk = apply_strategy(trunk, f.strategy, lora_rank=f.lora_rank, lora_alpha=f.lora_alpha)
    if not f.replay:
        _freeze_lm_head(trunk)
    model = FinetuneModel(trunk, head, tokenizer.special_ids, tokenizer.pad_id, base_transformer(trunk).config.n_layer)
    trainable, total = count_trainable(model)

    def save(m: FinetuneModel, directory: Path, merge: bool = False) -> None:
        save_finetuned(directory, m, tokenizer, task, labels, strategy=f.strategy, modality=modality.name, base=base,
                       max_len=f.max_len, merge=merge, extras={"task_options": task.saved_options(), **columns.as_dict()})

    def load(directory: Path):
        return load_finetuned(directory, load_base=lambda spec: load_trunk(modality, spec, None, {}, f.tokenizer, cfg.train.seed))

    def restore(m: FinetuneModel, directory: Path) -> None:
        m.load_state_dict(load(directory).model.state_dict())

    metric = f.metric or task.default_metric
    settings = FinetuneSettings(f.batch_size, cfg.train.weight_decay, f.layer_decay, f.l2sp, f.replay, f.strategy, metric, f.batch_tokens,
                                f.max_len)
    workload = FinetuneWorkload(model, task, labels, examples["train"], examples["valid"], tokenizer.pad_id, settings, cfg.train.seed,
                                save, restore, replay)
    with writing(out, fresh=checkpoint is None, main_process=main_process):
        if main_process:
            atomic_write_text(out / "config.yaml", cfg.to_yaml())
        result = run_training(workload, cfg.train, out, resume_from=checkpoint, tracker_config=cfg.to_dict())
        if not main_process:
            return {}
        return _finish(cfg, out, result, task, labels, examples, load, save, probe, before,
                       {"from": base, "trainable_parameters": trainable, "parameters": total})


def _finish(cfg: RunConfig, out: Path, result: dict, task, labels, examples: dict, load, save, probe, before, info: dict) -> dict[str, Any]:
    """The best model, as saved, scored again on valid (and test) over every residue; per-class
    reports and confusion PNGs (classification); test predictions; forgetting; the summary."""
    f = cfg.finetune
    if not (out / "best").is_dir():
        raise FoundryError(f"{out}: no evaluation gave a finite {result.get('metric', 'metric')}: there is no best model to keep")
    best = load(out / "best")
    if f.merge and f.strategy == "lora":
        save(best.model, out / "best", merge=True)
    pad_id, layout = best.tokenizer.pad_id, special_layout(best.tokenizer)
    scored = {split: score(best.model, task, labels, examples[split], f.batch_size, pad_id, max_len=f.max_len, layout=layout,
                           batch_tokens=f.batch_tokens)
              for split in ("valid", "test") if split in examples}
    scores = {split: s.metrics for split, s in scored.items()}
    reports = {split: s.report for split, s in scored.items() if s.report is not None}
    for split, report in reports.items():
        write_confusion_png(out / f"confusion_{split}.png", report, f"{split}: {task.name} - best model (step {result['best_step']})")
    if "test" in scored:
        write_predictions(out / "test_predictions.csv", task, labels, examples["test"], scored["test"].logits, layout)
    after = probe.loss(best.model.trunk) if probe is not None else None
    summary = {
        "task": task.name, "strategy": f.strategy, "from": info["from"], "preset": cfg.model.preset or None,
        "metric": f.metric or task.default_metric, "best_step": result["best_step"], "steps": result["step"],
        "max_steps": result["max_steps"], "stopped_early": result["stopped_early"],
        "train_examples": len(examples["train"]), "valid_examples": len(examples["valid"]), "test_examples": len(examples.get("test", [])),
        "trainable_parameters": info["trainable_parameters"], "parameters": info["parameters"], "labels": labels.names, **scores,
        "classes": reports or None, "max_len": f.max_len, "train_sequences_windowed": sum(len(e.tokens) > served_length(e) for e in examples["train"]),
        "forgetting": None if probe is None else {"objective": probe.objective_name, "loss_name": probe.loss_name, "data": probe.source,
                                                  "targets": probe.targets, "before": before, "after": after, "increase": after - before},
        "best_model": str(out / "best"),
    }
    log = MetricsLog(out / "metrics.jsonl")
    for split, values in scores.items():
        log.write({"step": result["best_step"], "split": split, "final": True, **values, **({"classes": reports[split]} if split in reports else {})})
    if probe is not None:
        log.write({"step": result["best_step"], "forgetting_before": before, "forgetting_after": after, "forgetting_increase": after - before})
    log.close()
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def format_report(summary: dict) -> str:
    """The final table: one row per split, the task's metrics as columns, then forgetting."""
    splits = [s for s in ("valid", "test") if s in summary]
    columns = [k for k in summary["valid"] if k != "loss"] + ["loss"]
    widths = [max(10, len(c) + 2) for c in columns]
    lines = [f"{'split':8s}" + "".join(f"{c:>{w}s}" for c, w in zip(columns, widths))]
    for s in splits:
        lines.append(f"{s:8s}" + "".join(f"{summary[s].get(c, float('nan')):{w}.4f}" for c, w in zip(columns, widths)))
    for s, report in (summary.get("classes") or {}).items():  # per class: a collapse to one class shows here
        lines.append(format_class_report(report, f"{s}: per class (best model)"))
    if summary.get("train_sequences_windowed"):
        lines.append(f"note: training read random windows of {summary['max_len']} tokens of {summary['train_sequences_windowed']} longer "
                     "sequences (a new window each epoch; nothing is cropped); valid and test were scored on every residue")
    f = summary.get("forgetting")
    if f:
        lines.append(f"forgetting: {f['loss_name']} on held-out pretraining data ({f['data']}) {f['before']:.4f} -> {f['after']:.4f} ({f['increase']:+.4f})")
    lines.append(f"best model: {summary['best_model']} (step {summary['best_step']} of {summary['steps']}, "
                 f"{summary['trainable_parameters']:,} of {summary['parameters']:,} parameters trained, strategy {summary['strategy']})")
    return "\n".join(lines)
