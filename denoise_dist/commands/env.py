"""`denoise-dist env`: what a bug report needs, in one paste (as `accelerate env` and
`torch.utils.collect_env` print it): versions, devices, CPU bf16, the data root and the
Accelerate config in effect.

Versions come from the installed packages' metadata, so wandb and tensorboard are never
imported just to name them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

# Distribution names, as pip knows them: the package, what it runs on, the optional parts.
PACKAGES = (
    "denoise-dist",
    "torch",
    "torchvision",
    "accelerate",
    "safetensors",
    "numpy",
    "pillow",
    "wandb",
    "tensorboard",
    "bm3d",
    "scikit-image",
    "PyWavelets",
)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Environment variables that change what a run does (names starting with these).
ENV_PREFIXES = ("ACCELERATE_", "DENOISE_DIST_", "WANDB_", "CUDA_VISIBLE_DEVICES", "HF_HOME")
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
GIB = 1024**3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="Data root to check. Default: $DENOISE_DIST_DATA, else ./data."
    )
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks.")


def version(distribution: str) -> str:
    if distribution == "torch":  # imported anyway; its own version names the build (+cu130)
        import torch

        return torch.__version__
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_lines() -> list[str]:
    import psutil  # comes with accelerate
    import torch

    from denoise_dist.runtime import cpu_has_native_bf16

    memory = psutil.virtual_memory()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = sorted(set(CPU_BF16_FLAGS) & cpu_flags())
    lines = [
        f"CPU: {cpu_model()}; {usable} of {os.cpu_count()} cores usable; "
        f"torch threads {torch.get_num_threads()}",
        f"CPU bf16: {'in hardware (' + ', '.join(flags) + ')' if flags else 'emulated'}"
        f" (/proc/cpuinfo); oneDNN native bf16: {'yes' if cpu_has_native_bf16() else 'no'}",
        f"host memory: {memory.total / GIB:.1f} GiB, {memory.available / GIB:.1f} GiB available",
        f"CUDA: built with {torch.version.cuda or 'none'}, cuDNN "
        f"{torch.backends.cudnn.version() or 'none'}, available: {torch.cuda.is_available()}",
    ]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(i)
        lines.append(
            f"cuda:{i}: {props.name}, {props.total_memory / GIB:.1f} GiB, "
            f"compute capability {props.major}.{props.minor}"
        )
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        lines.append("mps: available")
    return lines


def data_lines(data_dir: str | None) -> list[str]:
    from denoise_dist.data import DATA_ENV, FILES, TORCHVISION_NAMES, resolve_data_root

    root = resolve_data_root(data_dir)
    source = "--data-dir" if data_dir else f"${DATA_ENV}" if os.environ.get(DATA_ENV) else "default"
    exists = "" if root.is_dir() else ", does not exist"
    lines = [f"data root: {root.resolve()} (from {source}{exists})"]
    for dataset, folder in TORCHVISION_NAMES.items():
        raw = root / folder / "raw"
        names = [name for pair in FILES.values() for name in pair]
        missing = [n for n in names if not (raw / n).exists() and not (raw / f"{n}.gz").exists()]
        state = (
            "found"
            if not missing
            else "not found"
            if len(missing) == len(names)
            else (f"incomplete, missing {', '.join(missing)}")
        )
        lines.append(f"{dataset}: {state} ({raw})")
    return lines


def accelerate_lines() -> list[str]:
    from accelerate.commands.config import default_config_file

    path = Path(default_config_file)
    if path.is_file():
        lines = [f"Accelerate default config: {path}"]
        lines += [f"    {line}" for line in path.read_text(errors="replace").splitlines()]
    else:
        lines = [f"Accelerate default config: none at {path} (Accelerate's defaults)"]
    names = sorted(n for n in os.environ if n.startswith(ENV_PREFIXES))
    for name in names:
        secret = any(word in name for word in SECRET_WORDS)
        lines.append(f"{name}={'(set, not shown)' if secret else os.environ[name]}")
    if not names:
        lines.append(f"environment: none of {', '.join(p + '*' for p in ENV_PREFIXES)} is set")
    return lines


def report(data_dir: str | None) -> str:
    lines = [
        f"python: {platform.python_version()} ({sys.executable})",
        f"platform: {platform.platform()}",
        *(f"{name}: {version(name)}" for name in PACKAGES),
        *device_lines(),
        *data_lines(data_dir),
        *accelerate_lines(),
    ]
    return "\n".join(f"- {line}" if not line.startswith("    ") else line for line in lines)


def env(args: argparse.Namespace) -> None:
    print(report(args.data_dir))
