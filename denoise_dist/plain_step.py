"""The plain training step, `TrainStep`: what `step.make_train_step` gives `train` unless
--cuda-graph (then `graph_step`'s capture-safe step, which shares its body). It knows
nothing of run folders, checkpoints or trackers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch

from denoise_dist import data, noise, rng
from denoise_dist.config import Config
from denoise_dist.models import MODELS
from denoise_dist.optim import EMA, LOSSES, lr_at

DROPOUT_KEY = "dropout"  # dropout masks are keyed like the noise, on their own key

# A micro-batch's rows -> its clean images, their noise draw, and the dropout key (None
# for models that take no draw).
MicroBatch = Callable[[torch.Tensor], tuple[torch.Tensor, noise.Draw, torch.Tensor | None]]


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
        seed = self.cfg.train.seed
        epoch = step // self.sharding.steps_per_epoch
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.cfg, self.total)

        def micro_batch(rows: torch.Tensor):
            clean = self.train_set.batch(step, rows, self.sharding)
            dropout_key = None
            if self.takes_draw:
                dropout_key = rng.key(DROPOUT_KEY, seed, step, device=rows.device)
            return clean, noise.train_draw(seed, epoch, step, rows), dropout_key

        step_loss, grad_norm = self.optimize(micro_batch, set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.module, step)
        return step_loss, grad_norm

    def optimize(
        self, micro_batch: MicroBatch, set_to_none: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What every step does with its micro-batches: noise, forward, loss and backward
        (gradients synchronised on the last only), then clip, the optimizer's step and
        zeroed gradients. Returns the step's mean MSE and the gradient norm before the clip."""
        accelerator, model = self.accelerator, self.model
        step_loss = torch.zeros((), device=accelerator.device)
        for micro, rows in enumerate(self.rows):
            clean, draw, dropout_key = micro_batch(rows)
            noisy = self.add_noise(self.noise_name, clean, draw, self.noise_params)
            last = micro == len(self.rows) - 1
            with nullcontext() if last else accelerator.no_sync(model):
                if dropout_key is not None:
                    out = model(noisy, noise.Draw(dropout_key, rows))
                else:
                    out = model(noisy)
                mse = (out.float() - clean).pow(2).flatten(1).mean(1)  # per image
                accelerator.backward(self.objective(mse) / len(self.rows))
            step_loss += mse.detach().mean() / len(self.rows)
        # torch's clip_grad_norm_ scales by min(1, max_norm / norm) without a host check.
        grad_norm = accelerator.clip_grad_norm_(
            model.parameters(), self.cfg.optim.grad_clip or math.inf
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=set_to_none)
        return step_loss, grad_norm.float()
