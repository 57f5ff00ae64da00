"""Fine-tuning tasks: what a label is, which head reads the trunk, which loss and metrics apply.

A task is registered by name: the generic ones below by the engine, modality-specific ones by
their plugin through the ``register_tasks`` hook (``modalities/protein/tasks.py`` is an
example). A task brings its label parsing (``fit``/``encode``), how a split is read
(``read_split``), its head (``build_head``), loss, metrics, prediction columns (``describe``) and
its own options (``options``: CLI flags of ``finetune`` and ``finetune.task_options`` keys)::

    sequence-regression        one number per sequence        pooled embedding -> MLP -> 1
    sequence-classification    one class per sequence         pooled embedding -> MLP -> C
                               (multi-label: "a;b" labels)    (sigmoid per label, BCE)
    residue-classification     one class per residue          token embedding -> MLP -> C
                               ("HHEEC..." as long as the sequence; '.' = no label)

Labels that would silently change the task are refused with their file and row: a per-residue
state seen once (or differing only by case from another) in the training split, a state or class
outside the ones the user declared (``declare_classes``), numbers with many fractional values
given to sequence-classification (a regression target). Classes unseen in training are errors in
valid/test.

Tasks parse labels, not files: ``read_split`` hands the rows to ``foundry.finetune.data`` (or a
task's own reader) and ``encode`` gets the raw label and where it came from, so every error names
the file and row.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, FoundryError
from . import metrics as M

IGNORE = -100
MULTI_LABEL_SEPARATOR = ";"


@dataclass
class LabelInfo:
    """What a task learned from the training labels; saved with the fine-tuned model."""

    names: list[str]  # class names (classification); [] for regression
    multi_label: bool = False
    mean: float = 0.0  # regression targets are standardised with the training mean / std
    std: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "multi_label": self.multi_label, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelInfo":
        return cls(list(d.get("names", [])), bool(d.get("multi_label", False)), float(d.get("mean", 0.0)), float(d.get("std", 1.0)))


@dataclass(frozen=True)
class TaskOption:
    """An option a task adds to ``finetune``: ``--NAME`` on the CLI, ``finetune.task_options.NAME``
    in configs. ``type`` converts the value (str, int, float)."""

    name: str
    type: Callable[[Any], Any] = str
    default: Any = None
    help: str = ""
    required: bool = False


CLASSES = TaskOption("classes", str, None, "the classes, a,b,c (per-residue states may be written HEC); default: those of the training split")
CLASS_WEIGHTS = TaskOption("class_weights", str, None, "weights of the classes in the loss: 'balanced' (rows / (classes x rows of "
                           "the class), as scikit-learn) or NAME=W,NAME=W (unnamed classes 1); default: all 1")


class Task:
    name: ClassVar[str]
    level: ClassVar[str]  # "sequence" | "residue" | "pair": what the head predicts
    regression: ClassVar[bool] = False
    default_metric: ClassVar[str] = "accuracy"
    options: ClassVar[tuple[TaskOption, ...]] = ()
    #: the modalities whose ``finetune`` offers this task; None: every modality
    modalities: ClassVar[tuple[str, ...] | None] = None
    #: this task's metrics where smaller is better (errors, distances), for --metric and keep-best
    lower_is_better: ClassVar[tuple[str, ...]] = ()
    #: the --strategy when a pretrained model is fine-tuned and none is given (None: the config's)
    default_strategy: ClassVar[str | None] = None
    #: True: valid / test / predict read each example uncut, never in the overlapping windows of
    #: ``foundry.finetune.evaluation`` (outputs windows cannot stitch: fold's structure), at most
    #: the trunk's positions; training may still crop (``training_batch``)
    scored_whole: ClassVar[bool] = False

    def configure(self, values: dict[str, Any], readers=()) -> None:
        """Take this task's option values (unknown names are errors naming the task's options;
        missing ones get their defaults). Called before any data is read."""
        known = {o.name: o for o in self.options}
        for name in values:
            if name not in known:
                allowed = ", ".join(f"--{o.replace('_', '-')}" for o in known) or "none"
                raise FoundryError(f"--{name.replace('_', '-')} does not apply to --task {self.name} (its options: {allowed})")
        self.values = {}
        for name, option in known.items():
            value = values.get(name, option.default)
            if value is None and option.required:
                raise FoundryError(f"--task {self.name} needs --{name.replace('_', '-')} ({option.help})")
            self.values[name] = option.type(value) if value is not None else None
        self.setup(readers)
        if self.values.get("classes"):
            self.declare_classes(self.values["classes"])

    def setup(self, readers) -> None:
        """Act on ``self.values`` once they are known (read a file an option names, …)."""

    def training_batch(self, batch):
        """What the model trains on from a drawn training batch (default: the batch as it is). A
        task may crop it here (random windows of long structures): torch's RNG is seeded by the
        batch's place in the stream, so the crop is reproducible and a resumed run draws the same."""
        return batch

    def saved_options(self) -> dict[str, Any]:
        """The option values a fine-tuned model keeps, so ``predict`` reconfigures the task alike."""
        return dict(getattr(self, "values", {}))

    def read_split(self, path: Path, labels_path: Path | None, columns, readers, labelled: bool = True) -> list:
        """The records of one split: a table, or a modality file plus a labels file."""
        from .data import read_records

        return read_records(path, readers=readers, sequence_column=columns.sequence, id_column=columns.id,
                            label_column=columns.label if labelled else None, labels_path=labels_path,
                            mask_path=columns.mask, split=columns.split)

    def build_head(self, trunk_config, n_outputs: int, *, pooling: str | None, dropout: float):
        """The head that reads the trunk's last hidden states (``foundry.finetune.heads``)."""
        from .heads import head_for

        pooling = pooling or ("last" if trunk_config.causal else "mean")
        return head_for(self.level, trunk_config.d_model, n_outputs, pooling, dropout, n_layer=trunk_config.n_layer, n_head=trunk_config.n_head)

    def fit(self, labels: list[str], where: list[str]) -> LabelInfo:
        """Learn the label vocabulary / scale from the training split's raw labels."""
        raise NotImplementedError

    def encode(self, raw: str, n_residues: int, where: str, info: LabelInfo) -> np.ndarray:
        """One raw label -> target array for a sequence of ``n_residues`` residues."""
        raise NotImplementedError

    def n_outputs(self, info: LabelInfo) -> int:
        return 1 if self.regression else len(info.names)

    def declare_classes(self, text: str) -> None:
        """The classes the user names (``--classes``) instead of those the training split shows."""
        raise FoundryError(f"--task {self.name}: --classes applies to classification tasks only")

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, info: LabelInfo) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, logits: list[np.ndarray], targets: list[np.ndarray], info: LabelInfo) -> dict[str, float]:
        raise NotImplementedError

    def describe(self, logits: np.ndarray, info: LabelInfo) -> dict[str, Any]:
        """One example's output as prediction columns: {"prediction": ..., "p_<label>": ...}."""
        raise NotImplementedError

    def class_report(self, logits: list[np.ndarray], targets: list[np.ndarray], info: LabelInfo) -> dict | None:
        """Per-class precision / recall and the confusion matrix (``metrics.class_report``) for
        single-label classification; None for other tasks."""
        return None

    def label_text(self, target: np.ndarray, info: LabelInfo) -> str | None:
        """One example's encoded target written back as the user wrote it (a ``label`` column beside
        the prediction, for ``OUT/test_predictions.csv``); None where that is not meaningful."""
        return None


