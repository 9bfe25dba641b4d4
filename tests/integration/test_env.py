"""`denoise-dist env`, run as a user runs it: the lines a bug report needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import accelerate
import pytest
import torch

from denoise_dist.commands.env import data_lines

pytestmark = pytest.mark.integration


def test_env_prints_versions_devices_data_and_the_accelerate_config(mnist_root, tmp_path):
    hf_home = tmp_path / "hf"  # Accelerate's default config lives under $HF_HOME
    (hf_home / "accelerate").mkdir(parents=True)
    (hf_home / "accelerate" / "default_config.yaml").write_text("mixed_precision: bf16\n")
    environ = {
        **os.environ,
        "DENOISE_DIST_DATA": str(mnist_root),
        "HF_HOME": str(hf_home),
        "ACCELERATE_USE_CPU": "true",
        "WANDB_API_KEY": "secret-api-key-4711",
    }
    # -X importtime lists every module the command imports, on stderr.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "denoise_dist", "env"],
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for expected in (
        f"- torch: {torch.__version__}",
        f"- accelerate: {accelerate.__version__}",
        f"- data root: {mnist_root.resolve()} (from $DENOISE_DIST_DATA)",
        f"- mnist: found ({mnist_root / 'MNIST' / 'raw'})",
        f"- Accelerate default config: {hf_home / 'accelerate' / 'default_config.yaml'}",
        "    mixed_precision: bf16",
        "- ACCELERATE_USE_CPU=true",
        "- WANDB_API_KEY=(set, not shown)",
    ):
        assert expected in lines, f"{expected!r} not in:\n{result.stdout}"
    for name in ("denoise-dist", "python", "wandb", "tensorboard", "bm3d", "scikit-image"):
        assert any(line.startswith(f"- {name}: ") for line in lines), name
    assert any(line.startswith("- CUDA: built with ") for line in lines)
    assert "secret-api-key-4711" not in result.stdout + result.stderr

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = {"avx512_bf16", "amx_bf16"} & set(cpuinfo.read_text().split())
        bf16 = next(line for line in lines if line.startswith("- CPU bf16: "))
        assert bf16.startswith("- CPU bf16: in hardware" if flags else "- CPU bf16: emulated")

    # Versions come from package metadata: the trackers are never imported for them.
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert not {m for m in imported if m.split(".")[0] in ("wandb", "tensorboard")}


def test_env_says_where_the_data_is_missing(tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    lines = data_lines(str(tmp_path))
    assert lines[0] == f"data root: {tmp_path.resolve()} (from --data-dir)"
    assert lines[1].startswith("mnist: incomplete, missing train-labels-idx1-ubyte, ")
    assert lines[2].startswith("fashion_mnist: not found")
    assert data_lines(str(tmp_path / "absent"))[0].endswith("(from --data-dir, does not exist)")
