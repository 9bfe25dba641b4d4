"""Processes and devices, chosen one way everywhere (train, evaluate, denoise): Accelerate's.

The CPU is used when asked (--cpu), when the launcher's config says `use_cpu`, or when
this machine has no accelerator. Two checks run before any process touches a device, so
a bad launch is one line, not a CUDA error or a silent job of lone processes:
- more processes on a machine than it has GPUs;
- launched processes that did not form one process group.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch

from denoise_dist.errors import ConfigError

# What --mixed-precision asks Accelerate for (None: the launcher's choice).
PRECISION_TO_ACCELERATE = {"auto": None, "fp32": "no", "fp16": "fp16", "bf16": "bf16"}
# A compiled step saves ~4 ms per batch-128 step on an H100 and compiling costs ~10 s.
COMPILE_AUTO_MIN_STEPS = 3000


def accelerator_available() -> bool:
    if hasattr(torch, "accelerator"):  # torch >= 2.6: CUDA, XPU, MPS, ...
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def launcher_wants_cpu(environ=None, parent_cmdline: list[str] | None = None) -> bool:
    """True if `accelerate launch` was told to use the CPU: its simple launcher passes
    ACCELERATE_USE_CPU, but its multi-process launcher drops a config's `use_cpu`, so the
    config file named on the launcher's command line (our parent process) is read too."""
    from accelerate.utils import str_to_bool

    env = os.environ if environ is None else environ
    if str_to_bool(env.get("ACCELERATE_USE_CPU", "false")):
        return True
    if "LOCAL_RANK" not in env:
        return False  # not started by a launcher
    argv = _parent_cmdline() if parent_cmdline is None else parent_cmdline
    config_file = _flag_value(argv, "--config_file") or _flag_value(argv, "--config-file")
    if not config_file:
        return False
    try:
        import yaml

        settings = yaml.safe_load(Path(config_file).read_text()) or {}
    except (OSError, ValueError):
        return False  # the launcher read it; if we cannot, keep Accelerate's default
    return isinstance(settings, dict) and settings.get("use_cpu") is True


def _parent_cmdline() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def use_cpu(requested: bool) -> bool:
    return requested or launcher_wants_cpu() or not accelerator_available()


def check_gpu_count(cpu: bool, environ=None) -> None:
    """Refuse more processes on this machine than it has GPUs (CUDA would fail later with
    'invalid device ordinal')."""
    env = os.environ if environ is None else environ
    if cpu or not torch.cuda.is_available():
        return
    local = int(env.get("LOCAL_WORLD_SIZE", "1"))
    gpus = torch.cuda.device_count()
    if local > gpus:
        raise ConfigError(
            f"the launcher started {local} processes on this machine but it has {gpus} "
            f"GPU{'s' * (gpus != 1)}; pass --num_processes {gpus} (one per GPU), or --cpu"
        )


def check_one_group(world_size: int, environ=None) -> None:
    """Refuse processes that each run alone although a launcher started several: all of
    them would train alone and write the same run folder."""
    env = os.environ if environ is None else environ
    launched = int(env.get("WORLD_SIZE", "1"))
    if launched != world_size:
        raise ConfigError(
            f"the launcher started {launched} processes but they did not form one process "
            f"group (world size {world_size}); pass --cpu, or launch on a machine with "
            f"{launched} GPUs"
        )


def make_accelerator(cpu: bool, mixed_precision: str, dist_timeout_s: int, cuda_graph=False):
    """The training processes' Accelerator, after the checks above (and, with
    --cuda-graph, `check_graphable`)."""
    from accelerate import Accelerator, InitProcessGroupKwargs
    from accelerate.utils import AutocastKwargs

    cpu = use_cpu(cpu)
    check_gpu_count(cpu)
    handlers: list = [InitProcessGroupKwargs(timeout=timedelta(seconds=dist_timeout_s))]
    if cuda_graph:  # autocast's weight-cast cache must not outlive a graph capture
        handlers.append(AutocastKwargs(cache_enabled=False))
    accelerator = Accelerator(
        cpu=cpu, mixed_precision=PRECISION_TO_ACCELERATE[mixed_precision], kwargs_handlers=handlers
    )
    check_one_group(accelerator.num_processes)
    if cuda_graph:
        check_graphable(accelerator.num_processes, accelerator.scaler is not None)
    return accelerator


def check_graphable(world_size: int, loss_scaler: bool) -> None:
    """--cuda-graph runs one process: capturing NCCL's all-reduce under DDP has traps
    (DDP's warm-up, gradient bucket views, the NCCL watchdog) that no test has covered;
    and fp16's loss scaler asks the host each step whether to skip it."""
    if world_size > 1:
        raise ConfigError(
            f"--cuda-graph runs on one process only, not {world_size}; multi-process runs "
            f"keep the compiled step (--compile): drop --cuda-graph"
        )
    if loss_scaler:
        raise ConfigError(
            "--cuda-graph cannot run fp16's loss scaler (it syncs every step); "
            "use --mixed-precision bf16 or fp32"
        )


def compile_wanted(asked: bool | None, device: torch.device, total_steps: int) -> bool:
    """--compile / --no-compile, or by default: on for a CUDA run long enough to pay for
    the compilation (measured on an H100: 2.1x images/s for unet at batch 128)."""
    if asked is not None:
        return asked
    return device.type == "cuda" and total_steps >= COMPILE_AUTO_MIN_STEPS


def compile_model(model, device: torch.device, cudagraphs: bool = True):
    """torch.compile as Accelerate's dynamo settings would (after DDP wrapping): CUDA
    graphs ("reduce-overhead") on a GPU, plain inductor on a CPU, or with
    cudagraphs=False (--cuda-graph captures the whole step itself)."""
    from accelerate.utils import TorchDynamoPlugin, is_compiled_module

    if is_compiled_module(model):  # the launcher's config already asked Accelerate to
        return model
    mode = "reduce-overhead" if device.type == "cuda" and cudagraphs else "default"
    return torch.compile(model, **TorchDynamoPlugin(backend="inductor", mode=mode).to_kwargs())


def process_state(cpu: bool):
    """Rank, world size and device for `evaluate` and `denoise`, after the same checks."""
    from accelerate import PartialState

    cpu = use_cpu(cpu)
    check_gpu_count(cpu)
    state = PartialState(cpu=cpu)
    check_one_group(state.num_processes)
    return state


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 in hardware (AVX512-BF16 or AMX), not by emulation."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def precision_in_effect(accelerator) -> str:
    """What autocast really computes in: fp16 asked for on a CPU is silently fp32."""
    with accelerator.autocast():
        x = torch.ones(2, 2, device=accelerator.device)
        dtype = (x @ x).dtype
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
