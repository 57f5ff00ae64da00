"""Outside weight formats <-> foundry, one file per format, each with an explicit weight map.

    fair_esm.py   fair-esm ESM-2 ``.pt`` (+ its regression file)      load_fair_esm / export_fair_esm
    hf.py         HF directories, dispatching on model_type to:      load_hf / read_hf / export_hf
      hf_esm.py     EsmForMaskedLM / EsmModel (ESM-2)
      hf_llama.py   LlamaForCausalLM / MistralForCausalLM (GQA, sliding window)
      hf_gpt2.py    GPT2LMHeadModel
    hub.py        local path / HF cache / torch-hub lookup, never the network
    common.py     safe reading, renaming, shape checks

``import_model(spec)`` does the whole trip for any of them and returns a ready ``Transformer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from ..model.config import ModelConfig
from ..model.transformer import Transformer
from .common import build_model
from . import fair_esm, hf_esm
from .fair_esm import export_fair_esm, load_fair_esm
from .hf import export_hf, load_hf, read_hf
from .hub import resolve_model_path


@dataclass
class ImportedModel:
    model: Transformer
    config: ModelConfig
    source_format: str  # "fair-esm" | "hf-esm" | "hf-llama" | "hf-mistral" | "hf-gpt2" | "foundry"
    path: Path


def detect_format(path: Path) -> str:
    if path.is_file() and path.suffix == ".pt":
        return "fair-esm"
    if path.is_dir() and (path / "model.json").is_file():
        return "foundry"
    if path.is_dir() and (path / "config.json").is_file():
        return "hf"
    raise CheckpointError(
        f"{path}: not a recognised model: expected a fair-esm .pt file, an HF directory with config.json, "
        "or a foundry model directory with model.json"
    )


def import_model(spec, allow_missing_head: bool = False) -> ImportedModel:
    """Any supported model (local path, cached hub id, fair-esm name) as a foundry ``Transformer``."""
    path = resolve_model_path(spec)
    fmt = detect_format(path)
    if fmt == "fair-esm":
        cfg, state, extra = load_fair_esm(path)
        return ImportedModel(build_model(cfg, state, fair_esm.head_attachments(cfg, extra)), cfg, fmt, path)
    if fmt == "foundry":
        from ..model.store import load_model

        loaded = load_model(path)
        return ImportedModel(loaded.model, loaded.config, fmt, path)
    imported = read_hf(path, allow_missing_head)
    model = build_model(imported.config, imported.state, hf_esm.head_attachments(imported.config, imported.head_state))
    return ImportedModel(model, imported.config, f"hf-{imported.model_type}", path)


__all__ = [
    "ImportedModel", "detect_format", "import_model", "load_fair_esm", "export_fair_esm", "load_hf", "read_hf",
    "export_hf", "resolve_model_path", "build_model",
]
