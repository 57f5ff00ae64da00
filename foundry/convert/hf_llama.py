"""Hugging Face Llama / Mistral (``LlamaForCausalLM``, ``MistralForCausalLM``, incl. GQA) <-> foundry.

Code Llama checkpoints are ``model_type: llama``. Refused with a clear message: rope scaling
(Llama 3.1 style), a head_dim that is not hidden_size / heads, attention biases without MLP biases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, FoundryError
from ..model.config import ModelConfig
from .common import require

MODEL_TYPES = ("llama", "mistral")

WEIGHT_MAP: dict[str, str | None] = {
    "model.embed_tokens.weight": "embed.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blocks.{i}.attn.q_proj.weight",
    "model.layers.{i}.self_attn.q_proj.bias": "blocks.{i}.attn.q_proj.bias",
    "model.layers.{i}.self_attn.k_proj.weight": "blocks.{i}.attn.k_proj.weight",
    "model.layers.{i}.self_attn.k_proj.bias": "blocks.{i}.attn.k_proj.bias",
    "model.layers.{i}.self_attn.v_proj.weight": "blocks.{i}.attn.v_proj.weight",
    "model.layers.{i}.self_attn.v_proj.bias": "blocks.{i}.attn.v_proj.bias",
    "model.layers.{i}.self_attn.o_proj.weight": "blocks.{i}.attn.o_proj.weight",
    "model.layers.{i}.self_attn.o_proj.bias": "blocks.{i}.attn.o_proj.bias",
    "model.layers.{i}.self_attn.rotary_emb.inv_freq": None,  # buffer in old checkpoints
    "model.layers.{i}.mlp.gate_proj.weight": "blocks.{i}.mlp.gate.weight",
    "model.layers.{i}.mlp.gate_proj.bias": "blocks.{i}.mlp.gate.bias",
    "model.layers.{i}.mlp.up_proj.weight": "blocks.{i}.mlp.up.weight",
    "model.layers.{i}.mlp.up_proj.bias": "blocks.{i}.mlp.up.bias",
    "model.layers.{i}.mlp.down_proj.weight": "blocks.{i}.mlp.down.weight",
    "model.layers.{i}.mlp.down_proj.bias": "blocks.{i}.mlp.down.bias",
    "model.layers.{i}.input_layernorm.weight": "blocks.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blocks.{i}.mlp_norm.weight",
    "model.norm.weight": "final_norm.weight",
    "model.rotary_emb.inv_freq": None,
    "lm_head.weight": "lm_head.weight",  # dropped again when tied
}


def normalize_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``LlamaModel`` saved on its own has no ``model.`` prefix; add it."""
    return {k if k.startswith(("model.", "lm_head.")) else f"model.{k}": v for k, v in state.items()}


def _rope_theta(hf: dict[str, Any], path: Path) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise CheckpointError(f"{path}: rope_type={kind!r} (scaled rotary) is not supported; only plain RoPE")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict[str, Any], path: Path) -> ModelConfig:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{path}: hidden_act={act!r}; the Llama layout uses 'silu' (SwiGLU)")
    d_model = int(require(hf, "hidden_size", path))
    n_head = int(require(hf, "num_attention_heads", path))
    head_dim = hf.get("head_dim")
    if head_dim is not None and int(head_dim) != d_model // n_head:
        raise CheckpointError(f"{path}: head_dim={head_dim} differs from hidden_size/num_attention_heads; not supported")
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attn_bias != mlp_bias:
        raise CheckpointError(f"{path}: attention_bias={attn_bias} with mlp_bias={mlp_bias}: foundry has one bias flag")
    window = hf.get("sliding_window") if hf.get("model_type") == "mistral" else None
    if hf.get("use_sliding_window") is False:
        window = None
    return ModelConfig(
        name=str(hf.get("_name_or_path") or path.name), vocab_size=int(require(hf, "vocab_size", path)),
        n_layer=int(require(hf, "num_hidden_layers", path)), n_head=n_head,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_head), d_model=d_model,
        d_ff=int(require(hf, "intermediate_size", path)), causal=True, norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), mlp="swiglu", pos="rope",
        max_position=int(hf.get("max_position_embeddings", 2048)), rope_theta=_rope_theta(hf, path),
        sliding_window=int(window) if window else None, bias=attn_bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), token_dropout=False, lm_head="linear",
        final_norm=True, pad_id=hf.get("pad_token_id"), mask_id=None, source=str(path),
    )


def hf_config(cfg: ModelConfig) -> Any:
    from transformers import LlamaConfig, MistralConfig

    want = {"causal": True, "norm": "rmsnorm", "mlp": "swiglu", "pos": "rope", "lm_head": "linear",
            "final_norm": True, "token_dropout": False}
    bad = [f"{k}={getattr(cfg, k)!r}" for k, v in want.items() if getattr(cfg, k) != v]
    if bad:
        raise FoundryError(f"model {cfg.name!r} cannot be exported as HF Llama: {', '.join(bad)} has no Llama equivalent")
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads, hidden_act="silu",
        max_position_embeddings=cfg.max_position, initializer_range=float(cfg.init_std), rms_norm_eps=float(cfg.norm_eps),
        pad_token_id=cfg.pad_id, tie_word_embeddings=cfg.tie_embeddings, attention_dropout=float(cfg.dropout),
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)}, head_dim=cfg.head_dim,
        bos_token_id=None, eos_token_id=None,
    )
    if cfg.sliding_window is not None:
        if cfg.bias:
            raise FoundryError(f"model {cfg.name!r}: HF Mistral has no biases; cannot export bias=True with a sliding window")
        return MistralConfig(**common, sliding_window=cfg.sliding_window, architectures=["MistralForCausalLM"])
    return LlamaConfig(**common, attention_bias=cfg.bias, mlp_bias=cfg.bias, architectures=["LlamaForCausalLM"])