# -- sequence level ------------------------------------------------------------------------------


class SequenceRegression(Task):
    name = "sequence-regression"
    level = "sequence"
    regression = True
    default_metric = "spearman"

    def fit(self, labels, where):
        values = np.array([_number(raw, w) for raw, w in zip(labels, where)], dtype=np.float64)
        std = float(values.std()) if len(values) > 1 else 1.0
        return LabelInfo([], mean=float(values.mean()), std=std if std > 0 else 1.0)

    def encode(self, raw, n_residues, where, info):
        return np.array([(_number(raw, where) - info.mean) / info.std], dtype=np.float32)

    def loss(self, logits, targets, info):
        return F.mse_loss(logits.float().view(-1), targets.float().view(-1))

    def predictions(self, logits: list[np.ndarray], info: LabelInfo) -> np.ndarray:
        return np.array([float(x.reshape(-1)[0]) * info.std + info.mean for x in logits])

    def metrics(self, logits, targets, info):
        y = np.array([float(t.reshape(-1)[0]) * info.std + info.mean for t in targets])
        return M.regression_metrics(y, self.predictions(logits, info))

    def describe(self, logits, info):
        return {"prediction": float(logits.reshape(-1)[0]) * info.std + info.mean}

    def label_text(self, target, info):
        return f"{float(target.reshape(-1)[0]) * info.std + info.mean:.6g}"


