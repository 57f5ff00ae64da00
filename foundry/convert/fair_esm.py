"""fair-esm ESM-2 checkpoints (``esm2_t*_*.pt`` + ``*-contact-regression.pt``) <-> foundry.

Reads what ``esm.pretrained.load_model_and_alphabet_local`` reads, without executing pickled
code: ``torch.load(weights_only=True)`` with exactly one class allowed, ``argparse.Namespace``,
which holds the architecture (``cfg["model"]``) in fairseq-trained checkpoints.

    cfg, state, extra = load_fair_esm("esm2_t6_8M_UR50D.pt")
    export_fair_esm(model, "out/esm2_t6_8M_finetuned.pt")   # writes the regression file too

The regression file is part of the format: a logistic regression over every layer's and head's
attention map. This converter only carries its two tensors (``regression.weight``/``.bias``) to and
from the trunk's attachment named ``HEAD_ATTACHMENT``; what they mean (the head that reads them)
is the protein plugin's (``modalities/protein/contact_head.py``). The names below that say
"contact" are fair-esm's own file and tensor names.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..errors import CheckpointError, FoundryError
from ..model.config import ModelConfig
from ..model.presets import PRESETS
from ..model.transformer import Transformer
from .common import as_state_dict, check_state_dict, invert, outside_namer, read_torch, rename

# fair-esm ESM2 name -> foundry name. ``None``: known, not needed (tied copy, rotary buffer).
WEIGHT_MAP: dict[str, str | None] = {
    "embed_tokens.weight": "embed.weight",
    "layers.{i}.self_attn.q_proj.weight": "blocks.{i}.attn.q_proj.weight",
    "layers.{i}.self_attn.q_proj.bias": "blocks.{i}.attn.q_proj.bias",
    "layers.{i}.self_attn.k_proj.weight": "blocks.{i}.attn.k_proj.weight",
    "layers.{i}.self_attn.k_proj.bias": "blocks.{i}.attn.k_proj.bias",
    "layers.{i}.self_attn.v_proj.weight": "blocks.{i}.attn.v_proj.weight",
    "layers.{i}.self_attn.v_proj.bias": "blocks.{i}.attn.v_proj.bias",
    "layers.{i}.self_attn.out_proj.weight": "blocks.{i}.attn.o_proj.weight",
    "layers.{i}.self_attn.out_proj.bias": "blocks.{i}.attn.o_proj.bias",
    "layers.{i}.self_attn.rot_emb.inv_freq": None,
    "layers.{i}.self_attn_layer_norm.weight": "blocks.{i}.attn_norm.weight",
    "layers.{i}.self_attn_layer_norm.bias": "blocks.{i}.attn_norm.bias",
    "layers.{i}.fc1.weight": "blocks.{i}.mlp.up.weight",
    "layers.{i}.fc1.bias": "blocks.{i}.mlp.up.bias",
    "layers.{i}.fc2.weight": "blocks.{i}.mlp.down.weight",
    "layers.{i}.fc2.bias": "blocks.{i}.mlp.down.bias",
    "layers.{i}.final_layer_norm.weight": "blocks.{i}.mlp_norm.weight",
    "layers.{i}.final_layer_norm.bias": "blocks.{i}.mlp_norm.bias",
    "emb_layer_norm_after.weight": "final_norm.weight",
    "emb_layer_norm_after.bias": "final_norm.bias",
    "lm_head.weight": None,  # the same tensor as embed_tokens.weight
    "lm_head.bias": "lm_head.bias",
    "lm_head.dense.weight": "lm_head.dense.weight",
    "lm_head.dense.bias": "lm_head.dense.bias",
    "lm_head.layer_norm.weight": "lm_head.norm.weight",
    "lm_head.layer_norm.bias": "lm_head.norm.bias",
    "contact_head.regression.weight": None,  # split off: the attached head's state (see the docstring)
    "contact_head.regression.bias": None,
}

_PREFIX = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")  # fairseq prefixes fair-esm strips
_CONTACT_KEYS = ("contact_head.regression.weight", "contact_head.regression.bias")  # fair-esm's names
HEAD_ATTACHMENT = "contact"  # the trunk attachment the regression file's tensors belong to
HEAD_KIND = "attention-contact"  # the head kind that reads them (registered by the protein plugin)
ALPHABET_SIZE = 33  # esm.data.Alphabet.from_architecture("ESM-1b")


def regression_path(path: Path) -> Path:
    """Where fair-esm looks for the regression file of ``path``."""
    return Path(str(Path(path).with_suffix("")) + "-contact-regression.pt")


def load_fair_esm(path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """-> (config, foundry state dict, the regression file's state ``{"regression.weight", "regression.bias"}`` or None)."""
    path = Path(path)
    data = read_torch(path, allow=[argparse.Namespace])
    if not isinstance(data, dict) or "model" not in data:
        found = type(data).__name__ if not isinstance(data, dict) else f"keys {sorted(map(str, data))[:6]}"
        raise CheckpointError(
            f"{path}: not a fair-esm checkpoint: expected a dict with 'model' (the state dict) and 'cfg', found {found}"
        )
    state = {_PREFIX.sub("", k): v for k, v in as_state_dict(data["model"], path).items()}
    arch = _architecture(data, path)
    if arch["layers"] is None:
        arch["layers"] = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))), default=-1)
    if "embed_tokens.weight" not in state:
        raise CheckpointError(f"{path}: missing tensor 'embed_tokens.weight'")
    vocab, dim = state["embed_tokens.weight"].shape
    if vocab != ALPHABET_SIZE:
        raise CheckpointError(f"{path}: 'embed_tokens.weight' has {vocab} rows; ESM-2 uses the 33-token ESM-1b alphabet")
    base = dict(PRESETS["esm2_t6_8M"])
    cfg = ModelConfig.from_dict({
        **base, "name": path.stem, "source": str(path), "n_layer": arch["layers"], "d_model": arch["dim"] or dim,
        "n_head": arch["heads"], "d_ff": arch["ffn"] or 4 * (arch["dim"] or dim),
        "token_dropout": arch["token_dropout"],
    })
    extra = {k.split("contact_head.", 1)[1]: state.pop(k) for k in _CONTACT_KEYS if k in state}
    reg = regression_path(path)
    if reg.is_file():
        reg_data = read_torch(reg, allow=[argparse.Namespace])
        reg_state = reg_data.get("model") if isinstance(reg_data, dict) else None
        reg_state = as_state_dict(reg_state, reg, "contact regression state dict")
        extra = {k.split("contact_head.", 1)[-1]: v for k, v in reg_state.items() if k in _CONTACT_KEYS}
        if len(extra) != 2:
            raise CheckpointError(f"{reg}: expected tensors {', '.join(_CONTACT_KEYS)}")
    if extra and len(extra) != 2:
        raise CheckpointError(f"{path}: the regression head needs both {', '.join(_CONTACT_KEYS)}")

    ours = rename(state, WEIGHT_MAP, path, cfg.n_layer)
    check_state_dict(cfg, ours, path, outside_namer(WEIGHT_MAP))
    if extra:
        want = (1, cfg.n_layer * cfg.n_head)
        if tuple(extra["regression.weight"].shape) != want:
            raise CheckpointError(
                f"{reg if reg.is_file() else path}: tensor 'contact_head.regression.weight' has shape "
                f"{tuple(extra['regression.weight'].shape)}, expected {want}"
            )
    return cfg, ours, extra or None


