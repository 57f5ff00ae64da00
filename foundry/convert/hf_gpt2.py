"""Hugging Face GPT-2 (``GPT2LMHeadModel``, ``GPT2Model``) <-> foundry.

GPT-2 stores projections as ``Conv1D`` (weight is (in, out), the transpose of ``nn.Linear``) and
fuses q, k, v into ``c_attn``. ``unfuse`` / ``fuse`` turn that into one tensor per foundry weight
with names of the form ``h.{i}.attn.q.weight`` so the weight map stays a plain rename.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, FoundryError
from ..model.config import ModelConfig
from .common import require

MODEL_TYPES = ("gpt2",)

# Names after ``unfuse`` -> foundry names.
WEIGHT_MAP: dict[str, str | None] = {
    "transformer.wte.weight": "embed.weight",
    "transformer.wpe.weight": "pos_embed.weight",
    "transformer.h.{i}.ln_1.weight": "blocks.{i}.attn_norm.weight",
    "transformer.h.{i}.ln_1.bias": "blocks.{i}.attn_norm.bias",
    "transformer.h.{i}.attn.q.weight": "blocks.{i}.attn.q_proj.weight",
    "transformer.h.{i}.attn.q.bias": "blocks.{i}.attn.q_proj.bias",
    "transformer.h.{i}.attn.k.weight": "blocks.{i}.attn.k_proj.weight",
    "transformer.h.{i}.attn.k.bias": "blocks.{i}.attn.k_proj.bias",
    "transformer.h.{i}.attn.v.weight": "blocks.{i}.attn.v_proj.weight",
    "transformer.h.{i}.attn.v.bias": "blocks.{i}.attn.v_proj.bias",
    "transformer.h.{i}.attn.c_proj.weight": "blocks.{i}.attn.o_proj.weight",
    "transformer.h.{i}.attn.c_proj.bias": "blocks.{i}.attn.o_proj.bias",
    "transformer.h.{i}.attn.bias": None,  # causal-mask buffers of old checkpoints
    "transformer.h.{i}.attn.masked_bias": None,
    "transformer.h.{i}.ln_2.weight": "blocks.{i}.mlp_norm.weight",
    "transformer.h.{i}.ln_2.bias": "blocks.{i}.mlp_norm.bias",
    "transformer.h.{i}.mlp.c_fc.weight": "blocks.{i}.mlp.up.weight",
    "transformer.h.{i}.mlp.c_fc.bias": "blocks.{i}.mlp.up.bias",
    "transformer.h.{i}.mlp.c_proj.weight": "blocks.{i}.mlp.down.weight",
    "transformer.h.{i}.mlp.c_proj.bias": "blocks.{i}.mlp.down.bias",
    "transformer.ln_f.weight": "final_norm.weight",
    "transformer.ln_f.bias": "final_norm.bias",
    "lm_head.weight": "lm_head.weight",  # dropped again when tied
}
_CONV1D = ("attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def normalize_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI's own upload and ``GPT2Model`` have no ``transformer.`` prefix; add it."""
    return {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v for k, v in state.items()}


def unfuse(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Split ``c_attn`` into q/k/v and transpose Conv1D weights to ``nn.Linear`` layout."""
    out = {}
    for name, t in state.items():
        if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias"):
            stem, kind = name.rsplit(".c_attn.", 1)
            if t.shape[-1] % 3:
                raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}; last dim must be 3 * n_embd")
            for part, chunk in zip("qkv", t.chunk(3, dim=-1)):
                out[f"{stem}.{part}.{kind}"] = chunk.t().contiguous() if kind == "weight" else chunk.contiguous()
        elif name.endswith(_CONV1D) and t.dim() == 2:
            out[name] = t.t().contiguous()
        else:
            out[name] = t
    return out


def fuse(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``unfuse``: foundry-shaped GPT-2 names back to HF's Conv1D layout."""
    out = {}
    for name, t in state.items():
        if ".attn.q." in name:
            stem, kind = name.split(".attn.q.")
            parts = [state[f"{stem}.attn.{p}.{kind}"] for p in "qkv"]
            out[f"{stem}.attn.c_attn.{kind}"] = torch.cat([p.t() if kind == "weight" else p for p in parts], dim=-1).contiguous()
        elif ".attn.k." in name or ".attn.v." in name:
            continue
        elif name.endswith(_CONV1D):
            out[name] = t.t().contiguous()
        else:
            out[name] = t
    return out


def config_from_hf(hf: dict[str, Any], path: Path) -> ModelConfig:
    acts = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
    act = hf.get("activation_function", "gelu_new")
    if act not in acts:
        raise CheckpointError(f"{path}: activation_function={act!r} is not supported (one of {', '.join(acts)})")
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise CheckpointError(f"{path}: scale_attn_by_inverse_layer_idx=true is not supported")
    if hf.get("scale_attn_weights") is False:
        raise CheckpointError(f"{path}: scale_attn_weights=false is not supported")
    d_model = int(require(hf, "n_embd", path))
    return ModelConfig(
        name=str(hf.get("_name_or_path") or path.name), vocab_size=int(require(hf, "vocab_size", path)),
        n_layer=int(require(hf, "n_layer", path)), n_head=int(require(hf, "n_head", path)), d_model=d_model,
        d_ff=int(hf.get("n_inner") or 4 * d_model), causal=True, norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), mlp=acts[act], pos="learned",
        max_position=int(require(hf, "n_positions", path)), bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), token_dropout=False, lm_head="linear",
        final_norm=True, pad_id=hf.get("pad_token_id"), mask_id=None, source=str(path),
    )


def hf_config(cfg: ModelConfig) -> Any:
    from transformers import GPT2Config

    want = {"causal": True, "norm": "layernorm", "pos": "learned", "bias": True, "lm_head": "linear",
            "final_norm": True, "token_dropout": False, "sliding_window": None}
    bad = [f"{k}={getattr(cfg, k)!r}" for k, v in want.items() if getattr(cfg, k) != v]
    if cfg.mlp not in ("gelu", "gelu_tanh"):
        bad.append(f"mlp={cfg.mlp!r}")
    if cfg.kv_heads != cfg.n_head:
        bad.append(f"n_kv_heads={cfg.n_kv_heads}")
    if bad:
        raise FoundryError(f"model {cfg.name!r} cannot be exported as HF GPT-2: {', '.join(bad)} has no GPT-2 equivalent")
    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_position, n_embd=cfg.d_model, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=cfg.d_ff, activation_function="gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
        resid_pdrop=float(cfg.dropout), embd_pdrop=float(cfg.dropout), attn_pdrop=float(cfg.dropout),
        layer_norm_epsilon=float(cfg.norm_eps),
        initializer_range=float(cfg.init_std), pad_token_id=cfg.pad_id, tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=None, eos_token_id=None, architectures=["GPT2LMHeadModel"],
    )
