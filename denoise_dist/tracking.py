"""Where a run's records go: metrics.jsonl and figures in the run folder, always; and the
trackers of `--report-to` (one file each in `denoise_dist/trackers/`).

Only the main process records. A tracker that fails to start, or fails later, costs one
warning and is dropped; it never fails or stops a run.

Chart steps are optimizer steps and only ever increase. A resumed run restarts from its
checkpoint, which may be older than the last step a tracker saw before the job was
killed: the steps it replays up to that point go to metrics.jsonl again but not to the
trackers, which already hold them (a replay computes the same values).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from denoise_dist import figures
from denoise_dist.atomic import atomic_write_text
from denoise_dist.errors import one_line
from denoise_dist.metrics import psnr
from denoise_dist.trackers import SINKS, RunInfo, Sink
from denoise_dist.trackers.base import Sample, StartFailed

METRICS = "metrics.jsonl"
HIGH_WATER = "metrics_high_water.json"  # highest step logged before a resume dropped it
LABELS = {"wandb": "W&B", "tensorboard": "TensorBoard"}

# --- metrics.jsonl ----------------------------------------------------------------------


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # a line torn by a kill mid-write: drop it and everything after
    return records


def logged_high_water(run_dir: Path) -> int:
    """Highest step ever logged in this run folder, counting records a resume dropped."""
    path = Path(run_dir) / HIGH_WATER
    remembered = json.loads(path.read_text())["step"] if path.exists() else 0
    return max([remembered, *(r["step"] for r in read_metrics(run_dir))])


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Keep only records up to `last_step`, so a resumed run never logs a step twice.

    The highest dropped step is remembered first: a tracker may hold it already, and must
    not be sent it (or anything lower) again. A fresh start (step 0) is a new run."""
    run_dir = Path(run_dir)
    high = logged_high_water(run_dir)
    if last_step == 0:
        (run_dir / HIGH_WATER).unlink(missing_ok=True)
    elif high > last_step:
        atomic_write_text(run_dir / HIGH_WATER, json.dumps({"step": high}))
    kept = [r for r in read_metrics(run_dir) if r["step"] <= last_step]
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


# --- what the dashboards show -------------------------------------------------------------


def chart_name(name: str) -> str:
    """metrics.jsonl name -> chart name, grouped in sections: `loss` -> `train/loss`,
    `val_psnr@0.3` -> `val/psnr_sigma_0p3` (W&B sorts and filters only names made of
    letters, digits and underscores)."""
    section, _, rest = name.partition("_")
    if section not in ("train", "val", "test") or not rest:
        section, rest = "train", name
    return f"{section}/{rest.replace('@', '_sigma_').replace('.', 'p')}"


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[1, H, W] float in [0, 1] -> [H, W] uint8 (W&B renders float images black)."""
    return (image[0].float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


# --- the hub ----------------------------------------------------------------------------


class Tracker:
    """Records scalars and sample grids: metrics.jsonl and PNGs always, and every started
    tracker of `--report-to`. A no-op on processes other than the main one."""

    def __init__(self, info: RunInfo, settings, is_main: bool, caption_prefix: str):
        self.info = info
        self.is_main = is_main
        self.caption_prefix = caption_prefix  # the noise, in a few words
        self.sinks: list[Sink] = []
        # A resumed run's trackers may already hold steps up to here: send only later ones.
        self.sent_up_to = logged_high_water(info.run_dir) if info.resumed else 0
        if not is_main:
            return
        for name in settings.report_to:
            sink = SINKS[name](info, settings)
            label = LABELS.get(name, name)
            try:
                if sink.start():
                    self.sinks.append(sink)
            except Exception as e:
                detail = str(e) if isinstance(e, StartFailed) else one_line(e)
                warnings.warn(
                    f"{label} init failed ({detail}); continuing without {label}; "
                    f"metrics.jsonl and figures/ still record the run",
                    stacklevel=2,
                )

    def _send(self, step: int | None, call) -> None:
        """Call `call(sink)` on every tracker; the first failure of one warns and drops it."""
        if step is not None and step <= self.sent_up_to:
            return
        for sink in list(self.sinks):
            try:
                call(sink)
            except Exception as e:
                label = LABELS.get(sink.name, sink.name)
                warnings.warn(
                    f"{label} logging failed ({one_line(e)}); continuing without {label}. "
                    f"metrics.jsonl and figures/ still record the run.",
                    stacklevel=3,
                )
                self.sinks.remove(sink)

    def log(self, metrics: dict, step: int) -> None:
        if not self.is_main:
            return
        with open(self.info.run_dir / METRICS, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        charts = {chart_name(k): v for k, v in metrics.items()}
        self._send(step, lambda sink: sink.log(charts, step))

    def log_samples(
        self, noisy: torch.Tensor, denoised: torch.Tensor, clean: torch.Tensor, step: int
    ) -> None:
        """One evaluation's noisy | denoised | clean grid: a PNG in figures/samples/, and an
        image on every tracker."""
        if not self.is_main:
            return
        grid = figures.sample_grid(noisy, denoised, clean)
        before, after = psnr(noisy, clean).mean().item(), psnr(denoised, clean).mean().item()
        caption = (
            f"{self.caption_prefix} | step {step} | PSNR {before:.2f} -> {after:.2f} dB "
            f"(these {len(clean)} test images)"
        )
        folder = self.info.run_dir / "figures" / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        figures.save_sample_figure(grid, folder / f"step_{step:08d}.png", caption)
        self._send(step, lambda sink: sink.log_grid(grid, caption, step))

    def log_final(
        self,
        noisy: torch.Tensor,
        denoised: torch.Tensor,
        clean: torch.Tensor,
        step: int,
        model_path: Path,
    ) -> None:
        """At the end: the sample images with their PSNR, and the best model file."""
        if not self.is_main:
            return
        before, after = psnr(noisy, clean).tolist(), psnr(denoised, clean).tolist()
        samples = [
            Sample(to_uint8(n), to_uint8(d), to_uint8(c), b, a)
            for n, d, c, b, a in zip(noisy, denoised, clean, before, after, strict=True)
        ]
        self._send(step, lambda sink: sink.log_samples(samples, step))
        if model_path.is_file():
            self._send(None, lambda sink: sink.log_model(model_path))

    def finish(self, preempted: bool = False) -> None:
        """End every tracker's run (bounded waits). Not accelerator.end_training(): that
        would also tear down the process group on the main process alone."""
        sinks = list(self.sinks)
        self._send(None, lambda sink: sink.finish(preempted))
        self.sinks = []
        for sink in sinks:
            if sink.describe():
                print(sink.describe())
