"""Load "a model" the way every command accepts it: a foundry model directory, or an outside
checkpoint (fair-esm ``.pt``, a transformers directory, a hub id found in the local cache) that is
converted on the fly with the tokenizer its modality pairs with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError
from .modality import Modality


def load_for_modality(spec: str | Path, modality: Modality, allow_missing_head: bool = False, tokenizer=None) -> tuple[Any, Any, str]:
    """Return ``(model, tokenizer, source_format)`` for ``spec`` used with ``modality``.

    ``tokenizer`` replaces the one the model comes with (needed for trunks saved without one)."""
    from .convert import import_model
    from .model.store import load_model
    from .weights import check_floating_state

    path = Path(spec)
    if path.is_dir() and (path / "model.json").is_file():
        loaded = load_model(path)
        if loaded.modality != modality.name:
            raise CheckpointError(f"{path}: this is a {loaded.modality} model, not a {modality.name} model")
        model, source_format, tokenizer = loaded.model, "foundry", tokenizer or loaded.tokenizer
        if tokenizer is None:
            raise CheckpointError(f"{path}: the model directory has no tokenizer/ (pass one with --tokenizer)")
    else:
        imported = import_model(spec, allow_missing_head=allow_missing_head)
        if modality.import_tokenizer is None and tokenizer is None:
            raise CheckpointError(f"{spec}: the {modality.name} modality cannot import outside models")
        check_objective(imported.config, modality, imported.path)
        model, source_format, path = imported.model, imported.source_format, imported.path
        if source_format != "foundry":  # a foundry dir was checked by load_model already
            check_floating_state(model.state_dict(), path)  # NaN/inf or integer weights: refused by name
        tokenizer = tokenizer or modality.import_tokenizer(imported.path, imported.source_format)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding only "
            f"{model.config.vocab_size}: a checkpoint from another tokenizer?"
        )
    return model, tokenizer, source_format


def check_objective(config, modality: Modality, path) -> None:
    from .objectives import objective_class

    causal_expected = objective_class(modality.objective).causal
    if bool(config.causal) != causal_expected:
        kind = "a causal (GPT/Llama-style)" if config.causal else "a masked (BERT/ESM-style)"
        raise CheckpointError(f"{path}: {kind} model does not fit the {modality.name} modality ({modality.objective} objective)")


def model_from_preset(modality: Modality, preset: str | None, tokenizer, overrides: dict[str, Any] | None = None):
    """A freshly initialised model of one of ``modality``'s presets, sized to ``tokenizer``."""
    from .model import Transformer, from_name
    from .registry import unknown_name_message

    preset = preset or modality.default_preset
    if preset not in modality.presets:
        raise ConfigError(unknown_name_message(f"{modality.name} preset", preset, modality.presets))
    fields = {"vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id, "mask_id": tokenizer.mask_id, **(overrides or {})}
    try:
        return Transformer(from_name(preset, **fields))
    except TypeError as exc:
        raise ConfigError(f"model overrides: {exc}") from None
