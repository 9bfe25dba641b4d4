"""The capture-safe step (--cuda-graph) against today's step, on the CPU: bit-equal weights,
EMA, optimizer state and logged values; per-step state only in device tensors; no host
sync in the step's own code."""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import pytest
import torch

from denoise_dist import data
from denoise_dist.config import Config, overlay, validate
from denoise_dist.errors import ConfigError
from denoise_dist.graph_step import CaptureSafeStep
from denoise_dist.models import build_model, model_kwargs
from denoise_dist.optim import EMA, make_optimizer
from denoise_dist.plain_step import TrainStep
from denoise_dist.runtime import check_graphable
from denoise_dist.step import graph_mode, make_train_step

IMAGES = 80  # 5 steps per epoch at batch 16: 12 steps cross two epoch boundaries
BATCH = 16
STEPS = 12


def config(model: str, cuda_graph: bool, **values) -> Config:
    defaults = {
        "model": model,
        "width": 8,
        "batch_size": BATCH,
        "lr": 3e-3,
        "schedule": "cosine",
        "warmup_steps": 3,
        "ema_decay": 0.9,
        "grad_clip": 0.002,  # small enough that steps of both models are clipped
        "weight_decay": 1e-4,
        "cuda_graph": cuda_graph,
    }
    return overlay(Config(), {**defaults, **values}, "test")


def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (IMAGES, 28, 28), dtype=torch.uint8, generator=generator)


