"""The model directory every command shares (pretrain output, fine-tune input, converter output).

    MODEL_DIR/model.json                  {"format": "foundry-model", "version": 1, "modality": ...,
                                           "model": ModelConfig.to_dict(), "tokenizer": {"kind", "fingerprint"},
                                           "extras": {...}}
    MODEL_DIR/model.safetensors           trunk weights (tied weights exist once in the trunk)
    MODEL_DIR/tokenizer/                  tokenizer.save(dir)
    MODEL_DIR/<name>_head.safetensors     optional: each head attached to the trunk
                                          (``Transformer.attach``), its ``describe()`` in the metadata

Writes go to a sibling temp directory that replaces ``MODEL_DIR`` only once complete, so a crash
never leaves a half-written model and never loses the previous one. Loading builds the model on
the meta device and assigns the (memory-mapped) tensors: one copy of the weights, not two.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_directory
from ..errors import CheckpointError, ConfigError, FoundryError
from ..weights import check_weights, read_safetensors
from .config import ModelConfig
from .transformer import Transformer

FORMAT, VERSION = "foundry-model", 1
META_FILE, WEIGHTS_FILE, TOKENIZER_DIR = "model.json", "model.safetensors", "tokenizer"
HEAD_SUFFIX = "_head.safetensors"  # attachment "<name>" -> "<name>_head.safetensors"


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Any  # a foundry Tokenizer, or None for a weights-only directory
    modality: str
    config: ModelConfig
    extras: dict = field(default_factory=dict)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)


def save_model(directory, model: Transformer, tokenizer, modality: str, extras: dict | None = None) -> Path:
    """Write ``model`` (+ tokenizer, attached heads) as a model directory, atomically."""
    directory = Path(directory)
    trunk = model.state_dict()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "modality": modality,
        "model": model.config.to_dict(),
        "tokenizer": None if tokenizer is None else {"kind": tokenizer.kind, "fingerprint": tokenizer.fingerprint()},
        "extras": dict(extras or {}),
    }
    try:
        json.dumps(meta)
    except TypeError as exc:
        raise FoundryError(f"save_model: extras must be JSON-serialisable: {exc}") from None
    needed = sum(t.numel() * t.element_size() for t in trunk.values())
    with atomic_directory(directory, needed=needed) as tmp:
        _save_tensors(trunk, tmp / WEIGHTS_FILE, {"format": "pt"})
        for name, head in model.attachments.items():
            _save_tensors(head.state_dict(), tmp / f"{name}{HEAD_SUFFIX}", _head_metadata(head))
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_DIR)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_meta(directory) -> dict:
    """``model.json`` of a model directory, checked."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        hint = " (is this a model directory written by foundry?)" if Path(directory).is_dir() else ""
        raise CheckpointError(f"{path}: file not found{hint}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a foundry model file (expected \"format\": \"{FORMAT}\")")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: model format version {meta.get('version')!r}; this foundry reads version {VERSION}")
    for key in ("model", "modality"):
        if key not in meta:
            raise CheckpointError(f"{path}: missing key {key!r}")
    return meta


def load_model(directory, map_location="cpu") -> LoadedModel:
    """Read a model directory written by ``save_model``.

    Every tensor is checked before it is assigned (``foundry.weights.check_weights``): names,
    shapes, floating dtype, finite values; a bad one is a ``CheckpointError`` naming file and tensor.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except ConfigError as exc:
        raise CheckpointError(f"{directory / META_FILE}: {exc}") from None

    state, _ = read_safetensors(directory / WEIGHTS_FILE, map_location)
    with torch.device("meta"):
        model = Transformer(cfg)
    check_weights(model.state_dict(), state, directory / WEIGHTS_FILE)
    model.load_state_dict(state, strict=True, assign=True)

    for path in sorted(directory.glob(f"*{HEAD_SUFFIX}")):
        name = path.name[: -len(HEAD_SUFFIX)]
        model.attach(name, _load_head(path, name, cfg, map_location))

    tokenizer = None
    tok_meta = meta.get("tokenizer")
    if tok_meta:
        from ..plugins import load_tokenizer

        tok_dir = directory / TOKENIZER_DIR
        if not tok_dir.is_dir():
            raise CheckpointError(f"{tok_dir}: tokenizer directory not found")
        try:
            tokenizer = load_tokenizer(tok_meta["kind"], tok_dir)
        except FoundryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a garbled tokenizer file, reported as such
            raise CheckpointError(f"{tok_dir}: cannot load the {tok_meta['kind']!r} tokenizer: {exc}") from None
        if tok_meta.get("fingerprint") and tokenizer.fingerprint() != tok_meta["fingerprint"]:
            raise CheckpointError(
                f"{tok_dir}: tokenizer fingerprint {tokenizer.fingerprint()} differs from the one recorded in "
                f"{directory / META_FILE} ({tok_meta['fingerprint']}): the vocabulary was changed"
            )
    return LoadedModel(model.eval(), tokenizer, meta["modality"], cfg, meta.get("extras") or {})


def _head_metadata(head) -> dict[str, str]:
    return {"format": "pt", "head": json.dumps(head.describe())}


def save_attachment(directory, name: str, head) -> Path:
    """Add (or replace) one attached head in an existing model directory, atomically: the file is
    complete or absent, and the trunk is not rewritten."""
    from safetensors.torch import save

    from ..atomic import atomic_write

    directory = Path(directory)
    read_meta(directory)  # a model directory, not any folder
    path = directory / f"{name}{HEAD_SUFFIX}"
    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    data = save(tensors, metadata=_head_metadata(head))
    atomic_write(path, lambda f: f.write(data), binary=True)
    return path


def _load_head(path: Path, name: str, cfg: ModelConfig, map_location):
    """Rebuild an attached head by its kind (the head registry, ``foundry.finetune.heads``).
    Files written before heads recorded a kind take the attachment name as kind."""
    from ..finetune.heads import build_head

    head_state, head_meta = read_safetensors(path, map_location)
    try:
        description = json.loads(head_meta["head"])
        description.setdefault("kind", name)
        head = build_head(description)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the head's description in the file metadata is missing or invalid: {exc}") from None
    for key in ("n_layer", "n_head", "d_model"):  # a head sized for another trunk
        if key in description and description[key] != getattr(cfg, key):
            raise CheckpointError(f"{path}: a head for {key}={description[key]}, but the model has {key}={getattr(cfg, key)}: "
                                  "not a head of this model")
    check_weights(head.state_dict(), head_state, path)
    head.load_state_dict(head_state, strict=True)
    return head.to(map_location)
