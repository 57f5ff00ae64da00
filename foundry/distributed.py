"""Process-group setup shared by every entry point.

accelerate only forms a CPU process group (gloo) when told the run is on CPU, so on a machine
without an accelerator every process asks for ``cpu=True``: ``torchrun --nproc_per_node 2 -m
foundry …`` (or ``foundry … pretrain --processes 2``) then trains data-parallel on CPU cores.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator, PartialState


def on_cpu_only() -> bool:
    return not torch.cuda.is_available()


def process_state() -> PartialState:
    return PartialState(cpu=on_cpu_only())


def make_accelerator(mixed_precision: str) -> Accelerator:
    return Accelerator(mixed_precision=mixed_precision, cpu=on_cpu_only())


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
    sys.exit(subprocess.call(command))
