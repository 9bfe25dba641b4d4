"""TensorBoard, through Accelerate's TensorBoardTracker: event files in <run>/tensorboard/.

The same scalars as W&B under the same names, the noisy | denoised | clean grid at every
evaluation (with its caption as text), and the config and launch facts as
hyperparameters, in the run's own event file: `tensorboard --logdir runs/` lists each run
once. Needs the tensorboard package (`pip install tensorboard`).
"""

from __future__ import annotations

import numpy as np

from denoise_dist.trackers.base import Sink

TENSORBOARD_DIR = "tensorboard"
HPARAMS_METRICS = ("val/psnr", "val/ssim")  # the HPARAMS tab's columns, read from the run


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
            self.write_hparams(flat_hparams({**self.info.config, "launch": self.info.launch}))
        return True

    def write_hparams(self, values: dict) -> None:
        """The hyperparameters' three summaries, in the run's own event file.

        Not Accelerate's store_init_configuration: it calls SummaryWriter.add_hparams,
        which writes them to a new sub-folder <run id>/<timestamp>, and TensorBoard then
        lists every run twice. The metrics are named only; the HPARAMS tab reads their
        values from the run's own scalars."""
        from torch.utils.tensorboard.summary import hparams

        writer = self.tracker.writer
        for summary in hparams(values, dict.fromkeys(HPARAMS_METRICS, 0.0)):
            writer.file_writer.add_summary(summary)
        writer.flush()

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
