"""What every tracker implements. The hub (`denoise_dist.tracking.Tracker`) calls these
on the main process only, and turns any exception into one warning that drops the sink,
so a tracker can never fail or stop a training run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class StartFailed(Exception):
    """A tracker could not start; the message says why, in one line."""


@dataclass
class RunInfo:
    """What a tracker needs to know about the run it records."""

    run_dir: Path
    run_id: str  # kept across resumes and requeues (in every checkpoint)
    name: str  # shown on dashboards
    project: str
    config: dict[str, Any]  # the resolved config, sectioned
    launch: dict[str, Any] = field(default_factory=dict)  # world size, precision, SLURM job
    resumed: bool = False


@dataclass
class Sample:
    """One fixed test image at one evaluation, with its PSNR before and after."""

    noisy: np.ndarray  # uint8 [H, W]
    denoised: np.ndarray
    clean: np.ndarray
    psnr_noisy: float
    psnr_denoised: float


class Sink:
    """One tracker. `name` is its --report-to choice and its Accelerate `log_with` name."""

    name: ClassVar[str]

    def __init__(self, info: RunInfo, settings: Any):
        self.info = info
        self.settings = settings  # the TrackingConfig

    def start(self) -> bool:
        """Start the run: True if started, False if switched off on purpose (W&B's
        disabled mode); raise to report that it could not start."""
        raise NotImplementedError

    def log(self, values: dict[str, float], step: int) -> None:
        """Scalars under their chart names (`train/loss`, `val/psnr`)."""
        raise NotImplementedError

    def log_grid(self, grid: np.ndarray, caption: str, step: int) -> None:
        """The noisy | denoised | clean grid (uint8 [H, W]) of one evaluation."""
        raise NotImplementedError

    def log_samples(self, samples: list[Sample], step: int) -> None:
        """The sample images with their PSNR, once at the end (optional)."""

    def log_model(self, path: Path) -> None:
        """The best model file, once at the end (optional)."""

    def finish(self, preempted: bool) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        """Where the run went, said once at the end (optional)."""
        return ""
