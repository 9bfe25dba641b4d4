"""A real run reporting to TensorBoard, read back with TensorBoard's own event reader."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.helpers import require, run_cli, tiny_args

pytestmark = pytest.mark.integration


def event_accumulator(folder):
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        require(False, "tensorboard is not installed (pip install -e '.[test]')")
    reader = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    reader.Reload()
    return reader


def test_tensorboard_gets_the_scalars_grids_and_config_beside_wandb(mnist_root, tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        "train",
        *tiny_args(run, "--report-to", "tensorboard", "wandb", "--wandb-mode", "offline"),
        env={"WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr
    run_id = json.loads((run / "summary.json").read_text())["run_id"]
    assert (run / "wandb").is_dir()  # both trackers ran
    reader = event_accumulator(run / "tensorboard" / run_id)
    tags = reader.Tags()
    for name in ("train/loss", "train/lr", "train/grad_norm", "train/images_per_s"):
        assert [e.step for e in reader.Scalars(name)] == [5, 10, 15, 20], name
    for name in ("val/psnr", "val/ssim", "val/psnr_noisy"):
        assert [e.step for e in reader.Scalars(name)] == [10, 20], name
    final = json.loads((run / "summary.json").read_text())
    assert reader.Scalars("val/psnr")[-1].value == pytest.approx(final["val_psnr"], abs=1e-4)
    # The noisy | denoised | clean grid at every evaluation, as a real (non-blank) image.
    [grids] = [t for t in tags["images"] if t.startswith("samples")]
    events = reader.Images(grids)
    assert [e.step for e in events] == [10, 20]
    import io

    pixels = np.asarray(Image.open(io.BytesIO(events[-1].encoded_image_string)).convert("L"))
    assert pixels.shape == (8 * 28 + 7 * 2, 3 * 28 + 2 * 2) and pixels.std() > 20
    assert f"TensorBoard: tensorboard --logdir {run / 'tensorboard'}" in result.stdout


def test_a_resumed_run_continues_its_tensorboard_curves_without_repeats(mnist_root, tmp_path):
    """The newest checkpoint is deleted first, so the resume replays steps 6-10, which
    the first run had already logged: TensorBoard must show each step once."""
    run = tmp_path / "run"
    flags = ["--report-to", "tensorboard", "--checkpoint-every", "5"]
    first = run_cli("train", *tiny_args(run, *flags, "--max-steps", "10"))
    assert first.returncode == 0, first.stderr
    shutil.rmtree(run / "checkpoints" / "step_00000010")
    second = run_cli("train", *tiny_args(run, *flags))
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout and "at step 5" in second.stdout
    run_id = json.loads((run / "summary.json").read_text())["run_id"]
    reader = event_accumulator(run / "tensorboard" / run_id)
    assert [e.step for e in reader.Scalars("train/loss")] == [5, 10, 15, 20]
    assert [e.step for e in reader.Scalars("val/psnr")] == [10, 20]
