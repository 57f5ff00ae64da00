"""How a run's config is resolved, the same way for every command that trains.

Fresh run:  defaults < modality defaults < ``--config FILE`` < ``--set key=value`` < flags
Resume:     the run's own ``config.yaml`` < ``--set`` < flags

On resume only what does not alter the run may change (how long it trains, logging, evaluation
and checkpoint cadence); a change to the model, data, seed, objective or task is refused with the
keys named, so ``config.yaml`` always describes the run that produced the checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import RunConfig, build_config, load_yaml
from .errors import FoundryError

#: keys a resumed run may change; grad_accum so that a resume on another number of processes can
#: keep the same global batch (processes x grad_accum)
RESUMABLE = ("train.max_steps", "train.grad_accum", "train.log_every", "train.eval_every", "train.eval_batches", "train.save_every",
             "train.keep_checkpoints", "train.progress", "train.report_to", "train.on_nonfinite", "train.save_on_signal",
             "train.patience")


def resolve(modality_name: str, *, defaults: dict[str, Any], config_file: Path | None, overrides: tuple[str, ...],
            flags: dict[str, Any], resume: Path | None) -> RunConfig:
    flags = {k: v for k, v in flags.items() if v is not None}
    if resume is None:
        base = {"modality": modality_name, "out": f"runs/{modality_name}"}
        cfg = build_config(base=base, dotted=defaults, yaml_file=config_file, overrides=overrides)
    else:
        if config_file:
            raise FoundryError("--resume uses the run's own config.yaml; pass changes with --set")
        config_path = Path(resume) / "config.yaml"
        if not config_path.is_file():
            raise FoundryError(f"{resume}: not a foundry run (no config.yaml)")
        saved = load_yaml(config_path)
        cfg = build_config(base=saved, overrides=overrides)
    cfg = build_config(base=cfg.to_dict(), dotted=flags)
    if resume is not None:
        check_resume_changes(build_config(base=load_yaml(Path(resume) / "config.yaml")), cfg, Path(resume))
    if cfg.modality != modality_name:
        raise FoundryError(f"this is `foundry {modality_name}` but the config says modality: {cfg.modality}")
    return cfg


def check_resume_changes(saved: RunConfig, new: RunConfig, run_dir: Path) -> None:
    before, after = _flat(saved.to_dict()), _flat(new.to_dict())
    changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k) and k not in RESUMABLE and k != "out"]
    if changed:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in changed[:4])
        raise FoundryError(f"--resume {run_dir}: cannot change {shown}: that would alter the run. "
                           f"A resumed run may change only {', '.join(RESUMABLE)}")


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "overrides":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
