"""``ModelConfig``: every trunk variant is a set of flags on one dataclass (the litgpt pattern).

ESM-2, Llama, Mistral and GPT-2 are not subclasses: they are values of these fields (see
``presets.py``). The converters in ``foundry/convert`` translate outside configs into this one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

_CHOICES = {
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "gelu_tanh", "swiglu"),
    "pos": ("rope", "learned"),
    "lm_head": ("esm", "linear"),
    "attn_impl": ("auto", "sdpa", "documents", "varlen", "flex"),  # foundry/model/attention.py
}


@dataclass
class ModelConfig:
    name: str = "custom"
    vocab_size: int = 33
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int = 512
    n_kv_heads: int | None = None  # grouped-query attention; None = n_head (plain multi-head)
    causal: bool = False
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # gelu (erf) | gelu_tanh (GPT-2 "gelu_new") | swiglu (Llama)
    pos: str = "rope"  # rope | learned
    max_position: int = 1026  # learned table size; also the longest sequence rope is meant for
    rope_theta: float = 10000.0
    sliding_window: int | None = None  # Mistral v0.1: a token sees at most this many keys back
    bias: bool = True  # biases in attention and MLP projections
    tie_embeddings: bool = True  # output projection shares the token embedding matrix
    token_dropout: bool = False  # ESM-2: zero <mask> embeddings and rescale (needs mask_id)
    mask_ratio_train: float = 0.15 * 0.8  # ESM-2's fraction of <mask> tokens seen in training
    lm_head: str = "linear"  # esm (dense -> gelu -> LayerNorm -> decoder + bias) | linear
    final_norm: bool = True
    pad_id: int | None = None
    mask_id: int | None = None
    dropout: float = 0.0
    attn_impl: str = "auto"  # packed rows: sdpa (dense mask) | documents | varlen | flex; auto picks
    init_std: float = 0.02
    source: str = ""  # where the shapes come from (paper, model card, config.json)

    def __post_init__(self) -> None:
        for key, allowed in _CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"model.{key}: {value!r} is not allowed; choose one of {', '.join(allowed)}")
        for key in ("vocab_size", "n_layer", "n_head", "d_model", "d_ff", "max_position"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{key}: must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})"
            )
        if (self.d_model // self.n_head) % 2 and self.pos == "rope":
            raise ConfigError(f"model: rotary needs an even head dim, got d_model/n_head = {self.head_dim}")
        if self.n_kv_heads is not None:
            if self.n_kv_heads <= 0 or self.n_head % self.n_kv_heads:
                raise ConfigError(
                    f"model.n_head ({self.n_head}) must be divisible by model.n_kv_heads ({self.n_kv_heads})"
                )
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"model.sliding_window: must be positive or null, got {self.sliding_window}")
        if self.token_dropout and self.mask_id is None:
            raise ConfigError("model.token_dropout: needs model.mask_id (the <mask> token id)")
        for key in ("pad_id", "mask_id"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ConfigError(f"model.{key}: {value} is outside the vocabulary (size {self.vocab_size})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.mask_ratio_train < 1.0:
            raise ConfigError(f"model.mask_ratio_train: must be in [0, 1), got {self.mask_ratio_train}")
        if self.norm_eps <= 0:
            raise ConfigError(f"model.norm_eps: must be positive, got {self.norm_eps}")

    # -- derived -----------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_head

    # -- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"model config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown model config key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return ModelConfig.from_dict({**self.to_dict(), **changes})
