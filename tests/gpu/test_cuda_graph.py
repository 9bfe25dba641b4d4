"""--cuda-graph on a real GPU: the graphed step against the same step run eagerly (and
against today's step), no host sync while replaying, and exact resume through the CLI.

Written without a GPU at hand: none of it has run yet. Skipped without CUDA (gpu tier).
"""

import os
import shutil

import pytest
import torch

from denoise_dist import data
from denoise_dist.graph_step import CaptureSafeStep, GraphedStep
from denoise_dist.models import build_model, model_kwargs
from denoise_dist.optim import EMA, make_optimizer
from denoise_dist.plain_step import TrainStep
from tests.helpers import assert_same_weights, final_weights, loss_curve, run_cli, startup_line
from tests.unit.test_step_capture import BATCH, IMAGES, STEPS, config, images

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (gpu tier)"),
]

WARMUP = 3  # GraphedStep's default: steps 0-2 eager, captured at step 3


@pytest.fixture
def deterministic():
    """Same kernels, same order: the graphed and eager runs can then agree bit for bit."""
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.benchmark = before[1]


def setup(kind: str, model_name: str, reset):
    """`kind`: today (TrainStep), eager (CaptureSafeStep on CUDA), graphed (GraphedStep)."""
    from accelerate import Accelerator

    reset()
    cfg = config(model_name, kind != "today")
    accelerator = Accelerator()
    assert accelerator.device.type == "cuda"
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.model, **model_kwargs(cfg.model.model, cfg.model))
    model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.optim.ema_decay)
    ema.model.to(accelerator.device)
    optimizer = make_optimizer(cfg, model, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    sharding = data.Sharding(IMAGES, BATCH, 1, 0, cfg.optim.grad_accum)
    train_set = data.TensorTrainSet(images().to(accelerator.device), cfg.train.seed)
    args = (cfg, accelerator, model, optimizer, ema, train_set, sharding, STEPS)
    step_fn = TrainStep(*args) if kind == "today" else CaptureSafeStep(*args)
    if kind == "graphed":
        step_fn = GraphedStep(step_fn, warmup_steps=WARMUP)
    model.train()
    return step_fn, model, ema


def train(kind, model_name, reset, sync_check_from=None):
    """STEPS steps; from step `sync_check_from` on, any host sync raises."""
    step_fn, model, ema = setup(kind, model_name, reset)
    logged = []
    try:
        for step in range(STEPS):
            if step == sync_check_from:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            logged.append(torch.stack(step_fn(step)))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return model.state_dict(), ema.state_dict(), torch.stack(logged).cpu()


@pytest.mark.parametrize("model_name", ["unet", "seed_ae"])
def test_the_graphed_step_equals_the_same_step_run_eagerly(
    model_name, deterministic, fresh_accelerate
):
    eager = train("eager", model_name, fresh_accelerate)
    # Replays from step WARMUP + 1 on run under the sync debug mode, across the epoch
    # starts at steps 5 and 10 (their tables are copied from pinned memory).
    graphed = train("graphed", model_name, fresh_accelerate, sync_check_from=WARMUP + 1)
    for a, b in zip(eager, graphed, strict=True):
        if isinstance(a, dict):
            assert_same_weights(a, b)
        else:
            assert torch.equal(a, b), (a, b)


@pytest.mark.parametrize("model_name", ["unet", "seed_ae"])
def test_the_capture_safe_step_on_cuda_follows_todays_step(
    model_name, deterministic, fresh_accelerate
):
    """Close, not bit-equal, by design of torch's fused CUDA Adam: a Python-float learning
    rate reaches its kernel as a double (step size = float(lr / bias correction)), a
    tensor one as a float32 (float(double(float32(lr)) / bias correction)), so the step
    size can differ in its last bit (6e-8 relative). The tolerance allows that to grow
    over 12 steps; a real defect (a wrong key, table or step count) is far larger."""
    today = train("today", model_name, fresh_accelerate)
    eager = train("eager", model_name, fresh_accelerate)
    for a, b in zip(today, eager, strict=True):
        pairs = [(a[k], b[k]) for k in a] if isinstance(a, dict) else [(a, b)]
        for x, y in pairs:
            torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6)


GPU_ARGS = ["--model", "unet", "--batch-size", "128", "--max-steps", "60", "--eval-every",
            "30", "--log-every", "10", "--checkpoint-every", "30", "--val-size", "1000",
            "--lr", "1e-3", "--ema-decay", "0.99", "--schedule", "cosine", "--warmup-steps",
            "10", "--deterministic", "--no-compile"]  # fmt: skip


def test_a_graphed_run_trains_like_eager_and_resumes_exactly(mnist_root, tmp_path):
    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", **os.environ}
    eager, graphed, split = tmp_path / "eager", tmp_path / "graphed", tmp_path / "split"
    assert run_cli("train", "--output-dir", str(eager), *GPU_ARGS, env=env).returncode == 0
    result = run_cli("train", "--output-dir", str(graphed), *GPU_ARGS, "--cuda-graph", env=env)
    assert result.returncode == 0, result.stderr
    assert "cuda_graph=yes" in startup_line(result.stdout)
    # Today's step with a float learning rate: close, not bit-equal (see the test above).
    plain, graph = final_weights(eager, 60), final_weights(graphed, 60)
    for name in plain:
        torch.testing.assert_close(graph[name], plain[name], rtol=1e-3, atol=1e-5)
    for (step, loss, _), (step_g, loss_g, _) in zip(
        loss_curve(eager), loss_curve(graphed), strict=True
    ):
        assert step == step_g and loss_g == pytest.approx(loss, rel=1e-4)
    # The graphed run killed after its step-30 checkpoint, then run again: it resumes,
    # warms up and captures again, and ends on the same weights.
    shutil.copytree(graphed, split)
    shutil.rmtree(split / "checkpoints" / "step_00000060")
    (split / "summary.json").unlink()
    resumed = run_cli("train", "--output-dir", str(split), *GPU_ARGS, "--cuda-graph", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "step_00000030 at step 30" in resumed.stdout
    assert_same_weights(final_weights(graphed, 60), final_weights(split, 60))
    assert loss_curve(graphed) == loss_curve(split)


def test_graph_with_compile_completes_and_follows_eager(mnist_root, tmp_path):
    """--compile --cuda-graph: inductor without its own CUDA graphs, then one capture."""
    args = [a for a in GPU_ARGS if a not in ("--deterministic", "--no-compile")]
    eager, both = tmp_path / "eager", tmp_path / "both"
    assert run_cli("train", "--output-dir", str(eager), *args, "--no-compile").returncode == 0
    result = run_cli(
        "train", "--output-dir", str(both), *args, "--compile", "--cuda-graph", timeout=600
    )
    assert result.returncode == 0, result.stderr
    line = startup_line(result.stdout)
    assert "compiled=yes" in line and "cuda_graph=yes" in line
    for (_, loss, _), (_, loss_both, _) in zip(loss_curve(eager), loss_curve(both), strict=True):
        assert loss_both == pytest.approx(loss, rel=1e-3)
