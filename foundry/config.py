"""Typed run configs: defaults < modality defaults < YAML file < ``--set key=value`` overrides.

Every key is declared in a dataclass below, so a typo or a wrong type fails before anything runs,
with a message naming the key and what is allowed. Every number has its allowed range in
``RANGES`` (checked by ``validate``, which every built config passes through), so a value that
would crash the run later (``train.save_every 0``, a NaN learning rate) is refused up front.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError


@dataclass
class ModelSection:
    preset: str = ""  # a name from `foundry <modality> presets`; empty = the modality's default
    init_from: str | None = None  # a model dir (import/export/finetune output) to continue from
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields, e.g. {n_layer: 2}


@dataclass
class TokenizerSection:
    path: str | None = None  # an existing tokenizer dir; None = the modality builds one
    vocab_size: int = 4096  # for learned vocabularies (BPE) trained at the start of a run


@dataclass
class SourceSection:
    path: str = ""  # a file, folder or prepared dataset
    weight: float = 1.0  # share of drawn documents, relative to the other sources
    clusters: str | None = None  # TSV member_id<TAB>cluster_id: draw a cluster, then a member


@dataclass
class DataSection:
    paths: list[str] = field(default_factory=list)  # files, folders or prepared dirs; [] = bundled
    sources: list[SourceSection] = field(default_factory=list)  # a weighted mixture instead of paths
    clusters: str | None = None  # cluster TSV for the single-source case (UniRef-style sampling)
    max_len: int = 512  # tokens per row; longer documents are cropped (random window in training)
    batch_tokens: int = 8192  # tokens per micro-batch (rows = batch_tokens // max_len)
    pack: bool = True  # pack several documents per row (attention never crosses documents)
    valid_fraction: float = 0.02  # share of documents held out when no prepared valid split exists
    max_valid_docs: int = 500
    max_train_docs: int | None = None  # cap for quick experiments
    #: a file that is not UTF-8 text (or holds NUL bytes): "error" stops naming file, line and
    #: byte; "skip" leaves the file out with a warning and reports how many were skipped
    on_decode_error: Literal["error", "skip"] = "error"


@dataclass
class ObjectiveSection:
    name: str = ""  # a registered objective (mlm, clm, fim, …); empty = the modality's own
    mask_prob: float = 0.15  # MLM: share of tokens selected for prediction
    mask_replace: float = 0.8  # of those: replaced by <mask>
    random_replace: float = 0.1  # of those: replaced by a random token (rest kept)
    fim_rate: float = 0.0  # causal LM: share of documents rearranged for fill-in-the-middle (PSM)


@dataclass
class TrainSection:
    max_steps: int = 400
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 40
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    grad_accum: int = 1
    clip_norm: float = 1.0  # 0 = no clipping
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 16
    save_every: int = 200
    keep_checkpoints: int = 2
    progress: bool = True
    report_to: list[str] = field(default_factory=list)  # accelerate trackers: tensorboard, wandb, …
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss or gradient: stop the run, or skip that step
    save_on_signal: bool = True  # SIGTERM/SIGINT: write a checkpoint before exiting
    patience: int | None = None  # evaluations without improvement before stopping early; None = never
    keep_best: bool = False  # keep the best evaluated model in OUT/best (fine-tuning turns this on)
    eval_at_start: bool = False  # also evaluate the untrained model (step 0), a baseline in metrics.jsonl; not on --resume
    compile: bool = False  # torch.compile each transformer block (foundry/distributed.py prepare_model)
    compile_backend: str = "inductor"  # torch.compile backend; "aot_eager" traces without code generation
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute


@dataclass
class FinetuneSection:
    """``foundry <modality> finetune``: the task, its data, the strategy. Training numbers (lr,
    steps, evaluation cadence, patience, …) are the ``train`` section's, as for pretraining; the
    model to start from is ``model.init_from`` (``--from``) or ``model.preset`` (``--model``)."""

    task: str = ""  # a registered task: sequence-regression, residue-classification, variant-effect, …
    train: str = ""  # the training split: a table, or a modality file + train_labels
    valid: str = ""  # the validation split (best model, early stopping)
    test: str | None = None  # scored once with the best model
    train_labels: str | None = None
    valid_labels: str | None = None
    test_labels: str | None = None
    train_mask: str | None = None  # FLIP-style mask FASTA: per residue 0 = ignore its label, 1 = use
    valid_mask: str | None = None
    test_mask: str | None = None
    sequence_column: str = "sequence"
    label_column: str = "label"
    id_column: str = "id"
    task_options: dict[str, Any] = field(default_factory=dict)  # the task's own options, e.g. {wildtype: WT.fasta}
    max_len: int = 1024  # tokens per sequence
    batch_size: int = 16  # sequences per micro-batch (unless batch_tokens is given)
    #: padded tokens per micro-batch (rows x longest), batched by similar lengths; None = batch_size rows
    batch_tokens: int | None = None
    epochs: int = 10  # passes over the training split, unless train.max_steps is given
    warmup_fraction: float = 0.06  # share of the steps spent warming up, unless train.warmup_steps is given
    strategy: Literal["full", "frozen", "lora"] = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    merge: bool = False  # LoRA: fold the adapters into the trunk when saving OUT/best
    layer_decay: float = 1.0  # layer-wise LR decay factor (1 = none)
    l2sp: float = 0.0  # L2-SP weight: pull the trunk toward its pretrained weights
    replay: float = 0.0  # share of each batch that is pretraining data (the pretraining objective)
    pooling: Literal["mean", "cls", "last"] | None = None  # sequence tasks; default last token for causal trunks, else mean
    dropout: float = 0.1  # head dropout
    metric: str | None = None  # early-stopping metric on valid; default the task's
    tokenizer: str | None = None  # a tokenizer dir, for trunks that do not carry one
    forgetting: bool = True  # report the pretraining loss on held-out pretraining data before/after
    forgetting_data: list[str] = field(default_factory=list)  # default: the pretraining run's validation split
    forgetting_docs: int = 128
    forgetting_max_len: int = 256


@dataclass
class TuneSection:
    """``foundry <modality> sft`` / ``dpo``: instruction and preference tuning of a causal model
    (``model.init_from``). Sequence length and the SFT token budget are ``data.max_len`` and
    ``data.batch_tokens``; steps, lr and cadence are the ``train`` section's."""

    data: str = ""  # JSONL: {"messages": [...]} or {"prompt", "completion"} (sft); {"prompt", "chosen", "rejected"} (dpo)
    valid: str | None = None  # held-out JSONL of the same shape; None = hold out valid_fraction of data
    valid_fraction: float = 0.05
    max_valid: int = 256  # validation examples/pairs kept at most
    chat_template: str | None = None  # a Jinja chat template file; None = the model's own, else the default
    default_template: bool = True  # a model without a template may use foundry's documented default
    beta: float = 0.1  # DPO: strength of the pull toward the reference model
    batch_size: int = 8  # DPO: preference pairs per micro-batch
    strategy: Literal["full", "lora"] = "full"  # lora: the DPO reference is the adapter-disabled trunk
    lora_rank: int = 8
    lora_alpha: float = 16.0


