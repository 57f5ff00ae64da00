"""Load "a model" the way every command accepts it: a foundry model directory, or an outside
checkpoint (fair-esm ``.pt``, a transformers directory, a hub id found in the local cache) that is
converted on the fly with the tokenizer its modality pairs with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .modality import Modality


def load_for_modality(spec: str | Path, modality: Modality, allow_missing_head: bool = False) -> tuple[Any, Any, str]:
    """Return ``(model, tokenizer, source_format)`` for ``spec`` used with ``modality``."""
    from .convert import import_model
    from .model.store import load_model

    path = Path(spec)
    if path.is_dir() and (path / "model.json").is_file():
        loaded = load_model(path)
        if loaded.modality != modality.name:
            raise CheckpointError(f"{path}: this is a {loaded.modality} model, not a {modality.name} model")
        if loaded.tokenizer is None:
            raise CheckpointError(f"{path}: the model directory has no tokenizer/")
        return loaded.model, loaded.tokenizer, "foundry"

    imported = import_model(spec, allow_missing_head=allow_missing_head)
    if modality.import_tokenizer is None:
        raise CheckpointError(f"{spec}: the {modality.name} modality cannot import outside models")
    check_objective(imported.config, modality, imported.path)
    tokenizer = modality.import_tokenizer(imported.path, imported.source_format)
    if tokenizer.vocab_size > imported.config.vocab_size:
        raise CheckpointError(
            f"{imported.path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding only "
            f"{imported.config.vocab_size}: a checkpoint from another tokenizer?"
        )
    return imported.model, tokenizer, imported.source_format


def check_objective(config, modality: Modality, path) -> None:
    causal_expected = modality.objective == "clm"
    if bool(config.causal) != causal_expected:
        kind = "a causal (GPT/Llama-style)" if config.causal else "a masked (BERT/ESM-style)"
        raise CheckpointError(f"{path}: {kind} model does not fit the {modality.name} modality ({modality.objective} objective)")
