"""``foundry plugins new NAME``: write a plugin package that installs with pip and passes its own
tests right after creation. The files are the templates in ``templates.py`` with the names filled in.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from ..errors import FoundryError
from .templates import FILES

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


def plugin_names(name: str) -> dict[str, str]:
    """The names the templates use: modality ``smiles``, package ``foundry-smiles``, module
    ``foundry_smiles``."""
    if not _NAME.match(name or ""):
        raise FoundryError(f"plugin name {name!r}: use lower-case letters, digits, '-' or '_', starting with a "
                           "letter (it becomes the modality name, e.g. `foundry smiles pretrain`)")
    module = "foundry_" + name.replace("-", "_")
    return {"name": name, "package": "foundry-" + name, "module": module}


def create_plugin(name: str, out: Path | None = None, taken_commands: Iterable[str] = ()) -> Path:
    """Write the package for modality ``name`` into ``out`` (default ``./foundry-NAME``).

    ``taken_commands``: root command names in use; a plugin adding one of them would be refused.
    """
    names = plugin_names(name)
    _refuse_taken(name, set(taken_commands))
    out = Path(out) if out is not None else Path(names["package"])
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FoundryError(f"{out}: already exists and is not empty")
    files = {path.format(**names): _fill(text, names) for path, text in FILES.items()}
    for relative, text in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return out


def _fill(text: str, names: dict[str, str]) -> str:
    # Placeholders are __NAME__, __PACKAGE__, __MODULE__: templates keep their own braces.
    for key, value in names.items():
        text = text.replace(f"__{key.upper()}__", value)
    return text


def _refuse_taken(name: str, taken_commands: set[str]) -> None:
    """A plugin whose modality or command name is taken would be refused when it loads."""
    from ..plugins import get_manager

    manager = get_manager()
    if name in manager.modalities:
        raise FoundryError(f"a modality named {name!r} already exists (from {manager.modalities.owner(name)}); "
                           "choose another name")
    if name in taken_commands:
        raise FoundryError(f"`foundry {name}` is already a command; choose another name")
