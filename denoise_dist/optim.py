"""What an optimizer step reads: the losses, the learning-rate schedules, the EMA of the
weights and the optimizer. Config checks its choices against these tables' keys, so this
module imports no config at run time.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from denoise_dist.config import Config

# What training minimises, from each image's MSE. `psnr` is minus the mean per-image PSNR
# (the validation metric): every image's decibels weigh alike, so a blind model's
# low-noise images are not drowned by its high-noise ones. Logged `loss` is the MSE.
LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mse": lambda mse: mse.mean(),
    "psnr": lambda mse: 10 * torch.log10(mse + 1e-8).mean(),
}

# The learning rate's factor at `step` of `total` steps (times the warmup's).
SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda step, total: 1.0,
    "cosine": lambda step, total: 0.5 * (1 + math.cos(math.pi * step / total)),
}


def lr_at(step: int, cfg: Config, total: int) -> float:
    optim = cfg.optim
    warm = min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps else 1.0
    return optim.lr * warm * SCHEDULES[optim.schedule](step, total)


def ema_decay(decay: float, step: int) -> float:
    """The EMA's decay at update `step`, warmed up as in TensorFlow's: early averages are
    not dominated by the random initial weights."""
    return min(decay, (1 + step) / (10 + step))


class EMA:
    """An exponential moving average of the weights, with the decay of `ema_decay`."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        averaged: list[torch.Tensor] = list(self.model.parameters())
        weight = 1 - ema_decay(self.decay, step)
        torch._foreach_lerp_(averaged, list(model.parameters()), weight)
        for kept, current in zip(self.model.buffers(), model.buffers(), strict=True):
            kept.copy_(current)  # buffers (none in our models) follow the live model

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def make_optimizer(cfg: Config, model, device: torch.device) -> torch.optim.Optimizer:
    """Adam. On CUDA the fused kernel (one launch per step instead of one per tensor
    group); with --cuda-graph also `capturable`, so its step counts and learning rate
    stay on the device. On a CPU the per-tensor Adam of every run: CPU fused Adam rounds
    differently (measured: 2e-10 after 20 steps) and capturable is CUDA-only."""
    cuda = device.type == "cuda"
    return torch.optim.Adam(
        model.parameters(),
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        fused=True if cuda else None,
        capturable=cuda and cfg.train.cuda_graph,
    )
