"""TensorBoard, through Accelerate's TensorBoardTracker: event files in <run>/tensorboard/.

The same scalars as W&B under the same names, the noisy | denoised | clean grid at every
evaluation (with its caption as text), and the config as hyperparameters. View with
`tensorboard --logdir runs/`. Needs the tensorboard package (`pip install tensorboard`).
"""

from __future__ import annotations

import numpy as np

from denoise_dist.trackers.base import Sink

TENSORBOARD_DIR = "tensorboard"


def flat_hparams(config: dict, prefix: str = "") -> dict:
    """TensorBoard takes hyperparameters as flat str/int/float/bool values."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}/"))
        elif value is None or isinstance(value, list | tuple):
            flat[name] = str(value)
        else:
            flat[name] = value
    return flat


class TensorBoardSink(Sink):
    name = "tensorboard"

    def start(self) -> bool:
        from accelerate.tracking import TensorBoardTracker

        # Accelerate writes to <logging_dir>/<run_name>: one folder per run id, so a
        # resumed run continues its own curves.
        self.tracker = TensorBoardTracker(self.info.run_id, self.info.run_dir / TENSORBOARD_DIR)
        self.tracker.start()
        if not self.info.resumed:
            self.tracker.store_init_configuration(flat_hparams(self.info.config))
        return True

    def log(self, values: dict[str, float], step: int) -> None:
        self.tracker.log(values, step=step)

    def log_grid(self, grid: np.ndarray, caption: str, step: int) -> None:
        self.tracker.log_images({"samples": grid[None, :, :, None]}, step=step, dataformats="NHWC")
        self.tracker.log({"samples/caption": caption}, step=step)

    def finish(self, preempted: bool) -> None:
        self.tracker.finish()

    def describe(self) -> str:
        return f"TensorBoard: tensorboard --logdir {self.info.run_dir / TENSORBOARD_DIR}"


SINK = TensorBoardSink
