"""Hugging Face ESM-2 (``EsmForMaskedLM``, ``EsmModel``) <-> foundry.

Only the ESM-2 layout: rotary positions, no embedding LayerNorm (ESM-1b's absolute positions and
ESMFold's folding trunk are refused with a clear message). ``EsmForMaskedLM`` files also hold
``esm.contact_head.regression.*`` (transformers' names): carried as the state of the trunk's
attachment ``HEAD_ATTACHMENT``, interpreted by the protein plugin (``modalities/protein/contact_head.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, FoundryError
from ..model.config import ModelConfig
from .common import require

MODEL_TYPES = ("esm",)

WEIGHT_MAP: dict[str, str | None] = {
    "esm.embeddings.word_embeddings.weight": "embed.weight",
    "esm.embeddings.position_ids": None,  # buffer in old checkpoints
    "esm.encoder.layer.{i}.attention.self.query.weight": "blocks.{i}.attn.q_proj.weight",
    "esm.encoder.layer.{i}.attention.self.query.bias": "blocks.{i}.attn.q_proj.bias",
    "esm.encoder.layer.{i}.attention.self.key.weight": "blocks.{i}.attn.k_proj.weight",
    "esm.encoder.layer.{i}.attention.self.key.bias": "blocks.{i}.attn.k_proj.bias",
    "esm.encoder.layer.{i}.attention.self.value.weight": "blocks.{i}.attn.v_proj.weight",
    "esm.encoder.layer.{i}.attention.self.value.bias": "blocks.{i}.attn.v_proj.bias",
    "esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq": None,
    "esm.encoder.layer.{i}.attention.output.dense.weight": "blocks.{i}.attn.o_proj.weight",
    "esm.encoder.layer.{i}.attention.output.dense.bias": "blocks.{i}.attn.o_proj.bias",
    "esm.encoder.layer.{i}.attention.LayerNorm.weight": "blocks.{i}.attn_norm.weight",
    "esm.encoder.layer.{i}.attention.LayerNorm.bias": "blocks.{i}.attn_norm.bias",
    "esm.encoder.layer.{i}.intermediate.dense.weight": "blocks.{i}.mlp.up.weight",
    "esm.encoder.layer.{i}.intermediate.dense.bias": "blocks.{i}.mlp.up.bias",
    "esm.encoder.layer.{i}.output.dense.weight": "blocks.{i}.mlp.down.weight",
    "esm.encoder.layer.{i}.output.dense.bias": "blocks.{i}.mlp.down.bias",
    "esm.encoder.layer.{i}.LayerNorm.weight": "blocks.{i}.mlp_norm.weight",
    "esm.encoder.layer.{i}.LayerNorm.bias": "blocks.{i}.mlp_norm.bias",
    "esm.encoder.emb_layer_norm_after.weight": "final_norm.weight",
    "esm.encoder.emb_layer_norm_after.bias": "final_norm.bias",
    "esm.rotary_embeddings.inv_freq": None,
    "esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq": None,  # as transformers 5 saves it
    "esm.pooler.dense.weight": None,  # EsmModel(add_pooling_layer=True): not part of the trunk
    "esm.pooler.dense.bias": None,
    "esm.contact_head.regression.weight": None,  # split off: the attached head's state (see the docstring)
    "esm.contact_head.regression.bias": None,
    "lm_head.dense.weight": "lm_head.dense.weight",
    "lm_head.dense.bias": "lm_head.dense.bias",
    "lm_head.layer_norm.weight": "lm_head.norm.weight",
    "lm_head.layer_norm.bias": "lm_head.norm.bias",
    "lm_head.bias": "lm_head.bias",
    "lm_head.decoder.weight": "lm_head.decoder.weight",  # dropped again when tied
}
CONTACT_KEYS = {"esm.contact_head.regression.weight": "regression.weight", "esm.contact_head.regression.bias": "regression.bias"}
HEAD_ATTACHMENT = "contact"  # the trunk attachment those two tensors belong to


def normalize_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``EsmModel`` saved on its own has no ``esm.`` prefix; add it."""
    return {k if k.startswith(("esm.", "lm_head.")) else f"esm.{k}": v for k, v in state.items()}


