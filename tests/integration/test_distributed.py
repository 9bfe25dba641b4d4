"""Real multi-process runs over gloo on the CPU, launched exactly as a user launches them:
1 vs 2 processes, a two-machine launch on one host, a rank that crashes, and mixed
precision on a CPU.

Equivalence is tested with unet; conv_ae, with no normalisation or dropout either, is
world-size invariant the same way. seed_ae's dropout masks are drawn per rank, so it is
not, and is not tested here.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli, tiny_args
from tests.integration.test_train import final_weights, metrics

pytestmark = pytest.mark.integration

CONFIGS = REPO / "accelerate_configs"
FAULT_SCRIPT = Path(__file__).with_name("inject_rank_fault.py")
# 2-process DDP adds two half-batch gradients where 1 process sums one batch, and oneDNN
# may pick other conv kernels for the smaller batch: the same numbers in a different order,
# so results agree to float rounding, not bit for bit. Adam divides by sqrt(v), which
# magnifies rounding in weights whose gradients are tiny (seen after 20 steps: 1.0e-5 on
# one weight of 9216 with channels-last weights, 5e-8 without; loss within 1e-7 relative).
WEIGHT_ATOL = 1e-4
LOSS_RTOL = 1e-5
PSNR_ATOL_DB = 1e-4
STEPS = 20
# 257 does not divide by 2: evaluation must still count every image exactly once.
VAL_SIZE = "257"
FAILURE_BOUND_S = 150  # a failed job must be over by then; the default --dist-timeout is 600


def launch(accelerate_flags, target, train_flags, timeout=240, background=False):
    """`accelerate launch [flags] -m denoise_dist.train [train flags]` (or a script);
    with background=True, the started Popen instead of the finished result."""
    target_args = ["-m", target] if not target.endswith(".py") else [target]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *accelerate_flags,
           *target_args, *train_flags]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_machine_launch(target, train_flags, timeout):
    """Two `accelerate launch` processes, one per "machine", meeting at 127.0.0.1:port:
    the code path of a multi-node SLURM job. Returns [(returncode, stdout, stderr)]."""
    port = str(free_port())
    machines = [launch(["--config_file", str(CONFIGS / "multi_node.yaml"),
                        "--num_processes", "2", "--num_machines", "2",
                        "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                        "--main_process_port", port], target, train_flags, background=True)
                for rank in (0, 1)]
    try:
        outputs = [m.communicate(timeout=timeout) for m in machines]
    finally:
        for m in machines:
            m.kill()
    return [(m.returncode, out, err) for m, (out, err) in zip(machines, outputs)]


def startup_line(stdout: str) -> str:
    """The main process's one start-up line (exactly one, never wrapped)."""
    lines = [line for line in stdout.splitlines() if line.startswith("distributed=")]
    assert len(lines) == 1, stdout
    return lines[0]


def loss_curve(run_dir):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in metrics(run_dir) if "loss" in r]


def val_curve(run_dir):
    return [(r["step"], r["val_psnr"], r["val_ssim"]) for r in metrics(run_dir)
            if "val_psnr" in r]


def assert_same_training(run_dir, reference):
    curve, expected = loss_curve(run_dir), loss_curve(reference)
    assert [s for s, *_ in curve] == [s for s, *_ in expected] == [5, 10, 15, 20]
    for (_, loss, grad), (_, loss_ref, grad_ref) in zip(curve, expected):
        assert loss == pytest.approx(loss_ref, rel=LOSS_RTOL)
        assert grad == pytest.approx(grad_ref, rel=LOSS_RTOL)
    vals, vals_ref = val_curve(run_dir), val_curve(reference)
    assert [s for s, *_ in vals] == [s for s, *_ in vals_ref] == [10, 20]
    for (_, psnr, ssim), (_, psnr_ref, ssim_ref) in zip(vals, vals_ref):
        assert psnr == pytest.approx(psnr_ref, abs=PSNR_ATOL_DB)
        assert ssim == pytest.approx(ssim_ref, abs=1e-6)
    weights, weights_ref = final_weights(run_dir, STEPS), final_weights(reference, STEPS)
    assert weights.keys() == weights_ref.keys()
    for name in weights:
        torch.testing.assert_close(weights[name], weights_ref[name], atol=WEIGHT_ATOL, rtol=0)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["distributed_type"] == "MULTI_CPU"
    assert summary["global_batch"] == 32 and summary["per_process_batch"] == 16