class WeightedClasses:
    """``--class-weights``: per-class weights of the cross-entropy, from the training split's counts
    ('balanced') or given by name. A rare class that the loss weighs like the others is what keeps
    a model from collapsing to the majority class."""

    weights: np.ndarray | None = None  # (C,) float32, set by ``fit``; None = unweighted

    def parse_weights(self) -> None:
        text = (self.values.get("class_weights") or "").strip()
        self._weight_spec: str | dict[str, float] | None = None
        if not text:
            return
        if text.lower() == "balanced":
            self._weight_spec = "balanced"
            return
        spec = {}
        for part in text.split(","):
            name, sep, value = part.partition("=")
            try:
                weight = float(value)
            except ValueError:
                weight = float("nan")
            if not sep or not name.strip() or not math.isfinite(weight) or weight < 0:
                raise FoundryError(f"--class-weights {text!r}: expected 'balanced' or NAME=WEIGHT,NAME=WEIGHT with weights >= 0, "
                                   f"e.g. soluble=1,insoluble=3 (at {part!r})")
            spec[name.strip()] = weight
        self._weight_spec = spec

    def fit_weights(self, counts: dict[str, int], names: list[str], where: str) -> None:
        """Set ``weights`` for ``names`` from the training ``counts``; ``where``: the training file."""
        spec = getattr(self, "_weight_spec", None)
        if spec is None:
            self.weights = None
            return
        if spec == "balanced":
            total, present = sum(counts.values()), [n for n in names if counts.get(n, 0)]
            # sklearn's n_samples / (n_classes * count); a class absent from training gets 1 (no rows to weigh)
            self.weights = np.array([total / (len(present) * counts[n]) if counts.get(n, 0) else 1.0 for n in names], np.float32)
            return
        unknown = [n for n in spec if n not in names]
        if unknown:
            raise FoundryError(f"--class-weights: {unknown[0]!r} is not a class of {where} (classes: {', '.join(names)})")
        self.weights = np.array([spec.get(n, 1.0) for n in names], np.float32)

    def weight_tensor(self, like: torch.Tensor) -> torch.Tensor | None:
        return None if self.weights is None else torch.as_tensor(self.weights, dtype=torch.float32, device=like.device)


class SequenceClassification(WeightedClasses, Task):
    name = "sequence-classification"
    options = (CLASSES, CLASS_WEIGHTS)
    level = "sequence"
    default_metric = "mcc"  # accuracy hides a collapse to the majority class; MCC is 0 then
    classes: list[str] | None = None  # declared by the user; None: the training split defines them

    def setup(self, readers):
        self.parse_weights()

    def declare_classes(self, text):
        self.classes = _class_list(text, per_char=False)

    def fit(self, labels, where):
        multi = any(MULTI_LABEL_SEPARATOR in raw for raw in labels)
        parts = [(part, w) for raw, w in zip(labels, where) for part in self._parts(raw, w, multi)]
        if multi and getattr(self, "_weight_spec", None) is not None:
            raise FoundryError(f"--class-weights applies to single-label classification; {_file_of(where[0])} has "
                               f"multi-label ('a{MULTI_LABEL_SEPARATOR}b') labels")
        counts = Counter(part for part, _ in parts)
        if self.classes is not None:
            for part, w in parts:
                if part not in self.classes:
                    raise DataError(f"{w}: label {part!r} is not one of the declared classes ({', '.join(self.classes)})")
            self.fit_weights(counts, list(self.classes), _file_of(where[0]))
            return LabelInfo(list(self.classes), multi_label=multi)
        if not multi:
            _refuse_numeric_classes(labels, where)
        names = sorted({part for part, _ in parts})
        if len(names) < 2 and not multi:
            raise DataError(f"{_file_of(where[0])}: a classification task needs at least 2 classes in the training labels, found {names}")
        self.fit_weights(counts, names, _file_of(where[0]))
        return LabelInfo(names, multi_label=multi)

    def _parts(self, raw: str, where: str, multi: bool) -> list[str]:
        raw = raw.strip()
        if not raw:
            raise DataError(f"{where}: empty label")
        return [p.strip() for p in raw.split(MULTI_LABEL_SEPARATOR) if p.strip()] if multi else [raw]

    def encode(self, raw, n_residues, where, info):
        index = {n: i for i, n in enumerate(info.names)}
        parts = self._parts(raw, where, info.multi_label)
        unknown = [p for p in parts if p not in index]
        if unknown:
            raise DataError(f"{where}: label {unknown[0]!r} does not occur in the training split (classes: {', '.join(info.names)})")
        if info.multi_label:
            hot = np.zeros(len(info.names), dtype=np.float32)
            hot[[index[p] for p in parts]] = 1.0
            return hot
        return np.array([index[parts[0]]], dtype=np.int64)

    def loss(self, logits, targets, info):
        if info.multi_label:
            return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
        return F.cross_entropy(logits.float(), targets.view(-1), weight=self.weight_tensor(logits))

    def metrics(self, logits, targets, info):
        probs = probabilities(np.stack(logits), info)
        if info.multi_label:
            return M.multilabel_metrics(np.stack(targets), probs)
        return M.classification_metrics(np.concatenate(targets), probs)

    def describe(self, logits, info):
        probs = probabilities(logits, info)
        if info.multi_label:
            label = MULTI_LABEL_SEPARATOR.join(n for n, p in zip(info.names, probs) if p >= 0.5)
        else:
            label = info.names[int(probs.argmax())]
        return {"prediction": label, **{f"p_{n}": round(float(p), 6) for n, p in zip(info.names, probs)}}

    def class_report(self, logits, targets, info):
        if info.multi_label or not logits:
            return None
        return M.class_report(np.concatenate(targets), np.stack(logits).argmax(-1), info.names)

    def label_text(self, target, info):
        if info.multi_label:
            return MULTI_LABEL_SEPARATOR.join(n for n, v in zip(info.names, target) if v >= 0.5)
        return info.names[int(target.reshape(-1)[0])]


