"""`torchrun --nproc_per_node 1` on a GPU: Accelerate then forms a process group over
NCCL even at world size 1, so every reduce, gather and barrier of a run goes through
NCCL, which refuses a tensor on the host. A cheap guard against a collective on a host
tensor: a run that logs, evaluates, checkpoints (the weights' finiteness check), stops
and resumes (the ranks' agreement on the checkpoint) under it. Skipped without CUDA.
"""

import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, free_port

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (gpu tier)"),
]


def torchrun_one_gpu(run_dir, max_steps: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
         "--master_port", str(free_port()), "-m", "denoise_dist", "train",
         "--output-dir", str(run_dir), "--model", "unet", "--width", "8",
         "--batch-size", "64", "--max-steps", str(max_steps), "--eval-every", "10",
         "--log-every", "5", "--checkpoint-every", "10", "--val-size", "256",
         "--ema-decay", "0.9", "--no-compile"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip


def test_every_collective_runs_on_the_device_under_torchrun_with_one_process(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    first = torchrun_one_gpu(run_dir, 10)
    assert first.returncode == 0, first.stderr
    assert "distributed=MULTI_GPU world_size=1 device=cuda" in first.stdout, first.stdout
    second = torchrun_one_gpu(run_dir, 20)  # resumes: the checkpoint agreement's gather
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 20 and summary["distributed_type"] == "MULTI_GPU"