def head_attachments(cfg: ModelConfig, extra: dict[str, torch.Tensor] | None) -> dict:
    """The regression file's tensors as the trunk's attachments ``{name: head module}`` (for
    ``common.build_model``), built through the head registry; {} without them."""
    if not extra:
        return {}
    from ..finetune.heads import build_head

    head = build_head({"kind": HEAD_KIND, "n_layer": cfg.n_layer, "n_head": cfg.n_head})
    head.load_state_dict(extra, strict=True)
    return {HEAD_ATTACHMENT: head}


def _architecture(data: dict, path: Path) -> dict:
    """Layers/dim/heads/ffn/token_dropout from ``cfg["model"]`` (fairseq) or ``args`` (older)."""
    ns = None
    cfg = data.get("cfg")
    if isinstance(cfg, dict):
        ns = cfg.get("model")
    if ns is None:
        ns = data.get("args")
    if isinstance(ns, argparse.Namespace):
        ns = vars(ns)
    if not isinstance(ns, dict):
        raise CheckpointError(f"{path}: no architecture found: expected cfg['model'] or args with encoder_layers etc.")
    heads = ns.get("encoder_attention_heads")
    if heads is None:
        raise CheckpointError(f"{path}: cfg['model'] has no 'encoder_attention_heads'")
    return {
        "layers": ns.get("encoder_layers"), "dim": ns.get("encoder_embed_dim"), "heads": int(heads),
        "ffn": ns.get("encoder_ffn_embed_dim"), "token_dropout": bool(ns.get("token_dropout", True)),
    }


