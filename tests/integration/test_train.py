"""Real short trainings on the real MNIST, through the CLI, as a user runs them."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from denoise_dist import load_model
from tests.conftest import require, run_cli, tiny_args

pytestmark = pytest.mark.integration


def final_weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_training_beats_the_noisy_input_and_leaves_a_full_run_folder(mnist_root, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", *tiny_args(run, "--max-steps", "40"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_psnr"] > summary["val_psnr_noisy"] + 3
    for name in ["config.json", "metrics.jsonl", "best_model.safetensors", "best_model.json",
                 "figures/samples.png", "figures/curves.png"]:
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["model"]["model"] == "unet"
    steps = [r["step"] for r in metrics(run) if "loss" in r]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 40]
    model = load_model(run)
    assert not model.training
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == x.shape


def test_resume_is_exact(mnist_root, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    assert run_cli("train", *tiny_args(full)).returncode == 0
    first = run_cli("train", *tiny_args(split, "--max-steps", "10"))
    assert first.returncode == 0, first.stderr
    second = run_cli("train", *tiny_args(split))  # --resume auto is the default
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout
    a, b = final_weights(full, 20), final_weights(split, 20)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    loss = lambda run: [(r["step"], r["loss"]) for r in metrics(run) if "loss" in r]
    assert loss(full) == loss(split)  # same curve, and no step logged twice


def test_rerunning_a_finished_run_does_not_train_again(mnist_root, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", *tiny_args(run, "--max-steps", "10")).returncode == 0
    before = (run / "metrics.jsonl").read_text()
    again = run_cli("train", *tiny_args(run, "--max-steps", "10"))
    assert again.returncode == 0, again.stderr
    assert "at step 10" in again.stdout
    assert "already complete at step 10" in again.stdout
    assert (run / "metrics.jsonl").read_text() == before  # nothing trained or logged twice


@pytest.mark.parametrize("flags, message", [
    (["--sigma", "-1"], "sigma must be >= 0"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--model", "nope"], "model must be one of"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, flags, message):
    result = run_cli("train", "--output-dir", str(tmp_path / "r"), *flags)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("train", "--output-dir", str(tmp_path / "r"), "--sigma", "-1", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_missing_data_is_a_clear_error(tmp_path):
    result = run_cli("train", *tiny_args(tmp_path / "r", "--data-dir", str(tmp_path / "none"),
                                         "--no-download"))
    assert result.returncode == 2
    assert "put train-images-idx3-ubyte" in result.stderr and "Traceback" not in result.stderr


def test_a_folder_holding_another_run_is_refused(mnist_root, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", *tiny_args(run, "--max-steps", "5")).returncode == 0
    changed = run_cli("train", *tiny_args(run, "--sigma", "0.3"))
    assert changed.returncode != 0
    assert "sigma: 0.5 -> 0.3" in changed.stderr
    never = run_cli("train", *tiny_args(run, "--resume", "never"))
    assert never.returncode == 2 and "already holds a run" in never.stderr
    assert (run / "checkpoints" / "step_00000005").is_dir()  # nothing lost
    replaced = run_cli("train", *tiny_args(run, "--sigma", "0.3", "--max-steps", "5",
                                           "--overwrite"))
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((run / "config.json").read_text())["noise"]["sigma"] == 0.3


def test_python_dash_m_entry_point(mnist_root, tmp_path):
    result = run_cli(*tiny_args(tmp_path / "r", "--max-steps", "5"), module="denoise_dist.train")
    assert result.returncode == 0, result.stderr
    assert "world_size=1" in result.stdout


FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def test_fashion_mnist_by_name_from_gzipped_idx(tmp_path):
    require(FASHION.is_dir(), "Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
    raw = tmp_path / "data" / "FashionMNIST" / "raw"  # torchvision's layout
    raw.mkdir(parents=True)
    for gz in FASHION.glob("*-ubyte.gz"):
        (raw / gz.name).symlink_to(gz)
    run = tmp_path / "run"
    result = run_cli("train", *tiny_args(run, "--dataset", "fashion_mnist", "--max-steps", "30",
                                         "--data-dir", str(tmp_path / "data"), "--no-download"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_psnr"] > summary["val_psnr_noisy"] + 3