@dataclass
class RunConfig:
    modality: str = ""
    out: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: DataSection = field(default_factory=DataSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    train: TrainSection = field(default_factory=TrainSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    tune: TuneSection = field(default_factory=TuneSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# -- allowed values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """The values a numeric key allows: ``low``/``high`` bounds (None = unbounded), each inclusive
    unless ``*_open``. Floats must also be finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""  # shown after the range: what the key means, when that explains the bound

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, integer: bool) -> str:
        kind = "an integer" if integer else "a finite number"
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            text = f"{kind} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {low}"
        elif self.high is not None:
            text = f"{kind} {'<' if self.high_open else '<='} {high}"
        else:
            text = kind
        return f"{text} ({self.why})" if self.why else text


def _number(x: float | None) -> str:
    return "" if x is None else str(int(x)) if float(x).is_integer() else str(x)


SHARE = Range(0, 1)
#: Every int and float key of ``RunConfig``, by dotted name (``[]`` for each item of a list).
#: A test checks that no numeric key is missing, so a new key must come with its range.
RANGES: dict[str, Range] = {
    "tokenizer.vocab_size": Range(1),
    "data.sources[].weight": Range(0, low_open=True, why="its share relative to the other sources"),
    "data.max_len": Range(2, why="tokens per row: at least one input and one target"),
    "data.batch_tokens": Range(1, why="tokens per micro-batch"),
    "data.valid_fraction": Range(0, 1, high_open=True, why="share of documents held out for validation"),
    "data.max_valid_docs": Range(1),
    "data.max_train_docs": Range(1, why="or null for no cap"),
    "objective.mask_prob": Range(0, 1, low_open=True, why="share of tokens the masked LM predicts"),
    "objective.mask_replace": SHARE,
    "objective.random_replace": SHARE,
    "objective.fim_rate": Range(0, 1, why="share of documents rearranged for fill-in-the-middle"),
    "train.max_steps": Range(1, why="optimizer steps to train"),
    "train.lr": Range(0, low_open=True),
    "train.min_lr_ratio": SHARE,
    "train.warmup_steps": Range(0),
    "train.weight_decay": Range(0),
    "train.beta1": Range(0, 1, high_open=True),
    "train.beta2": Range(0, 1, high_open=True),
    "train.eps": Range(0, low_open=True),
    "train.grad_accum": Range(1, why="micro-batches per optimizer step"),
    "train.clip_norm": Range(0, why="0 turns clipping off"),
    # Seeds are mixed into derived 64-bit generator seeds (seed * 1e9 + step), so they stay 32-bit.
    "train.seed": Range(0, 2**32 - 1),
    "train.log_every": Range(1, why="steps between log lines"),
    "train.eval_every": Range(1, why="steps between evaluations"),
    "train.eval_batches": Range(1),
    "train.save_every": Range(1, why="steps between checkpoints"),
    "train.keep_checkpoints": Range(1, why="checkpoints kept on disk"),
    "finetune.max_len": Range(3, why="tokens per sequence, special tokens included"),
    "finetune.batch_size": Range(1),
    "finetune.batch_tokens": Range(1, why="padded tokens per micro-batch, rows x longest; null = finetune.batch_size rows"),
    "finetune.epochs": Range(1),
    "finetune.warmup_fraction": Range(0, 1, high_open=True),
    "finetune.lora_rank": Range(1),
    "finetune.lora_alpha": Range(0, low_open=True),
    "finetune.layer_decay": Range(0, 1, low_open=True, why="1 = no decay"),
    "finetune.l2sp": Range(0),
    "finetune.replay": Range(0, 1, high_open=True, why="share of each batch that is pretraining data"),
    "finetune.dropout": Range(0, 1, high_open=True),
    "finetune.forgetting_docs": Range(1),
    "finetune.forgetting_max_len": Range(2),
    "train.patience": Range(1, why="evaluations without improvement before stopping; null = never"),
    "tune.valid_fraction": Range(0, 1, low_open=True, high_open=True, why="share of the rows held out when tune.valid is not given"),
    "tune.max_valid": Range(1),
    "tune.beta": Range(0, low_open=True, why="DPO temperature: how strongly the policy is kept near the reference"),
    "tune.batch_size": Range(1, why="preference pairs per micro-batch"),
    "tune.lora_rank": Range(1),
    "tune.lora_alpha": Range(0, low_open=True),
}


def validate(cfg: RunConfig) -> None:
    """Refuse, naming the key, any value outside its range and any combination that cannot run.

    Called on every config ``build_config``/``from_dict`` returns, so a run never starts on one.
    """
    _check_ranges(cfg, "", "")
    d, o = cfg.data, cfg.objective
    if d.batch_tokens < d.max_len:
        raise ConfigError(f"data.batch_tokens: {d.batch_tokens} is not allowed; must be >= data.max_len ({d.max_len}), "
                          "since a micro-batch holds whole rows of max_len tokens")
    if o.mask_replace + o.random_replace > 1:
        raise ConfigError(f"objective.mask_replace + objective.random_replace: {o.mask_replace} + {o.random_replace} "
                          "is not allowed; the two shares of the selected tokens must add up to at most 1")
    if d.paths and d.sources:
        raise ConfigError("data.paths and data.sources both given: use one of them")
    for i, source in enumerate(d.sources):
        if not source.path:
            raise ConfigError(f"data.sources[{i}].path: missing (a file, folder or prepared dataset)")


def _check_ranges(section: Any, prefix: str, shown: str = "") -> None:
    """``prefix``: the section's name in ``RANGES`` (list items as ``[]``); ``shown``: in messages
    (list items with their index)."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        key, where, tp, value = prefix + f.name, shown + f.name, hints[f.name], getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_ranges(value, key + ".", where + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_ranges(item, f"{key}[].", f"{where}[{i}].")
        elif _numeric(tp) is not None and value is not None:
            rule = RANGES.get(key)  # a key missing here is caught by tests/test_config.py
            if rule is not None and not rule.admits(value):
                raise ConfigError(f"{where}: {value!r} is not allowed; must be {rule.describe(_numeric(tp) is int)}")


def _numeric(tp: Any) -> type | None:
    """int or float for a numeric annotation (``int``, ``float | None``), else None."""
    if tp in (int, float):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if a in (int, float)]
        return found[0] if found else None
    return None


def resolve_for_run(cfg: RunConfig, modality: Any) -> RunConfig:
    """The config as this run will use it, checked against this machine; call it before anything
    is created. The modality's defaults are written out (``model.preset`` unless the run starts
    from a model, ``data.paths`` = the bundled corpus when no data is given), so the
    ``config.yaml`` saved from it reproduces the run with ``--config``. ``cfg`` is not changed."""
    from .distributed import check_mixed_precision

    validate(cfg)
    check_mixed_precision(cfg.train.mixed_precision)
    cfg = copy.deepcopy(cfg)
    if not cfg.model.preset and not cfg.model.init_from:
        cfg.model.preset = modality.default_preset
    if not cfg.data.paths and not cfg.data.sources:
        cfg.data.paths = [str(p) for p in modality.default_data()]
    return cfg


# -- building ---------------------------------------------------------------------------------


def build_config(
    base: dict[str, Any] | None = None,
    yaml_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    dotted: dict[str, Any] | None = None,
) -> RunConfig:
    """Merge, in order: ``base`` (nested), ``dotted`` ({"a.b": v}), the YAML file, ``--set`` strings."""
    merged: dict[str, Any] = {}
    _deep_update(merged, base or {}, "")
    for key, value in (dotted or {}).items():
        _set_dotted(merged, key, value)
    if yaml_file is not None:
        _deep_update(merged, load_yaml(yaml_file), "")
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(merged, key, value)
    return from_dict(merged)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, train:…), got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.lr=3e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def from_dict(data: dict[str, Any]) -> RunConfig:
    cfg = _build(RunConfig, data, "")
    validate(cfg)
    return cfg


def _build(cls: type, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(f"unknown config key {prefix}{key}.{hint} Allowed here: {', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-3" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _deep_update(target: dict, source: dict, prefix: str) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict) and key != "overrides":
            _deep_update(target[key], value, f"{prefix}{key}.")
        else:
            target[key] = value


def _set_dotted(target: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = target
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value
