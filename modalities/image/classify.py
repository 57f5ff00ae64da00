"""``foundry image finetune --task image-classification``: a timm ViT encoder (pretrained by
``foundry image pretrain``, a local timm checkpoint, or a preset from scratch) plus a linear head,
trained by the one loop with foundry's strategies (full / frozen / LoRA through peft), metrics
(accuracy, macro-F1, balanced accuracy, per-class report), confusion-matrix PNG and summary format.

    FT/config.yaml            the run's settings (--resume FT)
    FT/metrics.jsonl         training steps, validation evaluations, final scores
    FT/checkpoints/          model dir + optimizer + RNG + stream position
    FT/best/                 the model with the best validation accuracy; its encoder.safetensors is
                             a whole timm classifier (LoRA merged) with encoder.json beside it
    FT/confusion_valid.png   confusion matrices of the best model (and _test.png)
    FT/test_predictions.csv  with --test: id, label, predicted, one probability column per class
    FT/summary.json          {"valid": {...}, "test": {"accuracy": ...}, "forgetting": {...} | null, ...}, written last

With ``--from`` a pretrained image model, the final report and ``summary.json["forgetting"]`` give
its pretraining objective on held-out images before vs after fine-tuning (``forgetting.py``).
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from foundry.atomic import atomic_write_text
from foundry.config import TrainSection
from foundry.errors import DataError, FoundryError
from foundry.finetune.metrics import class_report, format_class_report
from foundry.finetune.tasks import LabelInfo
from foundry.finetune.plots import write_confusion_png
from foundry.finetune.strategies import apply_strategy, base_transformer, count_trainable
from foundry.metrics import MetricsLog
from foundry.rundir import checkpoint_to_resume, writing
from foundry.train import StepLoss, StreamWorkload, run_training

from .backbone import build_encoder, encoder_kwargs
from .components import image_task
from .common import ImageStream, load_module_state, read_model_spec, read_run_settings, resolve_encoder, write_model_dir, write_run_settings
from .imagedata import ImageSet, normalise, read_labelled
from .presets import PRESETS

LORA_TARGETS = ["qkv", "attn.proj", "fc1", "fc2"]  # timm ViT's attention and MLP linears
DEFAULT_LR = {"full": 1e-3, "frozen": 3e-3, "lora": 3e-3}


class ImageClassifier(nn.Module):
    """Pooled encoder features -> dropout -> linear head: timm's own classifier layout, so the
    exported file is a ``VisionTransformer(num_classes=n)`` state dict."""

    def __init__(self, trunk: nn.Module, n_classes: int, dropout: float):
        super().__init__()
        self.trunk, self.dropout = trunk, nn.Dropout(dropout)
        self.head = nn.Linear(base_transformer(trunk).embed_dim, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.trunk(images)))


def merged_encoder(model: ImageClassifier) -> nn.Module:
    """The plain timm encoder (LoRA adapters folded in, on a copy) for the exportable file."""
    trunk = model.trunk
    if hasattr(trunk, "merge_and_unload"):
        return copy.deepcopy(trunk).merge_and_unload()
    return trunk


@torch.no_grad()
def logits_of(model: nn.Module, images: torch.Tensor, batch_size: int, device=None) -> torch.Tensor:
    model.eval()
    out = [model(normalise(images[i : i + batch_size]).to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


class ClassifierWorkload(StreamWorkload):
    """What the loop trains: a registered image task's loss on labelled images; the best model has
    the best value of the task's ``default_metric`` (accuracy for image-classification)."""

    def __init__(self, model: nn.Module, task, train: ImageSet, valid: ImageSet, labels: list[str], settings: dict, t: TrainSection):
        self.model, self.task, self.train, self.valid, self.labels, self.settings, self.t = model, task, train, valid, labels, settings, t
        self.metric, self.higher_is_better = task.default_metric, task.default_metric not in task.lower_is_better
        self.train_y = targets_of(train, labels)
        self.valid_y = targets_of(valid, labels)
        self.stream = ImageStream(len(train), settings["batch_size"], t.seed)
        self.weight_decay = t.weight_decay

    def train_mode(self, model) -> None:
        super().train_mode(model)
        if self.settings["strategy"] == "frozen":
            base_transformer(self.model.trunk).eval()  # a fixed trunk keeps its eval behaviour (no dropout)

    def loss(self, model, batch, seed: int, device) -> StepLoss:
        idx = torch.as_tensor(batch.indices)
        logits = model(normalise(self.train.images[idx]).to(device))
        loss = self.task.loss(logits, torch.as_tensor(self.train_y[batch.indices]).to(device))
        return StepLoss(loss, len(idx), len(idx))

    def evaluate(self, model, accelerator) -> dict[str, float]:
        logits = logits_of(model, self.valid.images, self.settings["batch_size"], accelerator.device)
        return self.task.metrics(logits, self.valid_y, LabelInfo(self.labels))

    def describe_evaluation(self, step: int, result: dict[str, float]) -> str:
        return f"step {step}: valid accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, loss {result['loss']:.4f}"

    def save_model(self, model, directory: Path) -> None:
        s = self.settings
        spec = {"kind": "classifier", "task": self.task.name, "labels": self.labels, "strategy": s["strategy"], "lora_rank": s["lora_rank"],
                "lora_alpha": s["lora_alpha"], "dropout": s["dropout"], "preset": s.get("preset"), "from": s.get("from")}
        write_model_dir(directory, model, spec, merged_encoder(model), s["encoder"], s.get("timm_name"), head=model.head)

    def restore_model(self, model, directory: Path) -> None:
        load_module_state(model, directory)


