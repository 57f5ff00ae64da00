"""Resolve a model spec to local files, never touching the network.

A spec is a local path (used as is), a Hugging Face hub id (``facebook/esm2_t6_8M_UR50D``)
found only in the local HF cache, or a fair-esm model name (``esm2_t6_8M_UR50D``) found only in
torch hub's checkpoint folder. Anything not on disk fails with a message saying where to put it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import FoundryError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w.-]+)?$")
_FAIR_ESM_NAME = re.compile(r"^esm[\w.-]+$")


def _hf_cache_dir() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - huggingface_hub is optional here
        return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _from_hf_cache(repo_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(hit, str):  # a path; the sentinel _CACHED_NO_EXIST and None mean "not here"
        return Path(hit).parent
    return None


def _torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_model_path(spec: str | os.PathLike) -> Path:
    """Local path for ``spec``; raises ``FoundryError`` explaining how to provide missing files."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    text = str(spec)
    if _FAIR_ESM_NAME.match(text) and "/" not in text:
        candidate = _torch_hub_checkpoints() / f"{text}.pt"
        if candidate.is_file():
            return candidate
        raise FoundryError(
            f"model {text!r} is not on this machine and foundry never downloads. Put the fair-esm checkpoint at "
            f"{candidate} (with {candidate.with_name(text + '-contact-regression.pt').name} beside it), "
            f"or pass the path of a local .pt file"
        )
    if _HUB_ID.match(text):
        repo_id, _, revision = text.partition("@")
        found = _from_hf_cache(repo_id, revision or None)
        if found is not None:
            return found
        cache = _hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
        raise FoundryError(
            f"model {text!r} is neither a local path nor in the local Hugging Face cache ({cache}) and foundry never downloads. "
            f"On a machine with network run `huggingface-cli download {repo_id}` and copy {cache} here "
            f"(or set HF_HUB_CACHE to where it is), or pass a local directory holding config.json and model.safetensors"
        )
    raise FoundryError(f"{text}: no such file or directory")
