"""The training step: `TrainStep`, one optimizer step per call, and what it uses (the
loss table, the learning-rate schedule, the EMA, the optimizer). `train` calls it; it
knows nothing of run folders, checkpoints or trackers.

One call gathers this rank's rows of the step's global batch, draws their noise, and runs
forward, loss, backward, clip, the optimizer and the EMA, returning device tensors with
no host sync: the seam where a faster step (`--compile`) plugs in.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import torch

from denoise_dist import data, noise, rng
from denoise_dist.config import Config
from denoise_dist.models import MODELS

# What training minimises, from each image's MSE. `psnr` is minus the mean per-image PSNR
# (the validation metric): every image's decibels weigh alike, so a blind model's
# low-noise images are not drowned by its high-noise ones. Logged `loss` is the MSE.
LOSSES = {
    "mse": lambda mse: mse.mean(),
    "psnr": lambda mse: 10 * torch.log10(mse + 1e-8).mean(),
}


def lr_at(step: int, cfg: Config, total: int) -> float:
    o = cfg.optim
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
    decay = 0.5 * (1 + math.cos(math.pi * step / total)) if o.schedule == "cosine" else 1.0
    return o.lr * warm * decay


class EMA:
    """An exponential moving average of the weights, warmed up as in TensorFlow's: the
    decay at update t is min(decay, (1 + t) / (10 + t)), so early averages are not
    dominated by the random initial weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        averaged: list[torch.Tensor] = list(self.model.parameters())
        torch._foreach_lerp_(averaged, list(model.parameters()), 1 - decay)
        for kept, current in zip(self.model.buffers(), model.buffers(), strict=True):
            kept.copy_(current)  # buffers (none in our models) follow the live model

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


class TrainStep:
    """One optimizer step as one call: `loss, grad_norm = step_fn(step)`.

    Gathers this rank's rows of the step's global batch, draws their noise, and runs
    forward, loss, backward (gradients synchronised on the last micro-batch only), clip,
    the optimizer and the EMA. Returns device tensors: nothing here waits for the device.
    Compiled (--compile; by default on long CUDA runs), the noise draw and the model run
    through torch.compile (CUDA graphs on a GPU)."""

    def __init__(
        self,
        cfg: Config,
        accelerator,
        model,
        optimizer,
        ema: EMA | None,
        train_set,
        sharding: data.Sharding,
        total: int,
        compiled: bool = False,
    ):
        self.cfg, self.accelerator, self.model, self.optimizer = cfg, accelerator, model, optimizer
        self.ema, self.train_set, self.sharding, self.total = ema, train_set, sharding, total
        device = accelerator.device
        self.rows = [sharding.rows(m, device) for m in range(cfg.optim.grad_accum)]
        # The plain module under DDP and torch.compile, for the EMA (same parameters).
        self.module = accelerator.unwrap_model(model, keep_torch_compile=False)
        self.noise_name = cfg.noise.noise
        self.noise_params = noise.params_of(cfg.noise.noise, cfg.noise)
        self.takes_draw = MODELS[cfg.model.model].takes_draw
        self.objective = LOSSES[cfg.optim.loss]
        self.add_noise = noise.add_noise
        if compiled:  # the model was compiled by train (runtime.compile_model)
            self.add_noise = torch.compile(noise.add_noise, dynamic=False)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, accelerator, model = self.cfg, self.accelerator, self.model
        epoch = step // self.sharding.steps_per_epoch
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg, self.total)
        step_loss = torch.zeros((), device=accelerator.device)
        for micro, rows in enumerate(self.rows):
            clean = self.train_set.batch(step, rows, self.sharding)
            draw = noise.train_draw(cfg.train.seed, epoch, step, rows)
            noisy = self.add_noise(self.noise_name, clean, draw, self.noise_params)
            last = micro == len(self.rows) - 1
            with nullcontext() if last else accelerator.no_sync(model):
                if self.takes_draw:  # dropout masks keyed like the noise, on their own key
                    key = rng.key("dropout", cfg.train.seed, step, device=rows.device)
                    out = model(noisy, noise.Draw(key, rows))
                else:
                    out = model(noisy)
                mse = (out.float() - clean).pow(2).flatten(1).mean(1)  # per image
                accelerator.backward(self.objective(mse) / len(self.rows))
            step_loss += mse.detach().mean() / len(self.rows)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.module, step)
        return step_loss, grad_norm.float()


def make_optimizer(cfg: Config, model, device: torch.device) -> torch.optim.Optimizer:
    # The fused CUDA kernel is one launch per step instead of one per tensor group.
    fused = True if device.type == "cuda" else None
    return torch.optim.Adam(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=fused
    )
