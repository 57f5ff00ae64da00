"""``finetune()``: from a model spec and labelled files to ``OUT/best/``, metrics and a report.

Everything that can fail on bad input (model, data, labels, options) is checked before ``OUT`` is
created, so a failed start leaves nothing that looks like a run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..errors import FoundryError
from ..metrics import MetricsLog
from ..plugins import get_manager
from .data import encode_records, read_records
from .forgetting import ForgettingProbe, ReplayStream, pretraining_documents
from .heads import FinetuneModel, head_for
from .loop import LoopInputs, LoopSettings, evaluate, train_loop
from .store import load_finetuned, save_finetuned
from .strategies import apply_strategy, base_transformer, count_trainable
from .tasks import get_task


@dataclass
class DataOptions:
    train: Path
    valid: Path
    test: Path | None = None
    train_labels: Path | None = None
    valid_labels: Path | None = None
    test_labels: Path | None = None
    sequence_column: str = "sequence"
    label_column: str = "label"
    id_column: str = "id"
    mutation_column: str = "mutation"
    wildtype: str | None = None  # a sequence, or a file the modality reads (first record)
    wildtype_start: int = 1
    ignore_label: str = "."
    max_len: int = 1024


@dataclass
class ModelOptions:
    source: str | None = None  # --from: a model dir or anything convert.import_model reads
    preset: str | None = None  # --model: train this architecture from scratch
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields for --model
    tokenizer: str | None = None  # a tokenizer dir, for imported trunks without one
    strategy: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    merge: bool = False
    pooling: str | None = None  # default: last token for causal trunks, mean otherwise
    pair_head: str = "pairwise"  # contact: "pairwise" (embeddings) | "attention" (ESM's APC regression)
    dropout: float = 0.1


@dataclass
class ForgettingOptions:
    enabled: bool = True
    data: list[Path] = field(default_factory=list)  # default: the modality's bundled corpus (held-out part)
    docs: int = 128
    max_len: int = 256


def load_trunk(modality, opts: ModelOptions, seed: int):
    """(Transformer, tokenizer, base spec). ``--from`` a model dir or an outside format; ``--model``
    a preset from scratch. ``--tokenizer`` replaces the tokenizer the model would come with."""
    from ..convert.hub import resolve_model_path
    from ..loading import load_for_modality, model_from_preset

    if opts.source and opts.preset:
        raise FoundryError("--from and --model exclude each other: --from fine-tunes a pretrained model, --model trains a preset from scratch")
    given = modality.build_tokenizer([], {"path": opts.tokenizer}) if opts.tokenizer else None
    if opts.source:
        path = resolve_model_path(opts.source)
        model, tokenizer, _ = load_for_modality(path, modality, allow_missing_head=True, tokenizer=given)
        return model, tokenizer, str(Path(path).resolve())
    if given is None and modality.objective == "clm":
        raise FoundryError(f"--model {opts.preset or modality.default_preset}: a {modality.name} model from scratch "
                           "needs --tokenizer DIR (a tokenizer or model dir)")
    tokenizer = given or modality.build_tokenizer([], {"path": None})
    torch.manual_seed(seed)
    return model_from_preset(modality, opts.preset, tokenizer, opts.overrides), tokenizer, None


def read_wildtype(value: str | None, readers) -> str | None:
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        from ..readers import read_documents

        docs = list(read_documents([path], readers))
        return docs[0].text.strip().replace("\n", "")
    return value.strip()


def _split(path: Path | None, labels_path, data: DataOptions, readers, wildtype):
    if path is None:
        return None
    return read_records(path, readers=readers, sequence_column=data.sequence_column, label_column=data.label_column,
                        id_column=data.id_column, labels_path=labels_path, wildtype=wildtype,
                        wildtype_start=data.wildtype_start, mutation_column=data.mutation_column)


def _forgetting_tools(modality, readers, tokenizer, forgetting: ForgettingOptions, loop: LoopSettings, pretrained: bool):
    """The forgetting probe (pretrained trunks only) and the replay stream (``--replay``)."""
    probe = replay = None
    if forgetting.enabled and pretrained:
        texts = pretraining_documents(forgetting.data or modality.default_data(), readers, forgetting.docs, "all" if forgetting.data else "valid")
        probe = ForgettingProbe(texts, tokenizer, modality.objective, forgetting.max_len)
    if loop.replay > 0:
        if not 0 < loop.replay < 1:
            raise FoundryError(f"--replay {loop.replay}: the share of pretraining data must be in (0, 1)")
        texts = pretraining_documents(modality.default_data(), readers, 4000, "train")
        rows = round(loop.batch_size * loop.replay / (1 - loop.replay))
        replay = ReplayStream(texts, tokenizer, modality.objective, rows, forgetting.max_len, loop.seed)
    return probe, replay


def finetune(modality_name: str, task_name: str, data: DataOptions, model_opts: ModelOptions, loop: LoopSettings,
             out: Path, forgetting: ForgettingOptions | None = None) -> dict[str, Any]:
    forgetting = forgetting or ForgettingOptions()
    manager = get_manager()
    modality = manager.modality(modality_name)
    readers = manager.reader_objects(modality.readers)
    task = get_task(task_name)
    if hasattr(task, "ignore_char"):
        task.ignore_char = data.ignore_label
    if task.needs_wildtype and not data.wildtype:
        raise FoundryError(f"--task {task.name} needs --wildtype (the wild-type sequence or a file holding it)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FoundryError(f"{out}: already holds files; choose another --out")

    # -- everything that can fail on input, before OUT exists ------------------------------------
    wildtype = read_wildtype(data.wildtype, readers) if task.needs_wildtype else None
    records = {name: _split(p, lp, data, readers, wildtype) for name, p, lp in (
        ("train", data.train, data.train_labels), ("valid", data.valid, data.valid_labels), ("test", data.test, data.test_labels))}
    trunk, tokenizer, base = load_trunk(modality, model_opts, loop.seed)
    labels = task.fit([r.label for r in records["train"]], [r.where for r in records["train"]])
    examples = {k: encode_records(v, tokenizer, task, labels, data.max_len) for k, v in records.items() if v is not None}
    pooling = model_opts.pooling or ("last" if trunk.config.causal else "mean")
    torch.manual_seed(loop.seed)
    head = head_for(task.level, trunk.config.d_model, task.n_outputs(labels), pooling, model_opts.dropout,
                    pair_head=model_opts.pair_head, n_layer=trunk.config.n_layer, n_head=trunk.config.n_head)
    probe, replay = _forgetting_tools(modality, readers, tokenizer, forgetting, loop, pretrained=model_opts.source is not None)

    before = probe.loss(trunk) if probe is not None else None
    trunk = apply_strategy(trunk, model_opts.strategy, lora_rank=model_opts.lora_rank, lora_alpha=model_opts.lora_alpha)
    model = FinetuneModel(trunk, head, tokenizer.special_ids, tokenizer.pad_id, base_transformer(trunk).config.n_layer)
    trainable, total = count_trainable(model)

    extras = {"wildtype": wildtype, "wildtype_start": data.wildtype_start, "ignore_label": data.ignore_label,
              "sequence_column": data.sequence_column, "id_column": data.id_column, "mutation_column": data.mutation_column}

    def save_best(m: FinetuneModel, info: dict) -> None:
        save_finetuned(out / "best", m, tokenizer, task, labels, strategy=model_opts.strategy, modality=modality.name,
                       base=base, max_len=data.max_len, merge=model_opts.merge, extras={**extras, **info})

    out.mkdir(parents=True, exist_ok=True)
    config = {"modality": modality.name, "task": task.name, "data": _jsonable(asdict(data)), "model": _jsonable(asdict(model_opts)),
              "loop": asdict(loop), "forgetting": _jsonable(asdict(forgetting))}
    atomic_write_text(out / "config.json", json.dumps(config, indent=1) + "\n")
    try:
        result = train_loop(LoopInputs(model, task, labels, examples["train"], examples["valid"], tokenizer.pad_id, save_best, out,
                                       probe, replay, model_opts.strategy), loop)
    except BaseException:
        if not (out / "best").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise

    # -- the best model, as saved, scored again -----------------------------------------------------
    best = load_finetuned(out / "best", load_base=lambda spec: load_trunk(modality, ModelOptions(source=spec, tokenizer=model_opts.tokenizer), loop.seed))
    scores = {"valid": evaluate(best.model, task, labels, examples["valid"], loop.batch_size, tokenizer.pad_id)}
    if "test" in examples:
        scores["test"] = evaluate(best.model, task, labels, examples["test"], loop.batch_size, tokenizer.pad_id)
    after = probe.loss(best.model.trunk) if probe is not None else None
    summary = {
        "task": task.name, "strategy": model_opts.strategy, "from": base, "preset": model_opts.preset, "metric": result["metric"],
        "best_step": result["best_step"], "steps": result["steps"], "max_steps": result["max_steps"], "stopped_early": result["stopped_early"],
        "train_examples": len(examples["train"]), "valid_examples": len(examples["valid"]), "test_examples": len(examples.get("test", [])),
        "trainable_parameters": trainable, "parameters": total, "labels": labels.names, **{k: v for k, v in scores.items()},
        "forgetting": None if probe is None else {"objective": modality.objective, "targets": probe.targets,
                                                  "before": before, "after": after, "increase": after - before},
        "best_model": str(out / "best"),
    }
    log = MetricsLog(out / "metrics.jsonl")
    for split, values in scores.items():
        log.write({"step": result["best_step"], "split": split, "final": True, **values})
    if probe is not None:
        log.write({"step": result["best_step"], "forgetting_before": before, "forgetting_after": after, "forgetting_increase": after - before})
    log.close()
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def _jsonable(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v) for k, v in d.items()}


def format_report(summary: dict) -> str:
    """The final table: one row per split, the task's metrics as columns, then forgetting."""
    splits = [s for s in ("valid", "test") if s in summary]
    columns = [k for k in summary["valid"] if k != "loss"] + ["loss"]
    lines = [f"{'split':8s}" + "".join(f"{c:>10s}" for c in columns)]
    for s in splits:
        lines.append(f"{s:8s}" + "".join(f"{summary[s].get(c, float('nan')):10.4f}" for c in columns))
    f = summary.get("forgetting")
    if f:
        what = "masked-LM" if f["objective"] == "mlm" else "next-token"
        lines.append(f"forgetting: {what} loss on held-out pretraining data {f['before']:.4f} -> {f['after']:.4f} ({f['increase']:+.4f})")
    lines.append(f"best model: {summary['best_model']} (step {summary['best_step']} of {summary['steps']}, "
                 f"{summary['trainable_parameters']:,} of {summary['parameters']:,} parameters trained, strategy {summary['strategy']})")
    return "\n".join(lines)
