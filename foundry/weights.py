"""Reading weight files and checking their tensors: the one path every loader goes through.

A weight file can be wrong in ways ``load_state_dict`` reports as a traceback, or not at all:
a corrupt safetensors header, an integer or bool tensor where the model has floats, a tensor of
the wrong shape, NaN or infinite values from a run that diverged (a model that loads with them
writes NaN embeddings and predictions and exits 0). ``check_weights`` turns each of these into
one ``CheckpointError`` line naming the file and the tensor, before anything is assigned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch

from .errors import CheckpointError

#: finiteness is checked this many elements at a time, so the temporary mask stays small
_FINITE_CHUNK = 1 << 24


def read_safetensors(path: Path, device="cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a missing or corrupt file is one line naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        return tensors, metadata
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {detail}") from None


def check_weights(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], path,
                  source_name: Callable[[str], str] = str) -> None:
    """``state`` has exactly the tensors of ``expected`` (a module's ``state_dict``, meta tensors
    are fine), each of the same shape, floating where expected is floating, and finite.

    ``source_name`` maps a name of ``expected`` to the name the file uses (converters rename)."""
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: missing tensor {source_name(missing[0])!r}{more}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {source_name(extra[0])!r} (not part of this model)")
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor):
            raise CheckpointError(f"{path}: entry {source_name(key)!r} is a {type(got).__name__}, not a tensor")
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{path}: tensor {source_name(key)!r} has shape {tuple(got.shape)}, expected {tuple(want.shape)} for this config"
            )
        check_tensor(got, path, source_name(key), floating=want.is_floating_point(), dtype=want.dtype)


def check_tensor(tensor: torch.Tensor, path, name: str, floating: bool = True, dtype: torch.dtype | None = None) -> None:
    """One tensor: floating (any float dtype; the model casts) or exactly ``dtype``; finite."""
    if floating:
        if not tensor.is_floating_point():
            raise CheckpointError(
                f"{path}: tensor {name!r} is {_dtype_name(tensor.dtype)}, expected a floating-point tensor "
                "(the file was not written as model weights, or was converted wrongly)"
            )
        bad = count_nonfinite(tensor)
        if bad:
            raise CheckpointError(
                f"{path}: tensor {name!r} holds NaN or infinite values ({bad} of {tensor.numel()}); "
                "the weights are corrupt (saved from a run that diverged?)"
            )
    elif dtype is not None and tensor.dtype != dtype:
        raise CheckpointError(f"{path}: tensor {name!r} is {_dtype_name(tensor.dtype)}, expected {_dtype_name(dtype)}")


def check_floating_state(state: Mapping[str, torch.Tensor], path) -> None:
    """Every entry is a finite floating-point tensor (weights without a model to compare to: adapters)."""
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        check_tensor(value, path, key)


def count_nonfinite(tensor: torch.Tensor) -> int:
    """Number of NaN/inf elements, chunked so a 500M-element embedding needs no 500 MB mask."""
    flat = tensor.detach().reshape(-1)
    return sum(int((~torch.isfinite(part)).sum()) for part in flat.split(_FINITE_CHUNK)) if flat.numel() else 0


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