def _check_exportable(cfg: ModelConfig) -> None:
    want = {"causal": False, "norm": "layernorm", "mlp": "gelu", "pos": "rope", "bias": True, "lm_head": "esm",
            "final_norm": True, "tie_embeddings": True, "vocab_size": ALPHABET_SIZE, "pad_id": 1, "mask_id": 32,
            "rope_theta": 10000.0, "norm_eps": 1e-5, "d_ff": 4 * cfg.d_model}
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]
    if cfg.kv_heads != cfg.n_head:
        bad.append(f"n_kv_heads={cfg.n_kv_heads} (fair-esm has no grouped-query attention)")
    if bad:
        raise FoundryError(f"model {cfg.name!r} cannot be written as a fair-esm ESM-2 checkpoint: {'; '.join(bad)}")


def export_fair_esm(model: Transformer, path) -> Path:
    """Write ``path`` (+ ``<stem>-contact-regression.pt``) for ``esm.pretrained.load_model_and_alphabet_local``.

    fair-esm picks the ESM-2 loader from the file name, so the stem must start with ``esm2``.
    Like real fair-esm checkpoints, ``cfg["model"]`` is an ``argparse.Namespace``: with torch >= 2.6,
    load it inside ``torch.serialization.safe_globals([argparse.Namespace])``. Without an attached head
    the regression file holds zeros (fair-esm requires it; its predictions are then meaningless).
    """
    path = Path(path)
    cfg = model.config
    _check_exportable(cfg)
    if not path.name.startswith("esm2") or path.suffix != ".pt":
        raise FoundryError(f"{path}: fair-esm only loads ESM-2 files named 'esm2*.pt'; choose such a name")
    theirs = invert(model.state_dict(), WEIGHT_MAP)  # the trunk only: attachments are not in its state dict
    head_dim = cfg.head_dim
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for i in range(cfg.n_layer):
        theirs[f"layers.{i}.self_attn.rot_emb.inv_freq"] = inv_freq.clone()
    theirs["lm_head.weight"] = theirs["embed_tokens.weight"]
    prefixed = {("encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder.") + k: v.detach().cpu().contiguous()
                for k, v in theirs.items()}
    ns = argparse.Namespace(
        arch="esm2", encoder_layers=cfg.n_layer, encoder_embed_dim=cfg.d_model, encoder_ffn_embed_dim=cfg.d_ff,
        encoder_attention_heads=cfg.n_head, token_dropout=cfg.token_dropout, max_positions=cfg.max_position - 2,
    )
    attached = model.attachments.get(HEAD_ATTACHMENT)
    if attached is not None:
        head = {f"contact_head.{k}": v.detach().cpu().float() for k, v in attached.state_dict().items()}
    else:
        n = cfg.n_layer * cfg.n_head
        head = {"contact_head.regression.weight": torch.zeros(1, n), "contact_head.regression.bias": torch.zeros(1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save({"model": prefixed, "cfg": {"model": ns}}, f), binary=True)
    atomic_write(regression_path(path), lambda f: torch.save({"model": head}, f), binary=True)
    return path