def targets_of(images: ImageSet, labels: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}
    out = []
    for rid, label in zip(images.ids, images.labels):
        if label not in index:
            raise DataError(f"{rid}: label {label!r} never seen in training (training labels: {', '.join(labels)})")
        out.append(index[label])
    return np.asarray(out, dtype=np.int64)


def load_classifier(directory: Path) -> tuple[nn.Module, list[str], int]:
    """A fine-tuned model directory as (timm VisionTransformer with its head, labels, image size)."""
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    from foundry.errors import CheckpointError

    spec = read_model_spec(directory)
    if spec.get("kind") != "classifier":
        raise CheckpointError(f"{directory}: a {spec.get('kind')} model, not a fine-tuned classifier (give FT/best)")
    model = VisionTransformer(**spec["encoder"], num_classes=len(spec["labels"]))
    try:
        model.load_state_dict(load_file(str(Path(directory) / "encoder.safetensors")))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{directory}/encoder.safetensors: cannot load ({str(exc).splitlines()[0]})") from None
    return model.eval(), spec["labels"], spec["encoder"]["img_size"]


def _encoder_for(settings: dict, channels: int | None):
    """(encoder, kwargs, timm name): pretrained (``--from``) or the preset from scratch."""
    if "encoder" in settings:  # resuming: weights come from the checkpoint
        return build_encoder(settings["encoder"]), settings["encoder"], settings.get("timm_name")
    if settings.get("from"):
        return resolve_encoder(settings["from"], settings.get("timm_model"))
    preset = PRESETS[settings["preset"]]
    kwargs = encoder_kwargs(preset, channels, settings.get("image_size"))
    torch.manual_seed(settings["train"]["seed"])
    return build_encoder(kwargs), kwargs, preset["timm_name"] if kwargs["img_size"] == preset["img_size"] else None