def setup(cfg: Config, reset):
    """What train.Run builds for a one-process CPU run, with a small synthetic data set."""
    from accelerate import Accelerator

    reset()
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.model, **model_kwargs(cfg.model.model, cfg.model))
    model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.optim.ema_decay)
    optimizer = make_optimizer(cfg, model, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    sharding = data.Sharding(IMAGES, BATCH, 1, 0, cfg.optim.grad_accum)
    train_set = data.TensorTrainSet(images(), cfg.train.seed)
    step_fn = make_train_step(cfg, accelerator, model, optimizer, ema, train_set, sharding, STEPS)
    model.train()
    return step_fn, model, optimizer, ema


def trained(model_name: str, cuda_graph: bool, reset, steps=STEPS, **values):
    step_fn, model, optimizer, ema = setup(config(model_name, cuda_graph, **values), reset)
    logged = [torch.stack(step_fn(step)) for step in range(steps)]
    return step_fn, model, optimizer, ema, torch.stack(logged)


def assert_same_state(a, b) -> None:
    _, model_a, opt_a, ema_a, logged_a = a
    _, model_b, opt_b, ema_b, logged_b = b
    assert torch.equal(logged_a, logged_b), (logged_a, logged_b)
    for (name, x), (_, y) in zip(
        model_a.state_dict().items(), model_b.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name
    for (name, x), (_, y) in zip(
        ema_a.state_dict().items(), ema_b.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), f"ema {name}"
    state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    for index in state_a:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state_a[index][key], state_b[index][key]), (index, key)


@pytest.mark.parametrize(
    "model_name, values",
    [
        ("unet", {}),
        ("seed_ae", {}),  # dropout keyed per step
        ("unet", {"grad_accum": 2, "loss": "psnr"}),
    ],
)
def test_the_capture_safe_step_equals_todays_step_exactly(model_name, values, fresh_accelerate):
    today = trained(model_name, False, fresh_accelerate, **values)
    safe = trained(model_name, True, fresh_accelerate, **values)
    assert type(today[0]) is TrainStep and type(safe[0]) is CaptureSafeStep
    grad_norms = today[4][:, 1]
    assert (grad_norms > 0.002).any(), "the clip never engaged; the test would not see it"
    assert_same_state(today, safe)


def test_a_step_reads_nothing_from_the_host_between_epoch_starts(fresh_accelerate):
    """What a graph replay does: `run()` again and again, with no per-step host input.
    Within an epoch only the device counter moves the step on."""
    today = trained("seed_ae", False, fresh_accelerate)
    step_fn, model, optimizer, ema = setup(config("seed_ae", True), fresh_accelerate)
    logged = []
    addresses = None
    for step in range(STEPS):
        if step % (IMAGES // BATCH) == 0:  # the host's part: the epoch's tables
            step_fn.prepare(step)
        logged.append(torch.stack(step_fn.run()))
        # Static buffers, as a graph needs: gradients zeroed in place, not freed.
        now = [p.grad.data_ptr() if p.grad is not None else None for p in model.parameters()]
        assert None not in now and (addresses is None or now == addresses)
        addresses = now
    assert int(step_fn.counter) == STEPS
    assert_same_state(today, (step_fn, model, optimizer, ema, torch.stack(logged)))


def test_a_resumed_capture_safe_step_continues_exactly(fresh_accelerate):
    """A new step object (as after a resume) starts its counter and tables mid-epoch."""
    full = trained("unet", True, fresh_accelerate)
    step_fn, model, optimizer, ema, first = trained("unet", True, fresh_accelerate, steps=7)
    saved = (model.state_dict(), optimizer.state_dict(), ema.state_dict())
    step_fn, model, optimizer, ema = setup(config("unet", True), fresh_accelerate)
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    ema.load_state_dict(saved[2])
    # What train does: the step is built after the resume (the groups' lr is re-bound).
    step_fn = CaptureSafeStep(
        step_fn.cfg, step_fn.accelerator, model, optimizer, ema,
        step_fn.train_set, step_fn.sharding, STEPS,
    )  # fmt: skip
    rest = torch.stack([torch.stack(step_fn(step)) for step in range(7, STEPS)])
    assert_same_state(full, (step_fn, model, optimizer, ema, torch.cat([first, rest])))


SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
REAL = {name: getattr(torch.Tensor, name) for name in SYNCS}


@contextmanager
def host_syncs_fail():
    """Every Python-level way to read a tensor's value on the host raises."""

    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"host sync in the step: Tensor.{name}")

        return method

    with mock.patch.multiple(torch.Tensor, **{name: refuse(name) for name in SYNCS}):
        yield


def unchecked(function):
    """`function` run with the real Tensor methods, inside `host_syncs_fail`."""

    def call(*args, **kwargs):
        with mock.patch.multiple(torch.Tensor, **REAL):
            return function(*args, **kwargs)

    return call


def test_the_capture_safe_step_calls_no_host_sync(fresh_accelerate):
    """On the CPU, CUDA's sync debug mode cannot run; so every Python-level read of a
    tensor's value raises during `run()`. The one exception is Adam: its CPU per-tensor
    path reads its step count with `.item()`; CUDA runs the capturable fused Adam
    (`make_optimizer`), which tests/gpu/test_cuda_graph.py checks under the real sync
    debug mode. Syncs from inside C++ ops are beyond this check, and that test's too."""
    step_fn, model, optimizer, ema = setup(config("seed_ae", True), fresh_accelerate)
    step_fn.prepare(0)
    step_fn.run()  # the first step creates Adam's state and the gradients
    with host_syncs_fail():
        with pytest.raises(AssertionError, match="host sync"):
            bool(torch.ones(()))  # the check itself works
        with mock.patch.object(optimizer, "step", unchecked(optimizer.step)):
            for _ in range(3):
                step_fn.run()
    assert int(step_fn.counter) == 4


def test_on_cuda_adam_is_fused_and_capturable_only_with_the_flag():
    model = torch.nn.Linear(2, 2)
    cuda = torch.device("cuda")
    graphed = make_optimizer(config("unet", True), model, cuda).defaults
    plain = make_optimizer(config("unet", False), model, cuda).defaults
    cpu = make_optimizer(config("unet", True), model, torch.device("cpu")).defaults
    assert graphed["fused"] and graphed["capturable"]
    assert plain["fused"] and not plain["capturable"]
    assert not cpu["fused"] and not cpu["capturable"]


def test_multi_process_and_fp16_runs_refuse_the_flag_in_one_line():
    with pytest.raises(ConfigError, match="one process only, not 2.*--compile"):
        check_graphable(2, loss_scaler=False)
    with pytest.raises(ConfigError, match="fp16"):
        check_graphable(1, loss_scaler=True)
    check_graphable(1, loss_scaler=False)


def test_the_flag_is_off_by_default_and_refuses_folders():
    assert Config().train.cuda_graph is False
    cfg = overlay(Config(), {"dataset": "folder", "data_dir": "x", "cuda_graph": True}, "test")
    with pytest.raises(ConfigError, match="--cuda-graph supports MNIST-style datasets only"):
        validate(cfg)


def test_the_start_line_says_what_runs():
    assert graph_mode(config("unet", False), torch.device("cuda")) == "no"
    assert "never yet run on a GPU" in graph_mode(config("unet", True), torch.device("cuda"))
    assert "eagerly" in graph_mode(config("unet", True), torch.device("cpu"))


def test_a_run_may_resume_with_or_without_the_flag(tmp_path):
    """Both steps train alike (bit-equal on a CPU), so the flag may change on resume."""
    from denoise_dist.checkpoint import check_compatible

    check_compatible(config("unet", False), config("unet", True), tmp_path)
    check_compatible(config("unet", True), config("unet", False), tmp_path)
