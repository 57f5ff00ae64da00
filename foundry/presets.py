"""The engine's model presets as plain data, each entry naming where its shapes come from.

No torch here (and nothing from ``foundry.model``): the plugin manager reads this at start-up, so
``foundry plugins`` and every command stay fast. Plugins add their own presets through the
``register_presets`` hook; ``foundry.model.presets.from_name`` turns any of them into a
``ModelConfig``. Text and code presets carry the published vocabulary size; a run overrides
``vocab_size`` (and ``pad_id``) from its tokenizer.
"""

from __future__ import annotations

from typing import Any

_ESM_SRC = "https://github.com/facebookresearch/esm#available-models (esm/pretrained.py, ESM2 in esm/model/esm2.py)"

# Shared by every ESM-2 model: the ESM-1b alphabet (33 tokens, <pad>=1, <mask>=32), pre-LN
# LayerNorm blocks with erf GELU, rotary positions, token dropout and the RoBERTa-style LM head.
_ESM2 = dict(
    vocab_size=33, causal=False, norm="layernorm", norm_eps=1e-5, mlp="gelu", pos="rope",
    max_position=1026, rope_theta=10000.0, bias=True, tie_embeddings=True, token_dropout=True,
    lm_head="esm", final_norm=True, pad_id=1, mask_id=32,
)

# Llama layout: RMSNorm, SwiGLU, rotary, no biases, untied output projection.
_LLAMA = dict(
    causal=True, norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", pos="rope", bias=False,
    tie_embeddings=False, token_dropout=False, lm_head="linear", final_norm=True,
)

# GPT-2 layout: LayerNorm, tanh GELU, learned positions, biases, tied output projection.
_GPT2 = dict(
    vocab_size=50257, causal=True, norm="layernorm", norm_eps=1e-5, mlp="gelu_tanh", pos="learned",
    max_position=1024, bias=True, tie_embeddings=True, token_dropout=False, lm_head="linear",
    final_norm=True,
)


def _esm2(name: str, n_layer: int, d_model: int, n_head: int) -> dict[str, Any]:
    return dict(_ESM2, name=name, n_layer=n_layer, d_model=d_model, n_head=n_head, d_ff=4 * d_model, source=_ESM_SRC)


BUILTIN_PRESETS: dict[str, dict[str, Any]] = {
    "esm2_t6_8M": _esm2("esm2_t6_8M", 6, 320, 20),
    "esm2_t12_35M": _esm2("esm2_t12_35M", 12, 480, 20),
    "esm2_t30_150M": _esm2("esm2_t30_150M", 30, 640, 20),
    "esm2_t33_650M": _esm2("esm2_t33_650M", 33, 1280, 20),
    "esm2_t36_3B": _esm2("esm2_t36_3B", 36, 2560, 40),
    "esm2_t48_15B": _esm2("esm2_t48_15B", 48, 5120, 40),
    # ~0.8M parameters: learns a small vocabulary's statistics in a few CPU minutes.
    "esm2_tiny": dict(
        _esm2("esm2_tiny", 4, 128, 4), max_position=1026,
        source="foundry: a CPU-sized ESM-2 layout (" + _ESM_SRC + ")",
    ),
    # ~1.3M parameters with a 4k vocabulary (tied embeddings keep the vocabulary cheap): a few
    # hundred steps on two CPU cores take minutes and clearly beat the unigram baseline.
    "llama-tiny": dict(
        _LLAMA, name="llama-tiny", vocab_size=32000, n_layer=4, n_head=4, n_kv_heads=2, d_model=128,
        d_ff=352, max_position=2048, rope_theta=10000.0, tie_embeddings=True,
        source="foundry: a CPU-sized Llama layout with GQA (https://huggingface.co/meta-llama/Llama-2-7b-hf)",
    ),
    "llama2-7b": dict(
        _LLAMA, name="llama2-7b", vocab_size=32000, n_layer=32, n_head=32, n_kv_heads=32, d_model=4096,
        d_ff=11008, max_position=4096, rope_theta=10000.0,
        source="https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json",
    ),
    "codellama-7b": dict(
        _LLAMA, name="codellama-7b", vocab_size=32016, n_layer=32, n_head=32, n_kv_heads=32, d_model=4096,
        d_ff=11008, max_position=16384, rope_theta=1000000.0,
        source="https://huggingface.co/codellama/CodeLlama-7b-hf/blob/main/config.json",
    ),
    "mistral-7b": dict(
        _LLAMA, name="mistral-7b", vocab_size=32000, n_layer=32, n_head=32, n_kv_heads=8, d_model=4096,
        d_ff=14336, max_position=32768, rope_theta=10000.0, sliding_window=4096,
        source="https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json",
    ),
    "gpt2": dict(
        _GPT2, name="gpt2", n_layer=12, n_head=12, d_model=768, d_ff=3072,
        source="https://huggingface.co/openai-community/gpt2/blob/main/config.json",
    ),
    "gpt2-medium": dict(
        _GPT2, name="gpt2-medium", n_layer=24, n_head=16, d_model=1024, d_ff=4096,
        source="https://huggingface.co/openai-community/gpt2-medium/blob/main/config.json",
    ),
    "gpt2-tiny": dict(
        _GPT2, name="gpt2-tiny", n_layer=4, n_head=4, d_model=128, d_ff=512, max_position=512,
        source="foundry: a CPU-sized GPT-2 layout (https://huggingface.co/openai-community/gpt2)",
    ),
}

_PLAIN = (str, int, float, bool, type(None))


def check_preset(name: object, spec: object) -> dict[str, Any]:
    """A plugin's preset as a plain dict, or a ``FoundryError`` saying what is wrong.

    Presets are data (numbers, strings, booleans): field names are checked against
    ``ModelConfig`` only when a run builds the model, so listing plugins never imports torch.
    """
    from collections.abc import Mapping

    from .errors import FoundryError

    if not isinstance(name, str) or not name:
        raise FoundryError(f"a model preset needs a non-empty string name, got {name!r}")
    if not isinstance(spec, Mapping):
        raise FoundryError(f"model preset {name!r}: expected a dict of model config fields, got {type(spec).__name__}")
    for key, value in spec.items():
        if not isinstance(key, str) or not isinstance(value, _PLAIN):
            raise FoundryError(f"model preset {name!r}: field {key!r} must be a plain value (number, string, bool, "
                               f"None), got {type(value).__name__}")
    return {**spec, "name": name}