# -- residue level -------------------------------------------------------------------------------


class ResidueClassification(WeightedClasses, Task):
    """One character per residue; ``ignore_char`` marks residues without a label."""

    name = "residue-classification"
    level = "residue"
    ignore_char = "."
    default_metric = "mcc"  # Q3 is reported too; MCC does not reward predicting only the commonest state
    options = (CLASSES, TaskOption("ignore_label", str, ".", "the label character meaning 'no label at this residue'"), CLASS_WEIGHTS)

    def setup(self, readers):
        self.parse_weights()
        self.ignore_char = self.values["ignore_label"]
        if len(self.ignore_char) != 1:
            raise FoundryError(f"--ignore-label {self.ignore_char!r}: must be one character")

    classes: list[str] | None = None  # declared states ("HEC"); None: the training split defines them

    def declare_classes(self, text):
        names = _class_list(text, per_char=True)
        if any(len(n) != 1 for n in names):
            raise FoundryError(f"--classes {text!r}: per-residue states are single characters, e.g. HEC")
        if self.ignore_char in names:
            raise FoundryError(f"--classes {text!r}: {self.ignore_char!r} marks residues without a label; it cannot be a state")
        self.classes = names

    def fit(self, labels, where):
        seen: dict[str, tuple[int, str, int]] = {}  # state -> (count, where first, position first)
        for raw, w in zip(labels, where):
            raw = raw.strip()
            for c, n in Counter(raw).items():
                if c == self.ignore_char:
                    continue
                if self.classes is not None and c not in self.classes:
                    raise DataError(f"{w}: label {c!r} at position {raw.index(c) + 1} is not one of the declared states "
                                    f"({''.join(self.classes)}; {self.ignore_char!r} = no label)")
                count, w0, i0 = seen.get(c, (0, w, raw.index(c) + 1))
                seen[c] = (count + n, w0, i0)
        counts = {c: count for c, (count, _, _) in seen.items()}
        if self.classes is not None:
            self.fit_weights(counts, list(self.classes), _file_of(where[0]))
            return LabelInfo(list(self.classes))
        names = sorted(seen)
        if len(names) < 2:
            raise DataError(f"{_file_of(where[0])}: per-residue labels need at least 2 states, found {names}")
        _refuse_typo_states(seen, self.ignore_char)
        self.fit_weights(counts, names, _file_of(where[0]))
        return LabelInfo(names)

    def encode(self, raw, n_residues, where, info):
        raw = raw.strip()
        if len(raw) != n_residues:
            raise DataError(f"{where}: the label string has {len(raw)} characters but the sequence has {n_residues} residues")
        index = {n: i for i, n in enumerate(info.names)}
        out = np.full(n_residues, IGNORE, dtype=np.int64)
        for i, c in enumerate(raw):
            if c == self.ignore_char:
                continue
            if c not in index:
                raise DataError(f"{where}: label {c!r} at position {i + 1} does not occur in the training split (states: {''.join(info.names)}; '{self.ignore_char}' = no label)")
            out[i] = index[c]
        return out

    def loss(self, logits, targets, info):
        keep = targets != IGNORE  # (B, T)
        if not keep.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits[keep].float(), targets[keep], weight=self.weight_tensor(logits))

    def metrics(self, logits, targets, info):
        y = np.concatenate([t for t in targets])
        p = np.concatenate([lg for lg in logits])
        keep = y != IGNORE
        probs = probabilities(p[keep], info)
        return M.residue_metrics(y[keep], probs)

    def describe(self, logits, info):
        return {"prediction": "".join(info.names[i] for i in np.asarray(logits).argmax(-1))}

    def class_report(self, logits, targets, info):
        y = np.concatenate(targets)
        keep = y != IGNORE
        return M.class_report(y[keep], np.concatenate(logits).argmax(-1)[keep], info.names)

    def label_text(self, target, info):
        return "".join(self.ignore_char if v == IGNORE else info.names[int(v)] for v in target)


