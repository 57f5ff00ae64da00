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
from ..model.store import atomic_directory, load_model, save_model
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
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a foundry fine-tuned model (format {meta.get('format')!r} version {meta.get('version')!r})")
    return meta


def load_finetuned(directory: Path, load_base=None) -> FinetunedModel:
    """Rebuild trunk (+ adapter) and head. ``load_base(spec) -> (Transformer, tokenizer)`` reads
    the base trunk of an unmerged adapter (default: a foundry model dir)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_finetuned_meta(directory)
    if (directory / "adapter").is_dir():
        base_spec = meta.get("base")
        if not base_spec:
            raise CheckpointError(f"{directory / META}: the adapter's base model is not recorded")
        transformer = load_base(base_spec)[0] if load_base else load_model(base_spec).model
        from peft import PeftModel

        from ..plugins import load_tokenizer

        trunk = PeftModel.from_pretrained(transformer, str(directory / "adapter"))
        tokenizer = load_tokenizer((directory / "tokenizer_kind").read_text().strip(), directory / "tokenizer")
    else:
        loaded = load_model(directory / "trunk")
        trunk, tokenizer = loaded.model, loaded.tokenizer
    head = build_head(meta["head"])
    try:
        head.load_state_dict(load_file(str(directory / "head.safetensors")))
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{directory / 'head.safetensors'}: cannot load the head: {exc}") from None
    n_layer = base_transformer(trunk).config.n_layer
    model = FinetuneModel(trunk, head, tokenizer.special_ids, tokenizer.pad_id, n_layer).eval()
    return FinetunedModel(model, tokenizer, get_task(meta["task"]), LabelInfo.from_dict(meta["labels"]), meta)
