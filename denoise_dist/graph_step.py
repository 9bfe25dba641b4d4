"""--cuda-graph: `CaptureSafeStep`, the plain step's arithmetic with no per-step host
input, and `GraphedStep`, which captures it once as a CUDA graph and replays it. Off by
default, and NEVER YET RUN ON A GPU (tests/gpu/test_cuda_graph.py is the check it awaits).
"""

from __future__ import annotations

import torch

from denoise_dist import data, noise, rng
from denoise_dist.errors import ConfigError
from denoise_dist.optim import ema_decay, lr_at
from denoise_dist.plain_step import DROPOUT_KEY, TrainStep


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
    fused Adam instead (`optim.make_optimizer`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.train_set, data.TensorTrainSet):
            raise ConfigError("--cuda-graph supports MNIST-style datasets only, not folders")
        device = self.accelerator.device
        steps_per_epoch = self.sharding.steps_per_epoch
        # The CPU's per-tensor Adam divides the learning rate in float64 (as a Python
        # float would): bit-equal to TrainStep. CUDA's fused Adam reads a tensor learning
        # rate as float32 but a Python float as a double, so there the step size can
        # differ from TrainStep's in its last bit (graphed and eager stay bit-equal).
        self.lr_dtype = torch.float64 if device.type == "cpu" else torch.float32
        self.counter = torch.zeros((), dtype=torch.int64, device=device)
        self.lr = torch.zeros((), dtype=self.lr_dtype, device=device)
        self.perm = torch.zeros(self.train_set.num_examples, dtype=torch.int64, device=device)
        self.lrs = torch.zeros(steps_per_epoch, dtype=self.lr_dtype, device=device)
        self.noise_keys = torch.zeros(steps_per_epoch, 2, dtype=torch.int64, device=device)
        self.dropout_keys = torch.zeros(steps_per_epoch, 2, dtype=torch.int64, device=device)
        self.ema_weights = torch.zeros(steps_per_epoch, dtype=torch.float32, device=device)
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
        cfg, steps_per_epoch = self.cfg, self.sharding.steps_per_epoch
        seed, decay = cfg.train.seed, cfg.optim.ema_decay
        steps = range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        host = {
            # The permutation TensorTrainSet draws, on the CPU as it does.
            "perm": data.epoch_permutation(self.train_set.num_examples, seed, epoch),
            "lrs": torch.tensor([lr_at(s, cfg, self.total) for s in steps], dtype=torch.float64),
            "noise_keys": torch.stack(
                [rng.key(noise.TRAIN_NOISE_KEY, seed, epoch, s) for s in steps]
            ),
            "dropout_keys": torch.stack([rng.key(DROPOUT_KEY, seed, s) for s in steps]),
            # EMA.update's weight 1 - decay, rounded to float32 as its scalar would be.
            "ema_weights": torch.tensor(
                [1 - ema_decay(decay, s) for s in steps], dtype=torch.float64
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
        # Index tensors, not Python ints: reading the counter would sync.
        step_in_epoch = (self.counter % self.sharding.steps_per_epoch).view(1)
        self.lr.copy_(self.lrs.index_select(0, step_in_epoch)[0])
        noise_key = self.noise_keys.index_select(0, step_in_epoch)[0]
        dropout_key = self.dropout_keys.index_select(0, step_in_epoch)[0]
        first_row = step_in_epoch * self.sharding.global_batch

        def micro_batch(rows: torch.Tensor):
            clean = data.to_float(self.train_set.images[self.perm[first_row + rows]])
            return clean, noise.Draw(noise_key, rows), dropout_key if self.takes_draw else None

        step_loss, grad_norm = self.optimize(micro_batch, set_to_none=False)  # static buffers
        if self.ema is not None:
            weight = self.ema_weights.index_select(0, step_in_epoch)[0]
            torch._foreach_lerp_(self.ema_params, self.params, [weight] * len(self.params))
            for kept, current in self.ema_buffers:
                kept.copy_(current)
        self.counter += 1
        return step_loss, grad_norm


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
