"""The model directory every command shares (pretrain output, fine-tune input, converter output).

    MODEL_DIR/model.json                  {"format": "foundry-model", "version": 1, "modality": ...,
                                           "model": ModelConfig.to_dict(), "tokenizer": {"kind", "fingerprint"},
                                           "extras": {...}}
    MODEL_DIR/model.safetensors           trunk weights (tied weights exist once in the trunk)
    MODEL_DIR/tokenizer/                  tokenizer.save(dir)
    MODEL_DIR/contact_head.safetensors    optional, with the head's shape in its metadata

Writes go to a sibling temp directory that replaces ``MODEL_DIR`` only once complete, so a crash
never leaves a half-written model and never loses the previous one. Loading builds the model on
the meta device and assigns the (memory-mapped) tensors: one copy of the weights, not two.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import CheckpointError, ConfigError, FoundryError
from ..weights import check_weights, read_safetensors
from .config import ModelConfig
from .heads import AttentionContactHead
from .transformer import Transformer

FORMAT, VERSION = "foundry-model", 1
META_FILE, WEIGHTS_FILE, CONTACT_FILE, TOKENIZER_DIR = "model.json", "model.safetensors", "contact_head.safetensors", "tokenizer"


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Any  # a foundry Tokenizer, or None for a weights-only directory
    modality: str
    config: ModelConfig
    extras: dict = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_directory(directory) -> Iterator[Path]:
    """Yield a temp sibling of ``directory`` to fill; on success it becomes ``directory``.

    An existing ``directory`` is moved aside only after the new one is complete and synced, then
    deleted. On error the temp directory is removed and ``directory`` is untouched.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f"{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if directory.exists():
            old = directory.parent / f"{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, old)
        os.replace(tmp, directory)
        _fsync_dir(directory.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)


def save_model(directory, model: Transformer, tokenizer, modality: str, extras: dict | None = None) -> Path:
    """Write ``model`` (+ tokenizer, contact head) as a model directory, atomically."""
    directory = Path(directory)
    state = model.state_dict()
    trunk = {k: v for k, v in state.items() if not k.startswith("contact_head.")}
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
    with atomic_directory(directory) as tmp:
        _save_tensors(trunk, tmp / WEIGHTS_FILE, {"format": "pt"})
        if model.contact_head is not None:
            head = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("contact_head.")}
            _save_tensors(head, tmp / CONTACT_FILE, {"format": "pt", "head": json.dumps(model.contact_head.describe())})
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

    if (directory / CONTACT_FILE).exists():
        model.attach_contact_head(_load_contact_head(directory / CONTACT_FILE, cfg, map_location))

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


def _load_contact_head(path: Path, cfg: ModelConfig, map_location) -> AttentionContactHead:
    head_state, head_meta = read_safetensors(path, map_location)
    try:
        head = AttentionContactHead(**json.loads(head_meta["head"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the head's description in the file metadata is missing or invalid: {exc}") from None
    if (head.n_layer, head.n_head) != (cfg.n_layer, cfg.n_head):
        raise CheckpointError(
            f"{path}: a contact head for {head.n_layer} layers x {head.n_head} heads, but the model has "
            f"{cfg.n_layer} x {cfg.n_head}: not a head of this model"
        )
    check_weights(head.state_dict(), head_state, path)
    head.load_state_dict(head_state, strict=True)
    return head.to(map_location)
