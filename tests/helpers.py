"""Helpers shared by the test tiers: running the CLI and the launcher as a user does, and
reading what a run left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from denoise_dist.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "accelerate_configs"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip with `reason` locally; fail in CI, where every real part must be present."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required in CI but missing: {reason}")
        pytest.skip(reason)


def tiny_args(run_dir: Path, *extra: str) -> list[str]:
    """CLI flags for a seconds-long CPU training on real MNIST."""
    return [
        "--output-dir",
        str(run_dir),
        "--model",
        "unet",
        "--width",
        "8",
        "--batch-size",
        "32",
        "--max-steps",
        "20",
        "--eval-every",
        "10",
        "--log-every",
        "5",
        "--checkpoint-every",
        "10",
        "--val-size",
        "256",
        "--cpu",
        *extra,
    ]


def folder_settings(folder: Path, val_size: int | None, patch: int, augment: bool = False):
    """The data section of a config for `data.load` on an image folder."""
    from denoise_dist.config import DataConfig

    return DataConfig(
        dataset="folder", data_dir=str(folder), val_size=val_size, patch_size=patch,
        augment=augment, download=False,
    )  # fmt: skip


def run_cli(
    *args: str,
    env: dict | None = None,
    timeout: float = 300,
    module: str = "denoise_dist",
    cwd=None,
) -> subprocess.CompletedProcess:
    """Run `python -m denoise_dist ...` in a subprocess and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def launch(accelerate_flags, target, train_flags, timeout=240, background=False, env=None):
    """`accelerate launch [flags] -m <target> [flags]` (or a script); with
    background=True, the started Popen instead of the finished result."""
    target_args = [target] if target.endswith(".py") else ["-m", *target.split()]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *accelerate_flags,
        *target_args,
        *map(str, train_flags),
    ]
    full_env = {**os.environ, **(env or {})}
    if background:
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env
        )
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_machine_launch(target, train_flags, timeout):
    """Two `accelerate launch` processes, one per "machine", meeting at 127.0.0.1:port:
    the code path of a multi-node SLURM job. Returns [(returncode, stdout, stderr)]."""
    port = str(free_port())
    machines = [
        launch(
            [
                "--config_file",
                str(CONFIGS / "multi_node.yaml"),
                "--num_processes",
                "2",
                "--num_machines",
                "2",
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                port,
            ],
            target,
            train_flags,
            background=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [m.communicate(timeout=timeout) for m in machines]
    finally:
        for m in machines:
            m.kill()
    return [(m.returncode, out, err) for m, (out, err) in zip(machines, outputs, strict=True)]


def startup_line(stdout: str) -> str:
    """The main process's one start-up line (exactly one, never wrapped)."""
    lines = [line for line in stdout.splitlines() if line.startswith("distributed=")]
    assert len(lines) == 1, stdout
    return lines[0]


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def loss_curve(run_dir: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run_dir) if "loss" in r]


def val_curve(run_dir: Path) -> list[tuple]:
    return [
        (r["step"], r["val_psnr"], r["val_ssim"]) for r in read_metrics(run_dir) if "val_psnr" in r
    ]
