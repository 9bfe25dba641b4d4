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


def runs_and_hparams(logdir):
    """The runs `tensorboard --logdir LOGDIR` lists (every folder below it that holds
    event files), and each run's hyperparameters as the HPARAMS tab reads them."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata

    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    contents = multiplexer.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    hparams = {}
    for run, tags in contents.items():
        if metadata.SESSION_START_INFO_TAG in tags:
            start = metadata.parse_session_start_info_plugin_data(
                tags[metadata.SESSION_START_INFO_TAG]
            )
            hparams[run] = {name: value for name, value in start.hparams.items()}
        if metadata.EXPERIMENT_TAG in tags:
            experiment = metadata.parse_experiment_plugin_data(tags[metadata.EXPERIMENT_TAG])
            hparams.setdefault(run, {})["metrics"] = [m.name.tag for m in experiment.metric_infos]
    return sorted(multiplexer.Runs()), hparams


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


def test_a_resumed_run_is_one_tensorboard_run_with_its_hyperparameters_and_no_repeats(
    mnist_root, tmp_path
):
    """The newest checkpoint is deleted first, so the resume replays steps 6-10, which
    the first run had already logged: TensorBoard must show each step once.

    TensorBoard lists each folder holding event files as a run. SummaryWriter.add_hparams
    (Accelerate's store_init_configuration) writes the hyperparameters into a sub-folder
    <run id>/<timestamp>, which listed every run twice; they belong in the run's own
    event file, and a resume adds no run."""
    run = tmp_path / "run"
    flags = ["--report-to", "tensorboard", "--checkpoint-every", "5", "--seed", "3"]
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

    runs, hparams = runs_and_hparams(run / "tensorboard")
    assert runs == [run_id]
    config = json.loads((run / "config.json").read_text())
    recorded = hparams[run_id]
    assert recorded["train/seed"].number_value == config["train"]["seed"] == 3
    assert recorded["model/model"].string_value == config["model"]["model"] == "unet"
    assert recorded["launch/world_size"].number_value == 1
    assert recorded["metrics"] == ["val/psnr", "val/ssim"]  # the HPARAMS tab's columns
