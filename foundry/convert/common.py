"""Shared by the converters: safe file reading, weight-map application, shape checking.

A weight map is ``{outside name: foundry name}`` where ``{i}`` stands for the layer index, e.g.
``"layers.{i}.fc1.weight": "blocks.{i}.mlp.up.weight"``. A foundry name of ``None`` means the
tensor is known and deliberately not used (rotary ``inv_freq`` buffers, tied copies).
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ..errors import CheckpointError
from ..model.config import ModelConfig
from ..model.transformer import Transformer


def read_torch(path: Path, allow: Iterable[type] = ()) -> Any:
    """``torch.load`` that never executes pickled code; only the classes in ``allow`` may be built."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "Unsupported global" in ln or "GLOBAL" in ln), first[0] if first else "")
        raise CheckpointError(
            f"{path}: refuses to unpickle: the file needs code beyond plain tensors and containers "
            f"({detail}). Re-save it as a state dict of tensors (or safetensors)."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {exc}") from None


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from ..weights import read_safetensors as read

    return read(path)[0]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object at the top level")
    return data


def as_state_dict(obj: Any, path: Path, what: str = "state dict") -> dict[str, torch.Tensor]:
    """Check that ``obj`` is a flat ``{str: Tensor}`` mapping; name the first offending key."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a {what} (a mapping of names to tensors), found {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: expected a {what} of tensors, but entry {key!r} is a {type(value).__name__}"
            )
    return obj


def _compile(weight_map: dict[str, str | None]) -> list[tuple[re.Pattern, str | None]]:
    out = []
    for src, dst in weight_map.items():
        pattern = re.escape(src).replace(re.escape("{i}"), r"(?P<i>\d+)")
        out.append((re.compile(f"^{pattern}$"), dst))
    return out


def rename(
    state: dict[str, torch.Tensor], weight_map: dict[str, str | None], path: Path, n_layer: int
) -> dict[str, torch.Tensor]:
    """Apply ``weight_map`` to every outside tensor; unknown names and bad layer indices are errors."""
    compiled = _compile(weight_map)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        for pattern, dst in compiled:
            m = pattern.match(name)
            if m is None:
                continue
            i = m.groupdict().get("i")
            if i is not None and int(i) >= n_layer:
                raise CheckpointError(f"{path}: unexpected tensor {name!r}: layer {i} but the config has {n_layer} layers")
            if dst is not None:
                out[dst.format(i=i)] = tensor
            break
        else:
            raise CheckpointError(f"{path}: unexpected tensor {name!r} (not part of this architecture)")
    return out


def invert(state: dict[str, torch.Tensor], weight_map: dict[str, str | None]) -> dict[str, torch.Tensor]:
    """foundry names -> outside names through the same weight map (used by the exporters)."""
    reverse = {dst: src for src, dst in weight_map.items() if dst is not None}
    compiled = _compile(reverse)
    out = {}
    for name, tensor in state.items():
        for pattern, src in compiled:
            m = pattern.match(name)
            if m is not None:
                out[src.format(i=m.groupdict().get("i"))] = tensor
                break
        else:
            raise CheckpointError(f"foundry tensor {name!r} has no counterpart in the export format")
    return out


def outside_namer(weight_map: dict[str, str | None]) -> Callable[[str], str]:
    """foundry name -> the outside name it came from (for error messages)."""
    compiled = _compile({dst: src for src, dst in weight_map.items() if dst is not None})

    def name(key: str) -> str:
        for pattern, src in compiled:
            m = pattern.match(key)
            if m is not None:
                return src.format(i=m.groupdict().get("i"))
        return key

    return name


def expected_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Names and shapes of a ``Transformer(cfg)``'s weights, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def check_state_dict(cfg: ModelConfig, state: dict[str, torch.Tensor], path: Path, source_name: Callable[[str], str] = str):
    """Every tensor the trunk needs is present with the right shape and a finite floating-point
    dtype, and nothing else; messages use the source format's tensor names."""
    from ..weights import check_tensor

    shapes = expected_shapes(cfg)
    missing = [k for k in shapes if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: missing tensor {source_name(missing[0])!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    extra = [k for k in state if k not in shapes]
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {source_name(extra[0])!r}")
    for key, shape in shapes.items():
        if tuple(state[key].shape) != tuple(shape):
            raise CheckpointError(
                f"{path}: tensor {source_name(key)!r} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(shape)} for this config"
            )
        check_tensor(state[key], path, source_name(key))


def require(config: dict[str, Any], key: str, path: Path, default: Any = ...) -> Any:
    if key in config and config[key] is not None:
        return config[key]
    if default is not ...:
        return default
    raise CheckpointError(f"{path}: config has no {key!r}")


def build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], attachments: dict | None = None) -> Transformer:
    """A ``Transformer`` holding exactly the given tensors (assigned, not copied), with the
    converter's ``attachments`` (``{name: head module}``, e.g. ``fair_esm.head_attachments``)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    for name, head in (attachments or {}).items():
        model.attach(name, head)
    return model.eval()