def resolve_schedule(settings: dict, n_train: int) -> None:
    """Steps from epochs, warm-up, evaluation cadence and learning rate, unless given (in place)."""
    t, explicit = settings["train"], settings.get("explicit", [])
    per_epoch = max(1, n_train // max(1, min(settings["batch_size"], n_train)))
    if "max_steps" not in explicit:
        t["max_steps"] = max(1, settings["epochs"] * per_epoch)
    if "warmup_steps" not in explicit:
        t["warmup_steps"] = max(1, int(round(0.06 * t["max_steps"])))
    if "eval_every" not in explicit:
        t["eval_every"] = max(1, min(per_epoch, t["max_steps"] // 10))
    if "save_every" not in explicit:
        t["save_every"] = t["eval_every"]
    if "lr" not in explicit:
        t["lr"] = DEFAULT_LR[settings["strategy"]]
    t["keep_best"] = True


def finetune_images(settings: dict, resume: Path | None = None) -> dict[str, Any]:
    if resume is not None:
        settings = read_run_settings(resume, "finetune")
    out = Path(resume or settings["out"])
    checkpoint = checkpoint_to_resume(out, resume, True)
    task = image_task(settings.setdefault("task", "image-classification"))  # an unknown task fails before any reading
    # -- everything that can fail on input, before OUT is written --------------------------------
    if settings.get("from") and "encoder" not in settings:
        encoder, kwargs, timm_name = _encoder_for(settings, None)
        size = kwargs["img_size"]
    else:
        encoder, kwargs, timm_name = None, settings.get("encoder"), settings.get("timm_name")
        size = kwargs["img_size"] if kwargs else (settings.get("image_size") or PRESETS[settings["preset"]]["img_size"])
    fixed = kwargs["in_chans"] if kwargs and not settings.get("timm_model") else None  # a timm checkpoint adapts to the data
    train = read_labelled(Path(settings["train_data"]), size, fixed)
    valid = read_labelled(Path(settings["valid_data"]), size, train.channels)
    test = read_labelled(Path(settings["test_data"]), size, train.channels) if settings.get("test_data") else None
    if encoder is None:
        encoder, kwargs, timm_name = _encoder_for(settings, train.channels)
    elif kwargs["in_chans"] != train.channels and settings.get("timm_model"):  # an RGB timm checkpoint, grayscale data
        encoder, kwargs, timm_name = resolve_encoder(settings["from"], settings["timm_model"], train.channels)
    if kwargs["in_chans"] != train.channels:
        raise FoundryError(f"{settings.get('from')}: the model takes {kwargs['in_chans']}-channel images; "
                           f"{settings['train_data']} has {train.channels}-channel images")
    labels = task.fit(train.labels, [settings["train_data"]]).names
    for split in (valid, test):
        if split is not None:
            targets_of(split, labels)  # a label never seen in training is an error, naming the image
    settings.update(encoder=kwargs, timm_name=timm_name, labels=labels, n_train=len(train))
    if checkpoint is None:
        resolve_schedule(settings, len(train))
    t = TrainSection(**settings["train"])
    trunk = apply_strategy(encoder, settings["strategy"], lora_rank=settings["lora_rank"], lora_alpha=settings["lora_alpha"],
                           lora_targets=LORA_TARGETS)
    torch.manual_seed(t.seed)
    model = task.build_model(trunk, len(labels), settings["dropout"])
    trainable, total = count_trainable(model)
    workload = ClassifierWorkload(model, task, train, valid, labels, settings, t)
    with writing(out, fresh=checkpoint is None, main_process=True):
        write_run_settings(out, settings)
        result = run_training(workload, t, out, resume_from=checkpoint, tracker_config=settings)
        return _finish(out, task, settings, result, {"valid": valid, "test": test}, labels, trainable, total)


def _finish(out: Path, task, settings: dict, result: dict, splits: dict, labels: list[str], trainable: int, total: int) -> dict[str, Any]:
    """Score the best model (as saved) on valid and test; confusion PNGs, predictions, summary."""
    if not (out / "best").is_dir():
        raise FoundryError(f"{out}: no evaluation gave a finite accuracy: there is no best model to keep")
    best, _, _ = load_classifier(out / "best")
    scores, reports = {}, {}
    forgetting = _forgetting(settings, best, splits["valid"])
    log = MetricsLog(out / "metrics.jsonl")
    for name, split in splits.items():
        if split is None:
            continue
        y = targets_of(split, labels)
        logits = logits_of(best, split.images, settings["batch_size"])
        scores[name] = task.metrics(logits, y, LabelInfo(labels))
        reports[name] = class_report(y, logits.argmax(-1).numpy(), labels)
        write_confusion_png(out / f"confusion_{name}.png", reports[name], f"{name}: {task.name} - best model (step {result['best_step']})")
        log.write({"step": result["best_step"], "split": name, "final": True, **scores[name], "classes": reports[name]})
        if name == "test":
            write_probabilities(out / "test_predictions.csv", split.ids, logits, labels, split.labels)
    if forgetting is not None:
        log.write({"step": result["best_step"], "forgetting_before": forgetting["before"], "forgetting_after": forgetting["after"],
                   "forgetting_increase": forgetting["increase"]})
    log.close()
    summary = {
        "task": task.name, "strategy": settings["strategy"], "from": settings.get("from"), "preset": settings.get("preset"),
        "metric": task.default_metric, "best_step": result["best_step"], "steps": result["step"], "max_steps": result["max_steps"],
        "stopped_early": result["stopped_early"], "train_examples": settings.get("n_train"), "labels": labels, **scores,
        "classes": reports, "trainable_parameters": trainable, "parameters": total, "image_size": settings["encoder"]["img_size"],
        "channels": settings["encoder"]["in_chans"], "forgetting": forgetting, "best_model": str(out / "best"),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def _forgetting(settings: dict, best: nn.Module, valid: ImageSet) -> dict | None:
    """The pretraining objective before vs after fine-tuning (``forgetting.py``), or None when
    ``--from`` has no image pretraining objective or ``--no-forgetting`` was given."""
    from .forgetting import build_probe, forgetting_summary

    if not settings.get("forgetting", True):
        return None
    probe = build_probe(settings.get("from"), valid.images, settings["valid_data"], settings["batch_size"])
    if probe is None:
        return None
    return forgetting_summary(probe, probe.loss(), probe.loss(best))


def write_probabilities(path: Path, ids: list[str], logits: torch.Tensor, labels: list[str], truth: list[str] | None = None) -> None:
    """One row per image: id, (label,) predicted class, then p_<class> for every class."""
    probs = torch.softmax(logits.float(), dim=-1).numpy() if len(logits) else np.zeros((0, len(labels)))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *(["label"] if truth else []), "predicted", *(f"p_{name}" for name in labels)])
        for i, rid in enumerate(ids):
            writer.writerow([rid, *([truth[i]] if truth else []), labels[int(probs[i].argmax())], *(f"{p:.6f}" for p in probs[i])])
    tmp.replace(path)


def format_report(summary: dict) -> str:
    lines = [f"{'split':8s}{'accuracy':>10s}{'macro_f1':>10s}{'bal_acc':>10s}{'loss':>10s}"]
    for split in ("valid", "test"):
        if split in summary:
            s = summary[split]
            lines.append(f"{split:8s}{s['accuracy']:10.4f}{s['macro_f1']:10.4f}{s['balanced_accuracy']:10.4f}{s['loss']:10.4f}")
    if "test" in summary.get("classes", {}):
        lines.append(format_class_report(summary["classes"]["test"], "test: per class (best model)"))
    f = summary.get("forgetting")
    if f:
        lines.append(f"forgetting: {f['loss_name']} on {f['data']} {f['before']:.4f} -> {f['after']:.4f} ({f['increase']:+.4f})")
    lines.append(f"best model: {summary['best_model']} (step {summary['best_step']} of {summary['steps']}, "
                 f"{summary['trainable_parameters']:,} of {summary['parameters']:,} parameters trained, strategy {summary['strategy']})")
    return "\n".join(lines)
