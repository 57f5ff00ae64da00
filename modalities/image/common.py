"""What image pretraining and classification share: the resumable batch stream, the run's own
settings file, and the model directory (``image_model.json`` + safetensors, no pickles).

A model directory (``OUT/final``, ``OUT/best``, ``OUT/checkpoints/step-N/model``) holds:

    image_model.json      kind ("mae" | "classifier"), the encoder's VisionTransformer kwargs, …
    model.safetensors     the whole trained module (MAE with decoder, or classifier with head)
    encoder.safetensors   the timm encoder alone, timm's parameter names (what --from and export use)
    encoder.json          how to rebuild it: VisionTransformer(**kwargs) or the timm model name
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foundry.errors import CheckpointError

RUN_FILE = "config.yaml"  # the run's settings (the engine's run-directory name), so --resume needs only OUT
MODEL_FILE = "image_model.json"


@dataclass
class Batch:
    indices: np.ndarray
    index: int  # batches drawn so far in the run: seeds the batch's randomness (masking)


class ImageStream:
    """Batches of indices into ``n`` examples: a fresh permutation per epoch, a function of
    (seed, epoch); the state (epoch, position, batches drawn) goes into checkpoints, so a resumed
    run draws exactly the batches an uninterrupted one would. Every process draws the same global
    batch and takes its own slice of it."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, max(1, min(batch_size, n)), seed
        self.epoch = self.position = self.index = 0

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next_for_rank(self, rank: int = 0, world: int = 1) -> Batch:
        if self.position + self.batch_size > self.n:  # drop the ragged tail: every batch is full
            self.epoch, self.position = self.epoch + 1, 0
        indices = self._order()[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        batch = Batch(indices[rank::world], self.index)
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "index": self.index, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != self.n:
            raise CheckpointError(f"the checkpoint's data stream covers {state.get('n')} images; this data has {self.n}: "
                                  "resume with the same data")
        self.epoch, self.position, self.index = int(state["epoch"]), int(state["position"]), int(state["index"])


def write_run_settings(out: Path, settings: dict) -> None:
    from foundry.atomic import atomic_write_text

    import yaml

    atomic_write_text(Path(out) / RUN_FILE, yaml.safe_dump(settings, sort_keys=False))


def read_run_settings(out: Path, command: str) -> dict:
    path = Path(out) / RUN_FILE
    import yaml

    try:
        settings = yaml.safe_load(path.read_text())
        assert isinstance(settings, dict)
    except (OSError, ValueError, AssertionError, yaml.YAMLError):
        raise CheckpointError(f"{out}: not an image {command} run (no readable {RUN_FILE}); --resume takes the OUT of an earlier run") from None
    if settings.get("command") != command:
        raise CheckpointError(f"{out}: an image {settings.get('command')} run; resume it with `foundry image {settings.get('command')} --resume`")
    return settings


def read_model_spec(directory: Path) -> dict:
    directory = Path(directory)
    try:
        return json.loads((directory / MODEL_FILE).read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{directory}: not an image model directory (no readable {MODEL_FILE})") from None


def write_model_dir(directory: Path, module, spec: dict, encoder, encoder_kwargs: dict, timm_name: str | None, head=None) -> None:
    from safetensors.torch import save_file

    from .backbone import save_encoder

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    save_encoder(directory / "encoder.safetensors", encoder, encoder_kwargs, timm_name,
                 extra={"labels": spec.get("labels")} if head is not None else None, head=head)
    (directory / MODEL_FILE).write_text(json.dumps({**spec, "encoder": encoder_kwargs, "timm_name": timm_name}, indent=1) + "\n")


def load_module_state(module, directory: Path) -> None:
    from safetensors.torch import load_file

    path = Path(directory) / "model.safetensors"
    try:
        module.load_state_dict(load_file(str(path)))
    except Exception as exc:  # noqa: BLE001 - a missing, corrupt or mismatched file, reported with its name
        raise CheckpointError(f"{path}: cannot load ({str(exc).splitlines()[0]})") from None


def resolve_encoder(source: str | Path, timm_name: str | None = None, in_chans: int | None = None):
    """(encoder, kwargs, timm name) from ``--from``: a model directory of ours (``OUT/final``,
    ``FT/best``; a run directory means its ``final``), an exported ``.safetensors`` with its
    ``.json``, or a local timm checkpoint with ``timm_name`` (adapted to ``in_chans`` channels)."""
    from .backbone import import_timm, load_encoder_file

    path = Path(source)
    if path.is_dir():
        if not (path / "encoder.safetensors").is_file() and (path / "final" / "encoder.safetensors").is_file():
            path = path / "final"
        if not (path / "encoder.safetensors").is_file():
            raise CheckpointError(f"{path}: not an image model directory (no encoder.safetensors); give OUT/final of "
                                  "`foundry image pretrain`, FT/best of a fine-tuning run, or a timm checkpoint file")
        return load_encoder_file(path / "encoder.safetensors")
    return import_timm(path, timm_name, in_chans)
