"""The fine-tuned model directory (``OUT/best/``), reloadable by ``predict`` and by Python::

    finetune.json        {"format": "foundry-finetuned", "version": 1, "task", "labels" (LabelInfo),
                          "strategy", "merged", "head" (kind + sizes), "modality", "max_len",
                          "base" (the --from spec, for an unmerged adapter), "wildtype", "metrics"}
    head.safetensors     the task head
    trunk/               a model dir (``foundry.model.store``): full / frozen / merged-LoRA runs
    adapter/             peft ``save_pretrained`` output (adapter_config.json, adapter weights),
    tokenizer/           with the tokenizer, when LoRA adapters are kept separate (the base
                         trunk is re-read from ``base``)

Written to a temporary sibling and renamed (``atomic_directory``): a crash never leaves a
half-written best model, and the previous best stays until the new one is complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..atomic import atomic_directory
from ..model.store import load_model, save_model
from ..weights import check_floating_state, check_weights, read_safetensors
from .heads import FinetuneModel, build_head
from .strategies import base_transformer
from .tasks import LabelInfo, Task, get_task

FORMAT, VERSION = "foundry-finetuned", 1
META = "finetune.json"


@dataclass
class FinetunedModel:
    model: FinetuneModel
    tokenizer: Any
    task: Task
    labels: LabelInfo
    meta: dict = field(default_factory=dict)


def save_finetuned(directory: Path, model: FinetuneModel, tokenizer, task: Task, labels: LabelInfo, *, strategy: str,
                   modality: str, base: str | None, max_len: int, merge: bool = False, extras: dict | None = None) -> Path:
    from safetensors.torch import save_file

    trunk = model.trunk
    is_peft = hasattr(trunk, "peft_config")
    meta = {
        "format": FORMAT, "version": VERSION, "task": task.name, "labels": labels.to_dict(), "strategy": strategy,
        "merged": bool(is_peft and merge), "head": model.head.describe(), "modality": modality, "max_len": max_len,
        "base": base, **(extras or {}),
    }
    with atomic_directory(directory) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}, str(tmp / "head.safetensors"))
        if is_peft and not merge:
            trunk.save_pretrained(str(tmp / "adapter"))
            tokenizer.save(tmp / "tokenizer")
            (tmp / "tokenizer_kind").write_text(tokenizer.kind + "\n")
        else:
            transformer = _merged_copy(trunk) if is_peft else base_transformer(trunk)
            save_model(tmp / "trunk", transformer, tokenizer, modality)
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
    return Path(directory)


def _merged_copy(peft_trunk) -> torch.nn.Module:
    """The trunk with adapters folded in, leaving the training model untouched."""
    import copy

    return copy.deepcopy(peft_trunk).merge_and_unload()


def read_finetuned_meta(directory: Path) -> dict:
    path = Path(directory) / META
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (is {directory} a fine-tuned model from `finetune`?)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a foundry fine-tuned model (format {meta.get('format')!r} version {meta.get('version')!r})")
    return meta


def load_finetuned(directory: Path, load_base=None) -> FinetunedModel:
    """Rebuild trunk (+ adapter) and head. ``load_base(spec) -> (Transformer, tokenizer)`` reads
    the base trunk of an unmerged adapter (default: a foundry model dir).

    Every weight file goes through ``foundry.weights``: a corrupt file, a tensor of the wrong
    dtype or shape, NaN/inf values or an adapter that needs pickled code is one line naming it."""
    directory = Path(directory)
    meta = read_finetuned_meta(directory)
    if (directory / "adapter").is_dir():
        base_spec = meta.get("base")
        if not base_spec:
            raise CheckpointError(f"{directory / META}: the adapter's base model is not recorded")
        transformer = load_base(base_spec)[0] if load_base else load_model(base_spec).model
        trunk = _load_adapter(directory / "adapter", transformer)
        tokenizer = _load_adapter_tokenizer(directory)
    else:
        loaded = load_model(directory / "trunk")
        trunk, tokenizer = loaded.model, loaded.tokenizer
    head = _load_head(directory, meta)
    n_layer = base_transformer(trunk).config.n_layer
    model = FinetuneModel(trunk, head, tokenizer.special_ids, tokenizer.pad_id, n_layer).eval()
    return FinetunedModel(model, tokenizer, get_task(meta["task"]), LabelInfo.from_dict(meta["labels"]), meta)


def _load_head(directory: Path, meta: dict) -> torch.nn.Module:
    path = directory / "head.safetensors"
    try:
        head = build_head(meta["head"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / META}: the head description is missing or invalid: {exc}") from None
    state, _ = read_safetensors(path)
    check_weights(head.state_dict(), state, path)
    head.load_state_dict(state)
    return head


#: what peft's ``save_pretrained`` writes, in the order peft reads them
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def _load_adapter(adapter_dir: Path, transformer: torch.nn.Module):
    """peft's ``PeftModel.from_pretrained``, after reading the weights ourselves: a corrupt file, a
    ``.bin`` that needs pickled code, or non-finite values are refused before peft touches them."""
    from peft import PeftModel

    from ..convert.common import read_torch

    weights = next((adapter_dir / name for name in ADAPTER_FILES if (adapter_dir / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{adapter_dir}: no adapter weights ({' or '.join(ADAPTER_FILES)})")
    state = read_safetensors(weights)[0] if weights.suffix == ".safetensors" else read_torch(weights)
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights}: expected a mapping of names to tensors, found {type(state).__name__}")
    check_floating_state(state, weights)
    try:
        return PeftModel.from_pretrained(transformer, str(adapter_dir))
    except Exception as exc:  # noqa: BLE001 - peft raises many types; each names a problem of these files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{adapter_dir}: cannot load the LoRA adapter ({type(exc).__name__}: {detail})") from None


def _load_adapter_tokenizer(directory: Path):
    from ..plugins import load_tokenizer

    kind_file = directory / "tokenizer_kind"
    if not kind_file.is_file() or not (directory / "tokenizer").is_dir():
        raise CheckpointError(f"{directory}: the adapter's tokenizer (tokenizer_kind, tokenizer/) is missing")
    return load_tokenizer(kind_file.read_text().strip(), directory / "tokenizer")