# -- residue pairs -------------------------------------------------------------------------------


def probabilities(logits: np.ndarray, info: LabelInfo) -> np.ndarray:
    """Softmax over classes (sigmoid per label for multi-label), in float64."""
    logits = np.asarray(logits, np.float64)
    if info.multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _file_of(where: str) -> str:
    """The file part of a "FILE: line 12 (id 'x')" location."""
    return where.split(": ", 1)[0]


def _class_list(text: str, per_char: bool) -> list[str]:
    """``--classes``: comma-separated names; per-residue states may also be written "HEC"."""
    text = text.strip()
    names = [n.strip() for n in text.split(",")] if "," in text or not per_char else list(text)
    names = [n for n in names if n.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise FoundryError(f"--classes {text!r}: give at least 2 distinct classes, e.g. H,E,C")
    return names


def _refuse_numeric_classes(labels: list[str], where: list[str]) -> None:
    """Labels that are all numbers with many distinct fractional values are a regression target:
    classification would make one class per value. Integer labels (class ids) are fine."""
    values = []
    for raw in labels:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return
        if not math.isfinite(value):
            return
        values.append(value)
    distinct = sorted(set(values))
    if len(distinct) < 3 or all(v.is_integer() for v in distinct):
        return
    if len(distinct) > 10 or 2 * len(distinct) > len(values):
        shown = ", ".join(repr(raw.strip()) for raw in labels[:3])
        raise DataError(f"{_file_of(where[0])}: the labels are numbers with {len(distinct)} distinct values in {len(values)} rows "
                        f"(e.g. {shown}); sequence-classification would make one class per value. "
                        "For a numeric target use --task sequence-regression")


def _refuse_typo_states(seen: dict[str, tuple[int, str, int]], ignore_char: str) -> None:
    """A state that differs from another only by case, or that occurs once in a training split
    of 1,000+ labelled residues, is almost always a typo: it would silently become an extra class
    (and, for SS3 data, take Q3 out of the report). Name it and where it is. (The rarest real
    state, SS8's isolated bridge B, is about 1% of residues: ~10 in 1,000.) Declared states
    (``declare_classes``) skip this guess."""
    total = sum(count for count, _, _ in seen.values())
    for c, (count, w, i) in sorted(seen.items(), key=lambda kv: kv[1][0]):
        twin = next((o for o in seen if o != c and o.lower() == c.lower() and seen[o][0] >= count), None)
        if twin is not None:
            why = f"differs from the state {twin!r} only by case ({count} vs {seen[twin][0]} residues)"
        elif count == 1 and total >= 1000:
            why = f"occurs once among {total} labelled residues of the training split"
        else:
            continue
        others = ", ".join(f"{o} {seen[o][0]}" for o in sorted(seen) if o != c)
        raise DataError(f"{w}: label {c!r} at position {i} {why} (other states: {others}); a typo? "
                        f"Fix it, or write {ignore_char!r} for a residue without a label")


def _number(raw: str, where: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise DataError(f"{where}: label {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: label {raw!r} is not a finite number")
    return value


# -- registry ------------------------------------------------------------------------------------

def task_class(name: str) -> type[Task]:
    """The task registered as ``name``: the engine's, then plugins' (``register_tasks`` hook);
    unknown names list the known ones."""
    from ..plugins import get_manager

    return get_manager().task_class(name)


def get_task(name: str) -> Task:
    """A fresh instance of the task registered as ``name``."""
    return task_class(name)()
