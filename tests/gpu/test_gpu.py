"""The gpu tier: the paths that only a CUDA GPU runs, run on one. Skipped, with a reason,
on a machine without CUDA (the one skip CI=true allows: CI has no GPU). Run them with
benchmarks/gpu_check.sh on a GPU machine (with its figures), or `pytest -m gpu`.

Uses only what a bare GPU box has (torch, accelerate, safetensors, Pillow): no W&B,
TensorBoard or scikit-image. The real images are MNIST's.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from denoise_dist import data, load_model
from tests.helpers import (
    CONFIGS,
    assert_same_weights,
    final_weights,
    launch,
    loss_curve,
    run_cli,
    startup_line,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (gpu tier)"),
]

STEPS = 60


def gpu_args(run_dir, *extra) -> list[str]:
    """A short GPU run on MNIST: two evaluations, two checkpoints."""
    return ["--output-dir", str(run_dir), "--model", "unet", "--batch-size", "128",
            "--max-steps", str(STEPS), "--eval-every", "30", "--log-every", "10",
            "--checkpoint-every", "30", "--val-size", "1000", "--lr", "1e-3",
            *extra]  # fmt: skip


def assert_complete_run_folder(run_dir) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == STEPS and summary["device"].startswith("cuda")
    assert summary["val_psnr"] > summary["val_psnr_noisy"] + 3
    for name in ["config.json", "metrics.jsonl", "best_model.safetensors", "best_model.json",
                 "figures/samples.png", "figures/curves.png", "figures/samples/step_00000030.png",
                 f"figures/samples/step_{STEPS:08d}.png",
                 f"checkpoints/step_{STEPS:08d}/manifest.json"]:  # fmt: skip
        assert (run_dir / name).is_file(), name
    return summary


@pytest.mark.parametrize("config, extra, precision", [
    ("single_gpu", [], "fp32"),
    ("single_gpu_bf16", [], "bf16"),
    ("single_gpu", ["--mixed-precision", "fp16"], "fp16"),
])  # fmt: skip
def test_the_main_job_completes_on_the_gpu(mnist_root, tmp_path, config, extra, precision):
    run = tmp_path / "run"
    result = launch(["--config_file", str(CONFIGS / f"{config}.yaml")], "denoise_dist.train",
                    gpu_args(run, *extra), timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    line = startup_line(result.stdout)
    assert "device=cuda" in line and f"precision={precision}" in line
    assert assert_complete_run_folder(run)["precision"] == precision


def test_resume_on_the_gpu_is_bit_exact_with_deterministic_algorithms(mnist_root, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    assert run_cli("train", *gpu_args(full, "--deterministic")).returncode == 0
    first = run_cli("train", *gpu_args(split, "--deterministic", "--max-steps", "30"))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli("train", *gpu_args(split, "--deterministic"))
    assert second.returncode == 0 and "at step 30" in second.stdout, second.stderr[-3000:]
    assert_same_weights(final_weights(full, STEPS), final_weights(split, STEPS))
    assert loss_curve(full) == loss_curve(split)


@pytest.fixture(scope="module")
def gpu_run(mnist_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("gpu") / "run"
    result = run_cli("train", *gpu_args(run))
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_evaluate_on_the_gpu_agrees_with_the_cpu(gpu_run, tmp_path):
    reports = {}
    for device, flags in (("gpu", []), ("cpu", ["--cpu"])):
        out = tmp_path / device
        result = run_cli("evaluate", str(gpu_run), "--max-images", "500", "--sigmas", "0.3",
                         "0.5", "--out", str(out), "--baselines", "builtin",
                         *flags)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        reports[device] = json.loads((out / "eval.json").read_text())
    for on_gpu, on_cpu in zip(reports["gpu"]["results"], reports["cpu"]["results"], strict=True):
        assert on_gpu["blur_width"] == on_cpu["blur_width"]
        for method in ("model", "identity", "gaussian_blur", "median3x3"):
            # cuDNN convolutions (TF32 by default) round differently from the CPU's.
            assert on_gpu[method]["psnr"] == pytest.approx(on_cpu[method]["psnr"], abs=0.02)
        assert on_gpu["model"]["psnr"] > on_gpu["median3x3"]["psnr"]


def test_load_model_and_denoise_on_the_gpu(gpu_run, mnist_root, tmp_path):
    model = load_model(gpu_run, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    digits = data.to_float(data.load_split("mnist", mnist_root, "test", download=False)[:400])
    noisy = (digits + 0.5 * torch.randn_like(digits)).clamp(0, 1)
    with torch.no_grad():
        on_gpu = model(noisy.cuda()).cpu()
        on_cpu = load_model(gpu_run)(noisy)
    assert (on_gpu - on_cpu).abs().max() < 0.02
    # A 560 x 560 mosaic of 400 real noisy digits: larger than one tile.
    mosaic = noisy[:, 0].reshape(20, 20, 28, 28).permute(0, 2, 1, 3).reshape(560, 560)
    source = tmp_path / "in" / "mosaic.png"
    source.parent.mkdir()
    Image.fromarray((mosaic.numpy() * 255).round().astype(np.uint8)).save(source)
    outputs = {}
    for name, flags in (("whole", ["--tile-size", "1024"]), ("tiled", ["--tile-size", "128"]),
                        ("cpu", ["--tile-size", "128", "--cpu"])):  # fmt: skip
        result = run_cli(
            "denoise", str(gpu_run), str(source), "--out", str(tmp_path / name), *flags
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = np.asarray(Image.open(tmp_path / name / "mosaic.png"), dtype=np.int64)
    assert np.abs(outputs["whole"] - outputs["tiled"]).max() <= 1
    assert np.abs(outputs["tiled"] - outputs["cpu"]).max() <= 3


def test_more_processes_than_gpus_is_a_one_line_error(mnist_root, tmp_path):
    gpus = torch.cuda.device_count()
    result = launch(["--config_file", str(CONFIGS / "multi_gpu.yaml"),
                     "--num_processes", str(gpus + 1)], "denoise_dist.train",
                    gpu_args(tmp_path / "run", "--max-steps", "2"), timeout=300)  # fmt: skip
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("denoise-dist:")]
    assert ours and all(
        f"started {gpus + 1} processes on this machine but it has {gpus} GPU" in line
        for line in ours
    ), result.stderr[-3000:]
    assert "invalid device ordinal" not in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_compiled_step_follows_the_eager_loss_curve(mnist_root, tmp_path):
    """--compile (CUDA graphs) against eager, the reference: the same batches and noise;
    inductor's fused kernels round differently, so the curves agree to a tolerance."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    # Inductor writes the kernels it generates here: proof that compiling happened.
    kernels = {run: tmp_path / f"inductor-{run.name}" for run in (eager, compiled)}
    env = {run: {"TORCHINDUCTOR_CACHE_DIR": str(kernels[run])} for run in kernels}
    assert run_cli("train", *gpu_args(eager), env=env[eager]).returncode == 0
    result = run_cli("train", *gpu_args(compiled, "--compile"), env=env[compiled], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = {run: json.loads((run / "summary.json").read_text()) for run in kernels}
    assert summaries[compiled]["compiled"] is True and summaries[eager]["compiled"] is False
    assert any(kernels[compiled].rglob("*.py")) and not any(kernels[eager].rglob("*.py"))
    for (step, loss, _), (step_c, loss_c, _) in zip(loss_curve(eager), loss_curve(compiled),
                                                   strict=True):  # fmt: skip
        assert step == step_c and loss_c == pytest.approx(loss, rel=1e-2)
    psnr = [summaries[run]["val_psnr"] for run in (eager, compiled)]
    assert psnr[1] == pytest.approx(psnr[0], abs=0.1)