def config_from_hf(hf: dict[str, Any], path: Path) -> ModelConfig:
    if hf.get("is_folding_model"):
        raise CheckpointError(f"{path}: an ESMFold checkpoint; only the ESM-2 language model is supported")
    if hf.get("position_embedding_type", "absolute") != "rotary":
        raise CheckpointError(
            f"{path}: position_embedding_type={hf.get('position_embedding_type', 'absolute')!r}: this is an "
            "ESM-1b/ESM-1v layout; foundry imports ESM-2 (rotary) models"
        )
    if hf.get("emb_layer_norm_before"):
        raise CheckpointError(f"{path}: emb_layer_norm_before=true (ESM-1b layout) is not supported")
    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{path}: hidden_act={act!r}; ESM-2 uses 'gelu'")
    d_model = int(require(hf, "hidden_size", path))
    return ModelConfig(
        name=str(hf.get("_name_or_path") or path.name), vocab_size=int(require(hf, "vocab_size", path)),
        n_layer=int(require(hf, "num_hidden_layers", path)), n_head=int(require(hf, "num_attention_heads", path)),
        d_model=d_model, d_ff=int(require(hf, "intermediate_size", path)), causal=bool(hf.get("is_decoder", False)),
        norm="layernorm", norm_eps=float(hf.get("layer_norm_eps", 1e-12)), mlp="gelu", pos="rope",
        max_position=int(hf.get("max_position_embeddings", 1026)), rope_theta=float(hf.get("rope_theta", 10000.0)),
        bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        token_dropout=bool(hf.get("token_dropout", False)), lm_head="esm", final_norm=True,
        pad_id=hf.get("pad_token_id"), mask_id=hf.get("mask_token_id"), source=str(path),
    )


def split_contact_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    head = {ours: state[theirs] for theirs, ours in CONTACT_KEYS.items() if theirs in state}
    return head if len(head) == 2 else None


def head_attachments(cfg: ModelConfig, extra: dict[str, torch.Tensor] | None) -> dict:
    """Those tensors as the trunk's attachments ``{name: head module}`` (same head as fair-esm's file)."""
    from .fair_esm import head_attachments as fair_esm_attachments

    return fair_esm_attachments(cfg, extra)


def fresh_lm_head(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Initial LM-head tensors for an ``EsmModel`` import (which has none)."""
    d = cfg.d_model
    return {
        "lm_head.dense.weight": torch.randn(d, d) * cfg.init_std, "lm_head.dense.bias": torch.zeros(d),
        "lm_head.norm.weight": torch.ones(d), "lm_head.norm.bias": torch.zeros(d),
        "lm_head.bias": torch.zeros(cfg.vocab_size),
    }


def hf_config(cfg: ModelConfig) -> Any:
    from transformers import EsmConfig

    want = {"norm": "layernorm", "mlp": "gelu", "pos": "rope", "bias": True, "lm_head": "esm", "final_norm": True}
    bad = [f"{k}={getattr(cfg, k)!r}" for k, v in want.items() if getattr(cfg, k) != v]
    if cfg.kv_heads != cfg.n_head:
        bad.append(f"n_kv_heads={cfg.n_kv_heads}")
    if bad:
        raise FoundryError(f"model {cfg.name!r} cannot be exported as HF ESM: {', '.join(bad)} has no HF ESM equivalent")
    return EsmConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, intermediate_size=cfg.d_ff, hidden_act="gelu",
        hidden_dropout_prob=float(cfg.dropout), attention_probs_dropout_prob=float(cfg.dropout),
        max_position_embeddings=cfg.max_position, rope_theta=float(cfg.rope_theta), initializer_range=float(cfg.init_std),
        layer_norm_eps=float(cfg.norm_eps), position_embedding_type="rotary", emb_layer_norm_before=False,
        token_dropout=cfg.token_dropout, mask_token_id=cfg.mask_id, pad_token_id=cfg.pad_id,
        tie_word_embeddings=cfg.tie_embeddings, is_decoder=cfg.causal, architectures=["EsmForMaskedLM"],
    )
