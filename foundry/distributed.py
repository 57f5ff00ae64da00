"""Process-group setup shared by every entry point, and what the loop needs for sharded models.

accelerate only forms a CPU process group (gloo) when told the run is on CPU, so on a machine
without an accelerator every process asks for ``cpu=True``: ``torchrun --nproc_per_node 2 -m
foundry …`` (or ``foundry … pretrain --processes 2``) then trains data-parallel on CPU cores.

FSDP comes from accelerate too: ``accelerate launch --config_file configs/accelerate/8gpu_fsdp.yml
-m foundry …`` sets ``ACCELERATE_USE_FSDP``/``FSDP_*`` and the Accelerator shards with torch's FSDP2
``fully_shard``. Checkpoints of a sharded run are gathered into ordinary model directories
(``Sharded``), so they load anywhere and resume on any number of processes.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState


def on_cpu_only() -> bool:
    return not torch.cuda.is_available()


def process_state() -> PartialState:
    check_devices()
    return PartialState(cpu=on_cpu_only())


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (``accelerate launch`` with an fsdp config sets this)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_devices(device_count: int | None = None) -> None:
    """Refuse more processes on this machine than it has GPUs, before any process claims one
    (otherwise each surplus process dies in CUDA with "invalid device ordinal")."""
    from .errors import ConfigError

    if device_count is None:
        if not torch.cuda.is_available():
            return  # CPU processes (gloo) share the cores; any number works
        device_count = torch.cuda.device_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local > device_count:
        raise ConfigError(f"launch: {local} processes on this machine but {device_count} GPU(s); "
                          f"start at most {device_count} (accelerate launch --num_processes, or --processes)")


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


def launcher_precision(mixed_precision: str) -> str:
    """The precision to train in: ``train.mixed_precision``, or, when that is "no", the one an
    ``accelerate launch`` config asks for (accelerate would let our explicit "no" win silently)."""
    from .errors import ConfigError

    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if mixed_precision == "no":
        return launcher
    if launcher not in ("no", mixed_precision):
        raise ConfigError(f"train.mixed_precision: {mixed_precision!r}, but the accelerate launch config asks for {launcher!r}; "
                          "make them agree")
    return mixed_precision


def make_accelerator(mixed_precision: str, report_to: list[str] | None = None, project_dir=None) -> Accelerator:
    """An Accelerator for this machine; ``report_to`` names accelerate trackers (tensorboard,
    wandb, …) that must be installed: a missing one is an error, not a silent no-op."""
    check_devices()
    mixed_precision = launcher_precision(mixed_precision)
    check_mixed_precision(mixed_precision)
    if not report_to:
        return _with_fsdp(Accelerator(mixed_precision=mixed_precision, cpu=on_cpu_only()), mixed_precision)
    from accelerate.tracking import filter_trackers

    from .errors import ConfigError

    logging_dir = str(Path(project_dir) / "logs")
    available = {str(getattr(t, "value", t)) for t in filter_trackers(list(report_to), logging_dir)}
    missing = [name for name in report_to if name not in available]
    if missing:
        raise ConfigError(f"train.report_to: {', '.join(missing)} not installed (pip install {' '.join(missing)})")
    from accelerate.utils import ProjectConfiguration

    project = ProjectConfiguration(project_dir=str(project_dir), logging_dir=logging_dir)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=on_cpu_only(), log_with=list(report_to), project_config=project)
    return _with_fsdp(accelerator, mixed_precision)


def _with_fsdp(accelerator: Accelerator, mixed_precision: str) -> Accelerator:
    """Check an FSDP launch; on CPU, make accelerate shard as it would on GPUs.

    accelerate (1.15) forms FSDP only for GPU-like devices: with ``cpu=True`` the run is
    ``MULTI_CPU`` (plain DDP) and the plugin is dropped (``AcceleratorState`` then "has no attribute
    `fsdp_plugin`"). torch's ``fully_shard`` itself runs over gloo, so on CPU we switch the state to
    FSDP with the plugin read from the same ``FSDP_*`` variables: the prepare / clip / state-dict
    code that GPU runs use is then what CPU tests exercise.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from .errors import ConfigError

    if not fsdp_requested() or accelerator.num_processes == 1:
        return accelerator  # one process: nothing to shard, a plain model
    if accelerator.distributed_type != DistributedType.FSDP:
        if not on_cpu_only():
            return accelerator
        plugin = FullyShardedDataParallelPlugin()
        if mixed_precision != "no":
            plugin.set_mixed_precision(mixed_precision)
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
        # every later AcceleratorState() (the prepared optimizer makes one) copies PartialState's
        # distributed type over its own: set it there too, or the run turns back into MULTI_CPU
        PartialState().distributed_type = DistributedType.FSDP
    if accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise ConfigError("accelerate config: foundry shards with FSDP2; set fsdp_config.fsdp_version: 2 "
                          "(see configs/accelerate/8gpu_fsdp.yml)")
    if accelerator.state.fsdp_plugin.activation_checkpointing:
        # accelerate's checkpoint wrapper renames every parameter (…_checkpoint_wrapped_module…)
        raise ConfigError("accelerate config: fsdp_activation_checkpointing renames the model's parameters; "
                          "set it to false and use --set train.activation_checkpointing=true")
    return accelerator


def is_sharded(accelerator: Accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def check_shardable(model: torch.nn.Module, processes: int) -> None:
    """FSDP splits every weight along its first dimension; with fewer rows than processes some
    processes hold nothing of it and sharding costs communication for no memory saved."""
    from .errors import ConfigError

    rows, name = min(((p.shape[0], n) for n, p in model.named_parameters() if p.ndim >= 2), key=lambda item: item[0], default=(0, "(none)"))
    if rows < processes:
        raise ConfigError(f"FSDP: the model is too small to shard over {processes} processes ({name} has {rows} rows); "
                          "launch without an fsdp config (data-parallel) or on fewer processes")


def prepare_model(model: torch.nn.Module, *, compile: bool = False, backend: str = "inductor",
                  activation_checkpointing: bool = False) -> torch.nn.Module:
    """``train.activation_checkpointing`` and ``train.compile`` on every transformer in ``model``
    (a bare trunk, or one inside a fine-tuning model or a LoRA wrapper), in place: parameter
    names, state dicts and FSDP's per-block wrapping stay as they are.

    Each block is compiled on its own (torchtitan's recipe): blocks share one compiled graph, and
    FSDP shards them one by one afterwards. Attention over packed rows splits by document lengths,
    which dynamo runs eagerly between the compiled projections and MLP.
    """
    from .errors import ConfigError
    from .model.layers import Block
    from .model.transformer import Transformer

    if compile:
        import torch._dynamo

        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise ConfigError(f"train.compile_backend: {backend!r} is not a torch.compile backend; one of {', '.join(known)}")
    for module in model.modules():
        if isinstance(module, Transformer):
            module.activation_checkpointing = activation_checkpointing
        if compile and isinstance(module, Block):
            module.compile(backend=backend)
    return model


class Sharded:
    """Checkpoints of an FSDP run as ordinary files: the full weights in a plain copy of the model
    (saved by the workload like any model directory) and the full optimizer state keyed as
    ``optimizer.state_dict()`` keys it, so a checkpoint resumes sharded or not, on any number of
    processes. Gathering is collective: every process calls these methods.
    """

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module):
        self.accelerator = accelerator
        self.template = _meta_copy(model) if is_sharded(accelerator) else None  # structure only, no memory

    def full_model(self, prepared: torch.nn.Module) -> torch.nn.Module:
        """A plain module with the full weights (on the main process; others get the template)."""
        if self.template is None:
            return self.accelerator.unwrap_model(prepared)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # (accelerate's get_state_dict asks for broadcast_from_rank0 and hands back DTensors on CPU)
        state = get_model_state_dict(prepared, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.accelerator.is_main_process:
            self.template.load_state_dict(state, assign=True)
        return self.template

    def optimizer_state(self, prepared: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        if self.template is None:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(prepared, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return _keyed_by_index(full) if self.accelerator.is_main_process else {}

    def before_prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
        """A restored optimizer state, re-keyed by parameter name and taken out of the plain optimizer
        (FSDP swaps the parameters); ``after_prepare`` shards it back in."""
        if self.template is None or not optimizer.state:
            return None
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        full = get_optimizer_state_dict(model, optimizer)
        optimizer.state.clear()
        return full

    def after_prepare(self, prepared: torch.nn.Module, optimizer: torch.optim.Optimizer, full: dict | None) -> None:
        if full is None:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(prepared, optimizer, full, options=StateDictOptions(full_state_dict=True))


def _meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are on the meta device (no memory):
    the plain module a sharded model's gathered weights are loaded into for saving."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def _keyed_by_index(state: dict) -> dict:
    """torch.distributed.checkpoint's optimizer state (keyed by parameter name) -> the layout of
    ``optimizer.state_dict()`` (keyed by position in the parameter groups)."""
    order = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    return {"state": {index[name]: value for name, value in state["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]} for group in state["param_groups"]]}


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
