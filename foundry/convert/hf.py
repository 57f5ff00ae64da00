"""Hugging Face model directories (config.json + safetensors / pytorch_model.bin, sharded or not).

    cfg, state = load_hf("path/to/esm2_t6_8M_UR50D")        # model_type esm | llama | mistral | gpt2
    export_hf(model, tokenizer, "out/hf", modality="protein")  # AutoModelFor{MaskedLM,CausalLM} loads it

The per-family knowledge (config fields, weight map) lives in ``hf_esm.py``, ``hf_llama.py``,
``hf_gpt2.py``; this file reads and writes the files and dispatches on ``model_type``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from ..errors import CheckpointError, FoundryError
from ..model.config import ModelConfig
from ..atomic import atomic_directory
from ..model.transformer import Transformer
from . import hf_esm, hf_gpt2, hf_llama
from .common import as_state_dict, check_state_dict, invert, outside_namer, read_json, read_safetensors, read_torch, rename

FAMILIES: tuple[ModuleType, ...] = (hf_esm, hf_llama, hf_gpt2)


@dataclass
class HFImport:
    config: ModelConfig
    state: dict[str, torch.Tensor]  # foundry names
    head_state: dict[str, torch.Tensor] | None  # ESM's attention regression (hf_esm.head_attachments)
    model_type: str
    head_missing: bool = False  # an EsmModel without LM head: the head was freshly initialised


def family(model_type: str, path: Path) -> ModuleType:
    for fam in FAMILIES:
        if model_type in fam.MODEL_TYPES:
            return fam
    known = sorted(t for fam in FAMILIES for t in fam.MODEL_TYPES)
    raise CheckpointError(f"{path}: model_type {model_type!r} is not supported (supported: {', '.join(known)})")


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory: model.safetensors, its sharded index, or pytorch_model.bin."""
    for index_name, reader in (("model.safetensors.index.json", read_safetensors), ("pytorch_model.bin.index.json", None)):
        index = directory / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                part = reader(directory / shard) if reader else _read_bin(directory / shard)
                state.update(part)
            missing = [k for k in weight_map if k not in state]
            if missing:
                raise CheckpointError(f"{index}: tensor {missing[0]!r} listed in the index is in none of the shards")
            return state
    if (directory / "model.safetensors").is_file():
        return read_safetensors(directory / "model.safetensors")
    if (directory / "pytorch_model.bin").is_file():
        return _read_bin(directory / "pytorch_model.bin")
    raise CheckpointError(f"{directory}: no weights found (model.safetensors, a sharded index, or pytorch_model.bin)")


