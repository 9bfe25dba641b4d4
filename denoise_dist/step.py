"""The training step `train` runs, one optimizer step per call: `make_train_step` picks
`plain_step.TrainStep`, or with --cuda-graph `graph_step`'s capture-safe step (graphed on
CUDA). What a step reads (losses, schedules, EMA, optimizer) is in `optim`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from denoise_dist.config import Config
from denoise_dist.graph_step import CaptureSafeStep, GraphedStep
from denoise_dist.optim import EMA as EMA  # importable from here too, as train does
from denoise_dist.optim import lr_at as lr_at
from denoise_dist.optim import make_optimizer as make_optimizer
from denoise_dist.plain_step import TrainStep

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
