"""Process-group setup shared by every entry point.

accelerate only forms a CPU process group (gloo) when told the run is on CPU, so on a machine
without an accelerator every process asks for ``cpu=True``: ``torchrun --nproc_per_node 2 -m
foundry …`` (or ``foundry … pretrain --processes 2``) then trains data-parallel on CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator, PartialState


def on_cpu_only() -> bool:
    return not torch.cuda.is_available()


def process_state() -> PartialState:
    return PartialState(cpu=on_cpu_only())


def check_mixed_precision(mixed_precision: str, key: str = "train.mixed_precision") -> None:
    """Refuse a precision this machine cannot honour, instead of training in float32 silently.

    accelerate turns "fp16" off without a word when there is no CUDA device (torch's CPU autocast
    has no float16), so the run would not be what its config says. "bf16" works on CPU (torch
    autocasts matmuls to bfloat16 there) and on GPUs that support it.
    """
    from .errors import ConfigError

    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: 'fp16' needs a CUDA GPU and this machine has none (CPU autocast has no float16); "
                          "use 'bf16' or 'no' here")
    if mixed_precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{key}: 'bf16' is not supported by this GPU ({torch.cuda.get_device_name()}); use 'fp16' or 'no'")


def make_accelerator(mixed_precision: str, report_to: list[str] | None = None, project_dir=None) -> Accelerator:
    """An Accelerator for this machine; ``report_to`` names accelerate trackers (tensorboard,
    wandb, …) that must be installed: a missing one is an error, not a silent no-op."""
    check_mixed_precision(mixed_precision)
    if not report_to:
        return Accelerator(mixed_precision=mixed_precision, cpu=on_cpu_only())
    from accelerate.tracking import filter_trackers

    from .errors import ConfigError

    logging_dir = str(Path(project_dir) / "logs")
    available = {str(getattr(t, "value", t)) for t in filter_trackers(list(report_to), logging_dir)}
    missing = [name for name in report_to if name not in available]
    if missing:
        raise ConfigError(f"train.report_to: {', '.join(missing)} not installed (pip install {' '.join(missing)})")
    from accelerate.utils import ProjectConfiguration

    project = ProjectConfiguration(project_dir=str(project_dir), logging_dir=logging_dir)
    return Accelerator(mixed_precision=mixed_precision, cpu=on_cpu_only(), log_with=list(report_to), project_config=project)


def relaunch_with_torchrun(processes: int) -> None:
    """Run the current command again as ``processes`` torchrun workers, then exit with their status.

    Called by ``--processes N``; the workers see WORLD_SIZE and form the process group themselves.
    """
    import os
    import subprocess
    import sys

    if "LOCAL_RANK" in os.environ:
        return  # already a worker
    args = list(sys.argv[1:])
    for i, arg in enumerate(args):
        if arg == "--processes":
            del args[i : i + 2]
            break
        if arg.startswith("--processes="):
            del args[i]
            break
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m", "foundry", *args]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE)
    failed = forward_until_error(proc.stderr, sys.stderr.buffer)
    code = proc.wait()
    sys.exit(2 if failed and code != 0 else code)


def forward_until_error(source, sink) -> bool:
    """Copy the workers' stderr through as it comes (progress bars included) until a worker
    prints its one-line ``error: …``; drop what follows (the same line from the other workers,
    torchrun's traceback of the failed child). Returns whether an error line was seen."""
    import os

    pending, failed = b"", False
    while chunk := os.read(source.fileno(), 65536):
        if failed:
            continue  # drain, so the workers never block on a full pipe
        pending += chunk
        start = 0 if pending.startswith(b"error: ") else pending.find(b"\nerror: ") + 1
        if start > 0 or pending.startswith(b"error: "):
            end = pending.find(b"\n", start)
            if end < 0:
                continue  # wait for the rest of the error line
            sink.write(pending[: end + 1])
            failed = True
        else:
            keep = pending.rfind(b"\n") + 1  # a partial last line might be the start of "error: "
            sink.write(pending[:keep] if b"\r" not in pending[keep:] else pending)
            pending = pending[keep:] if b"\r" not in pending[keep:] else b""
        sink.flush()
    return failed