def _legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BERT-era ``LayerNorm.gamma/beta`` (still written by transformers' ESM save) -> ``weight/bias``."""
    def fix(k: str) -> str:
        if k.endswith("LayerNorm.gamma"):
            return k[: -len("gamma")] + "weight"
        if k.endswith("LayerNorm.beta"):
            return k[: -len("beta")] + "bias"
        return k

    return {fix(k): v for k, v in state.items()}


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    return as_state_dict(read_torch(path), path)


def read_hf(directory, allow_missing_head: bool = False) -> HFImport:
    """Read an HF directory into foundry config + state dict (+ ESM's attention-regression tensors)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (an HF model is a folder with config.json)")
    hf = read_json(directory / "config.json")
    model_type = hf.get("model_type")
    if not model_type:
        raise CheckpointError(f"{directory / 'config.json'}: no 'model_type'")
    fam = family(model_type, directory / "config.json")
    try:
        cfg = fam.config_from_hf(hf, directory / "config.json")
    except CheckpointError:
        raise
    except FoundryError as exc:  # a ConfigError from ModelConfig's validation
        raise CheckpointError(f"{directory / 'config.json'}: {exc}") from None
    state = fam.normalize_names(_legacy_names(read_hf_weights(directory)))
    files = directory / ("model.safetensors" if (directory / "model.safetensors").exists() else "weights")
    head_state = hf_esm.split_contact_head(state) if fam is hf_esm else None
    if fam is hf_gpt2:
        state = hf_gpt2.unfuse(state, files)
    ours = rename(state, fam.WEIGHT_MAP, files, cfg.n_layer)
    if cfg.tie_embeddings:
        ours.pop("lm_head.decoder.weight", None)
        ours.pop("lm_head.weight", None)
    head_missing = False
    if fam is hf_esm and not any(k.startswith("lm_head.") for k in ours):
        if not allow_missing_head:
            raise CheckpointError(
                f"{directory}: an EsmModel without masked-LM head (architectures: {hf.get('architectures')}); "
                "its logits would be random. Import it with allow_missing_head=True to use the trunk for embeddings "
                "or fine-tuning (the LM head is then freshly initialised)"
            )
        warnings.warn(f"{directory}: no LM head in the checkpoint; a fresh one was initialised", stacklevel=2)
        ours.update(hf_esm.fresh_lm_head(cfg))
        head_missing = True
    check_state_dict(cfg, ours, files, outside_namer(fam.WEIGHT_MAP))
    return HFImport(cfg, ours, head_state, model_type, head_missing)


def load_hf(directory, allow_missing_head: bool = False) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """-> (config, foundry state dict). ESM's attention-regression tensors: ``read_hf(...).head_state``."""
    imported = read_hf(directory, allow_missing_head)
    return imported.config, imported.state


def tokenizer_not_exported(tokenizer) -> str | None:
    """Why ``export_hf`` writes no tokenizer for ``tokenizer`` (None when it writes one)."""
    if tokenizer is None:
        return "the model directory holds no tokenizer"
    if not callable(getattr(tokenizer, "save_hf", None)):
        return (f"the {getattr(tokenizer, 'kind', type(tokenizer).__name__)!r} tokenizer has no transformers form "
                "(its class defines no save_hf)")
    return None


def export_hf(model: Transformer, tokenizer, out_dir, modality: str | None = None, chat_template: str | None = None) -> Path:
    """Write ``out_dir`` (config.json + model.safetensors [+ tokenizer files]) for transformers' Auto classes.

    The family follows the model's layout: ESM head -> EsmForMaskedLM; RMSNorm/SwiGLU/rope ->
    LlamaForCausalLM (MistralForCausalLM with a sliding window); learned positions -> GPT2LMHeadModel.
    A causal model also gets its tokenizer's bos/eos/pad ids in config.json and a
    generation_config.json, so ``generate`` stops at eos. A tokenizer without ``save_hf`` is not
    written (``tokenizer_not_exported`` says why; foundry_export.json records it). ``chat_template``
    (the one an SFT run saved in ``model.json``) goes into ``tokenizer_config.json``, where
    transformers' ``apply_chat_template`` finds it.
    """
    from safetensors.torch import save_file

    cfg = model.config
    if not cfg.causal and cfg.lm_head != "esm":
        raise FoundryError(f"model {cfg.name!r}: a masked-LM model exports to transformers as ESM, which needs lm_head='esm' "
                           f"(this one has lm_head={cfg.lm_head!r})")
    fam = hf_esm if cfg.lm_head == "esm" else hf_gpt2 if cfg.pos == "learned" else hf_llama
    hf_config = fam.hf_config(cfg)
    generation = _generation_config(cfg, tokenizer)
    if generation is not None:
        hf_config.bos_token_id, hf_config.eos_token_id = generation.bos_token_id, generation.eos_token_id
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # the trunk; attachments are apart
    theirs = invert(state, fam.WEIGHT_MAP)
    if fam is hf_gpt2:
        theirs = hf_gpt2.fuse(theirs)
    if fam is hf_esm:  # the rotary buffer transformers expects in the file
        theirs["esm.rotary_embeddings.inv_freq"] = 1.0 / (
            cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float) / cfg.head_dim))
    attached = model.attachments.get(hf_esm.HEAD_ATTACHMENT) if fam is hf_esm else None
    if attached is not None:
        for theirs_name, ours in hf_esm.CONTACT_KEYS.items():
            theirs[theirs_name] = attached.state_dict()[ours].detach().cpu()
    extras = {"foundry_model": cfg.name}
    if modality:
        extras["foundry_modality"] = modality
    missing = tokenizer_not_exported(tokenizer)
    if missing:
        extras["tokenizer_not_exported"] = missing
    with atomic_directory(out_dir) as tmp:
        hf_config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in theirs.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if generation is not None:
            generation.save_pretrained(tmp)
        (tmp / "foundry_export.json").write_text(json.dumps(extras, indent=2) + "\n")
        if not missing:
            tokenizer.save_hf(tmp)
            if chat_template:
                config = json.loads((tmp / "tokenizer_config.json").read_text(encoding="utf-8"))
                config["chat_template"] = chat_template
                (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(out_dir)


def _generation_config(cfg: ModelConfig, tokenizer):
    """bos/eos/pad for ``generate`` from the tokenizer of a causal model (None otherwise)."""
    if not cfg.causal or tokenizer is None:
        return None
    from transformers import GenerationConfig

    # pad: what the exported tokenizer pads batched prompts with (GPT-2's falls back to eos)
    return GenerationConfig(bos_token_id=getattr(tokenizer, "bos_id", None), eos_token_id=getattr(tokenizer, "eos_id", None),
                            pad_token_id=getattr(tokenizer, "pad_id", None))
