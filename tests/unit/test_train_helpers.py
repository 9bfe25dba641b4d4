import math

import pytest
import torch

from denoise_dist.checkpoint import check_length
from denoise_dist.config import Config, overlay
from denoise_dist.errors import CheckpointError, ConfigError, TrainingDiverged
from denoise_dist.optim import EMA, lr_at
from denoise_dist.train import (
    check_finite,
    compile_decision,
    resolve_output_dir,
    restarted,
    total_steps,
)


def config(**values) -> Config:
    return overlay(Config(), values, "test")


def test_constant_schedule_is_the_learning_rate():
    cfg = config(lr=0.01)
    assert [lr_at(s, cfg, 100) for s in (0, 50, 99)] == [0.01] * 3


def test_warmup_then_cosine():
    cfg = config(lr=0.01, schedule="cosine", warmup_steps=10)
    assert lr_at(0, cfg, 100) == pytest.approx(0.001)  # 1/10 of the way up
    assert lr_at(9, cfg, 100) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 0.09)))
    assert lr_at(50, cfg, 100) == pytest.approx(0.005)  # half way down the cosine
    assert lr_at(99, cfg, 100) < 1e-5


def test_total_steps_from_epochs_or_max_steps():
    assert total_steps(config(epochs=2.5), steps_per_epoch=10) == 25
    assert total_steps(config(epochs=2.5, max_steps=7), steps_per_epoch=10) == 7


def test_check_finite_names_the_first_bad_step(tmp_path):
    check_finite([0.1, 0.2], last_step=10, run_dir=tmp_path)  # all finite: no error
    with pytest.raises(
        TrainingDiverged, match="loss became nan at step 9; last good checkpoint: none"
    ):
        check_finite([0.1, float("nan"), float("inf")], last_step=10, run_dir=tmp_path)


def test_check_finite_also_checks_the_gradient_norm(tmp_path):
    check_finite([0.1, 0.2], last_step=10, run_dir=tmp_path, grad_norms=[1.0, 2.0])
    with pytest.raises(TrainingDiverged, match="gradient norm became inf at step 10"):
        check_finite([0.1, 0.2], last_step=10, run_dir=tmp_path, grad_norms=[1.0, math.inf])


def test_compiling_with_gradient_accumulation_on_a_gpu_is_refused_or_not_chosen():
    """CUDA-graph trees cannot accumulate gradients (no GPU here: the decision alone)."""
    gpu, cpu, long_run = torch.device("cuda"), torch.device("cpu"), 5000
    with pytest.raises(ConfigError, match="--compile with --grad-accum 2 on a GPU"):
        compile_decision(config(compile=True, grad_accum=2), gpu, long_run)
    assert not compile_decision(config(grad_accum=2), gpu, long_run)  # the default: off
    assert compile_decision(config(grad_accum=1), gpu, long_run)  # the default: on
    assert compile_decision(config(compile=True, grad_accum=2), cpu, long_run)  # no graphs


def test_a_restarted_job_is_recognised():
    assert not restarted({})
    assert not restarted({"SLURM_RESTART_COUNT": "0"})
    assert restarted({"SLURM_RESTART_COUNT": "1"})
    assert restarted({"TORCHELASTIC_RESTART_COUNT": "2"})


def test_sweep_trials_get_a_folder_each_and_an_explicit_folder_wins():
    cfg = config()
    resolve_output_dir(cfg, {})
    assert cfg.train.output_dir == "runs/default"
    trial = config()
    resolve_output_dir(trial, {"WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "r42"})
    assert trial.train.output_dir == "runs/sweep-sw1/r42"
    mine = config(output_dir="runs/mine")
    resolve_output_dir(mine, {"WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "r42"})
    assert mine.train.output_dir == "runs/mine"


def test_changing_the_length_of_a_cosine_run_is_refused_naming_the_field(tmp_path):
    saved = config(schedule="cosine", max_steps=100)
    check_length(saved, 100, config(schedule="cosine", max_steps=100), 100, tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"started for 100 steps; --max-steps now asks "
        r"for 200, and its cosine",
    ):
        check_length(saved, 100, config(schedule="cosine", max_steps=200), 200, tmp_path)
    epochs = config(schedule="cosine", epochs=1.0)
    with pytest.raises(CheckpointError, match="--epochs now asks for 780"):
        check_length(epochs, 390, config(schedule="cosine", epochs=2.0), 780, tmp_path)
    # A constant schedule does not depend on the length: extending it is exact.
    check_length(config(max_steps=100), 100, config(max_steps=200), 200, tmp_path)


def test_ema_warms_up_then_averages():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=0)  # decay min(0.9, 1/10) = 0.1: mostly the new weights
    assert ema.model.weight.item() == pytest.approx(0.9)
    for step in range(1, 200):
        ema.update(model, step)
    assert ema.model.weight.item() == pytest.approx(1.0, abs=1e-6)
    assert not ema.model.weight.requires_grad


def test_the_psnr_objective_is_minus_the_mean_per_image_psnr():
    from denoise_dist.config import validate
    from denoise_dist.metrics import psnr
    from denoise_dist.optim import LOSSES

    for name in LOSSES:  # --loss accepts exactly the table's keys
        validate(config(loss=name))
    with pytest.raises(ConfigError, match="loss must be one of mse, psnr; got 'l1'"):
        validate(config(loss="l1"))
    clean = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    pred = clean + 0.05 * torch.arange(1, 7).view(6, 1, 1, 1) * torch.randn(clean.shape)
    mse = (pred - clean).pow(2).flatten(1).mean(1)
    assert LOSSES["psnr"](mse).item() == pytest.approx(-psnr(pred, clean).mean().item(), rel=1e-5)
    assert LOSSES["mse"](mse).item() == pytest.approx(((pred - clean) ** 2).mean().item())
