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
from collections.abc import Callable
from contextlib import nullcontext

import torch

from denoise_dist import data, noise, rng
from denoise_dist.config import Config
from denoise_dist.errors import ConfigError
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


class CaptureSafeStep(TrainStep):
    """`TrainStep`'s arithmetic with nothing that changes between steps on the host:
    what --cuda-graph captures, and what it runs eagerly where there is no CUDA.

    The step counter, the learning rate, the epoch's permutation, the noise and dropout
    keys and the EMA weight are device tensors updated in place. The per-step values
    (learning rate, keys, EMA weight) come from tables of one epoch, which the host fills
    with `lr_at`, `rng.key` and the EMA's decay when an epoch starts, outside any graph,
    and the step reads at `counter % steps_per_epoch`. Tables, not device arithmetic:
    the keys are SHA-256 hashes, and a cosine computed on the device can differ from
    Python's in the last bit, so the tables keep every value exactly what `TrainStep`
    uses. Gradients are zeroed in place (static buffers for a graph), the clip never asks
    whether the norm is finite, and the EMA is one `_foreach_lerp_` with a tensor weight.

    `prepare(step)` is the host part (start the counter, refill the tables at an epoch
    start); `run()` is the device part, which calls no `.item()`, `float()` or `bool()`
    on a tensor. On a CPU, Adam's per-tensor path reads its step and learning rate with
    `.item()`: harmless there (no device to wait for), and CUDA uses the capturable
    fused Adam instead (`make_optimizer`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.train_set, data.TensorTrainSet):
            raise ConfigError("--cuda-graph supports MNIST-style datasets only, not folders")
        device = self.accelerator.device
        spe = self.sharding.steps_per_epoch
        # The CPU's per-tensor Adam divides the learning rate in float64 (as a Python
        # float would): bit-equal to TrainStep. CUDA's fused Adam reads a tensor learning
        # rate as float32 but a Python float as a double, so there the step size can
        # differ from TrainStep's in its last bit (graphed and eager stay bit-equal).
        self.lr_dtype = torch.float64 if device.type == "cpu" else torch.float32
        self.counter = torch.zeros((), dtype=torch.int64, device=device)
        self.lr = torch.zeros((), dtype=self.lr_dtype, device=device)
        self.perm = torch.zeros(self.train_set.num_examples, dtype=torch.int64, device=device)
        self.lrs = torch.zeros(spe, dtype=self.lr_dtype, device=device)
        self.noise_keys = torch.zeros(spe, 2, dtype=torch.int64, device=device)
        self.dropout_keys = torch.zeros(spe, 2, dtype=torch.int64, device=device)
        self.ema_weights = torch.zeros(spe, dtype=torch.float32, device=device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr  # after any resume: load_state_dict replaces the groups
        self.params: list[torch.Tensor] = list(self.module.parameters())
        if self.ema is not None:
            self.ema_params: list[torch.Tensor] = list(self.ema.model.parameters())
            self.ema_buffers = list(
                zip(self.ema.model.buffers(), self.module.buffers(), strict=True)
            )
        self.started = False
        self.tables_epoch: int | None = None
        self.host_tables: list[torch.Tensor] = []  # pinned sources of in-flight copies

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.prepare(step)
        return self.run()

    def prepare(self, step: int) -> None:
        """The host's part of step `step`: outside the step, outside any graph."""
        if not self.started:  # a fresh start or a resume: where the counter begins
            self.counter.fill_(step)
            self.started = True
        epoch = step // self.sharding.steps_per_epoch
        if epoch != self.tables_epoch:
            self.load_epoch(epoch)

    def load_epoch(self, epoch: int) -> None:
        cfg, spe = self.cfg, self.sharding.steps_per_epoch
        seed = cfg.train.seed
        steps = range(epoch * spe, (epoch + 1) * spe)
        decay = cfg.optim.ema_decay
        host = {
            # The permutation TensorTrainSet draws, on the CPU as it does.
            "perm": data.epoch_permutation(self.train_set.num_examples, seed, epoch),
            "lrs": torch.tensor([lr_at(s, cfg, self.total) for s in steps], dtype=torch.float64),
            "noise_keys": torch.stack([rng.key("train-noise", seed, epoch, s) for s in steps]),
            "dropout_keys": torch.stack([rng.key("dropout", seed, s) for s in steps]),
            # EMA.update's weight 1 - decay, rounded to float32 as its scalar would be.
            "ema_weights": torch.tensor(
                [1 - min(decay, (1 + s) / (10 + s)) for s in steps], dtype=torch.float64
            ),
        }
        pin = self.counter.device.type == "cuda"
        self.host_tables = []
        for name, values in host.items():
            target: torch.Tensor = getattr(self, name)
            values = values.to(target.dtype)
            if pin:  # an asynchronous copy, ordered on the stream before the next step
                values = values.pin_memory()
            self.host_tables.append(values)
            target.copy_(values, non_blocking=pin)
        self.tables_epoch = epoch

    def run(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step from device state only (what a CUDA graph captures)."""
        cfg, accelerator, model = self.cfg, self.accelerator, self.model
        at = (self.counter % self.sharding.steps_per_epoch).view(1)  # index tensors, no sync
        self.lr.copy_(self.lrs.index_select(0, at)[0])
        noise_key = self.noise_keys.index_select(0, at)[0]
        dropout_key = self.dropout_keys.index_select(0, at)[0]
        first_row = at * self.sharding.global_batch
        step_loss = torch.zeros((), device=accelerator.device)
        for micro, rows in enumerate(self.rows):
            clean = data.to_float(self.train_set.images[self.perm[first_row + rows]])
            noisy = self.add_noise(
                self.noise_name, clean, noise.Draw(noise_key, rows), self.noise_params
            )
            last = micro == len(self.rows) - 1
            with nullcontext() if last else accelerator.no_sync(model):
                if self.takes_draw:
                    out = model(noisy, noise.Draw(dropout_key, rows))
                else:
                    out = model(noisy)
                mse = (out.float() - clean).pow(2).flatten(1).mean(1)
                accelerator.backward(self.objective(mse) / len(self.rows))
            step_loss += mse.detach().mean() / len(self.rows)
        # torch's clip_grad_norm_ scales by min(1, max_norm / norm) without a host check.
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)  # static gradient buffers
        if self.ema is not None:
            weight = self.ema_weights.index_select(0, at)[0]
            torch._foreach_lerp_(self.ema_params, self.params, [weight] * len(self.params))
            for kept, current in self.ema_buffers:
                kept.copy_(current)
        self.counter += 1
        return step_loss, grad_norm.float()


class GraphedStep:
    """--cuda-graph on CUDA: the capture-safe step, captured once as one CUDA graph and
    replayed for every later step. NEVER YET RUN ON A GPU (tests/gpu/test_cuda_graph.py
    is the check it awaits); off by default.

    The first `warmup_steps` steps run eagerly on a side stream (cuDNN and cuBLAS choose
    their algorithms, Adam creates its state, autograd the gradient buffers): real
    training steps, the same arithmetic the graph replays. Then one capture, and a
    replay per step. The host's part (`prepare`: the counter at a start or resume, the
    tables at an epoch start) runs before each replay, on the same stream. The loss and
    gradient norm are the graph's static outputs, copied per step (the loop keeps them
    on the device and reads a window at log steps only)."""

    def __init__(self, step: CaptureSafeStep, warmup_steps: int = 3):
        self.step, self.warmup_steps, self.warmed = step, warmup_steps, 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.side = torch.cuda.Stream()

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.step.prepare(step)
        if self.graph is None and self.warmed < self.warmup_steps:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                loss, grad_norm = self.step.run()
            torch.cuda.current_stream().wait_stream(self.side)
            self.warmed += 1
            return loss, grad_norm
        if self.graph is None:
            self.capture()
        assert self.graph is not None and self.outputs is not None
        self.graph.replay()
        loss, grad_norm = self.outputs
        return loss.clone(), grad_norm.clone()

    def capture(self) -> None:
        torch.cuda.synchronize()  # once: the warm-up and the tables' copies are done
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self.step.run()


StepFunction = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def make_train_step(cfg: Config, *args, **kwargs) -> StepFunction:
    """The step `train` runs: `TrainStep`; with --cuda-graph the capture-safe step, graphed
    on CUDA, run eagerly elsewhere."""
    if not cfg.train.cuda_graph:
        return TrainStep(cfg, *args, **kwargs)
    step = CaptureSafeStep(cfg, *args, **kwargs)
    return GraphedStep(step) if step.accelerator.device.type == "cuda" else step


def graph_mode(cfg: Config, device: torch.device) -> str:
    """How the step runs, for the start line."""
    if not cfg.train.cuda_graph:
        return "no"
    if device.type == "cuda":
        return "yes (experimental: never yet run on a GPU)"
    return f"no (capture-safe step run eagerly: no CUDA on {device.type})"