@pytest.fixture(scope="module")
def one_process_run(mnist_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one_process") / "run"
    result = run_cli("train", *tiny_args(run_dir, "--val-size", VAL_SIZE))
    assert result.returncode == 0, result.stderr
    assert "world_size=1" in result.stdout
    return run_dir


def test_two_processes_train_like_one(one_process_run, tmp_path):
    run_dir = tmp_path / "run"
    result = launch(["--config_file", str(CONFIGS / "cpu_ddp.yaml")], "denoise_dist.train",
                    tiny_args(run_dir, "--val-size", VAL_SIZE))
    assert result.returncode == 0, result.stderr
    line = startup_line(result.stdout)
    assert line.startswith("distributed=MULTI_CPU world_size=2 device=cpu")
    assert line.endswith("precision=fp32 batch=32 global / 16 per process x 1 accumulation")
    assert_same_training(run_dir, one_process_run)


def test_two_machine_launch_trains_like_one_process(one_process_run, tmp_path):
    run_dir = tmp_path / "run"
    machines = two_machine_launch("denoise_dist.train", tiny_args(run_dir, "--val-size", VAL_SIZE),
                                  timeout=240)
    for code, _, err in machines:
        assert code == 0, err
    assert "world_size=2" in startup_line(machines[0][1])
    assert machines[1][1].strip() == ""  # only the main process prints
    assert_same_training(run_dir, one_process_run)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the processes form a group")
def test_processes_that_do_not_form_a_group_are_refused(mnist_root, tmp_path):
    flags = [f for f in tiny_args(tmp_path / "run", "--max-steps", "1") if f != "--cpu"]
    result = launch(["--config_file", str(CONFIGS / "cpu_ddp.yaml")], "denoise_dist.train",
                    flags)
    assert result.returncode != 0
    assert "did not form one process group" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("machines", ["one", "two"])
def test_a_crashing_rank_ends_the_whole_job(mnist_root, tmp_path, machines):
    run_dir = tmp_path / "run"
    script_args = ["raise", "1", "3", *tiny_args(run_dir)]
    if machines == "one":
        result = launch(["--config_file", str(CONFIGS / "cpu_ddp.yaml")], str(FAULT_SCRIPT),
                        script_args, timeout=FAILURE_BOUND_S)
        codes, stderr = [result.returncode], result.stderr
    else:
        outputs = two_machine_launch(str(FAULT_SCRIPT), script_args, timeout=FAILURE_BOUND_S)
        codes, stderr = [c for c, _, _ in outputs], "".join(e for _, _, e in outputs)
    assert all(code != 0 for code in codes)
    assert "injected fault in rank 1 at step 3" in stderr
    assert not (run_dir / "summary.json").exists()


def test_bf16_from_the_launcher_runs_and_converges_on_cpu(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    result = launch(["--config_file", str(CONFIGS / "cpu.yaml"), "--mixed_precision", "bf16"],
                    "denoise_dist.train", tiny_args(run_dir, "--eval-every", "20"))
    assert result.returncode == 0, result.stderr
    assert "precision=bf16" in startup_line(result.stdout)
    losses = [loss for _, loss, _ in loss_curve(run_dir)]
    assert losses[-1] < 0.9 * losses[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["precision"] == "bf16"
    assert summary["val_psnr"] > summary["val_psnr_noisy"] + 2


def test_fp16_on_cpu_warns_and_says_fp32(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train", *tiny_args(run_dir, "--max-steps", "2"),
                     "--mixed-precision", "fp16")
    assert result.returncode == 0, result.stderr
    assert "fp16 is not in effect on cpu; training in fp32" in result.stderr
    assert "precision=fp32" in startup_line(result.stdout)
    assert json.loads((run_dir / "summary.json").read_text())["precision"] == "fp32"
