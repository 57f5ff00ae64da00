"""Model presets as ``ModelConfig`` objects: ``from_name("llama-tiny", vocab_size=tok.vocab_size)``.

The data is plain dicts: the engine's own in ``foundry/presets.py``, a plugin's through the
``register_presets`` hook. Both live in the plugin manager's preset registry, so a name is looked
up in one place and a third-party preset can never replace a built-in one.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..presets import BUILTIN_PRESETS as PRESETS  # noqa: F401 - the engine's presets, for converters
from .config import ModelConfig


def _registry():
    from ..plugins import get_manager

    return get_manager().presets


def list_presets() -> list[str]:
    """Every known preset name: the engine's and the loaded plugins'."""
    return _registry().names()


def preset_spec(name: str) -> dict[str, Any]:
    """The plain-data preset ``name`` (unknown names raise with the closest known one)."""
    return dict(_registry().get(name))


def from_name(name: str, **overrides: Any) -> ModelConfig:
    """The preset ``name`` as a ``ModelConfig``, with ``overrides`` applied (and validated)."""
    spec = preset_spec(name)
    try:
        ModelConfig.from_dict(dict(spec))
    except ConfigError as exc:  # a plugin's preset names a wrong field: say whose preset it is
        raise ConfigError(f"model preset {name!r} from {_registry().owner(name)}: {exc}") from None
    return ModelConfig.from_dict({**spec, **overrides})
