"""The tracking hub and trackers' own logic, without starting W&B or TensorBoard: chart
names, W&B's mode choice, what a resumed run may send, and that a failing tracker costs
one warning, not the run."""

import json
import re
import socket
import warnings

import numpy as np
import pytest
import torch
from accelerate.tracking import LOGGER_TYPE_TO_CLASS
from PIL import Image

from denoise_dist.config import TrackingConfig
from denoise_dist.trackers import SINKS, RunInfo, Sink
from denoise_dist.trackers.tensorboard import flat_hparams
from denoise_dist.trackers.wandb import resolve_wandb_mode
from denoise_dist.tracking import (
    HIGH_WATER,
    Tracker,
    chart_name,
    logged_high_water,
    read_metrics,
    to_uint8,
    truncate_metrics,
)


class FakeSink(Sink):
    """Records what a tracker would receive; fails on demand."""

    name = "fake"
    fail_start = False
    fail_log = False

    def start(self):
        if self.fail_start:
            raise ConnectionError("service unreachable")
        self.sent = []
        return True

    def log(self, values, step):
        if self.fail_log:
            raise ConnectionError("service went away")
        self.sent.append((step, values))

    def log_grid(self, grid, caption, step):
        self.sent.append((step, {"grid": grid, "caption": caption}))

    def finish(self, preempted):
        self.sent.append(("finish", preempted))


@pytest.fixture
def fake_sinks(monkeypatch):
    class Failing(FakeSink):
        name = "failing"
        fail_log = True

    class Broken(FakeSink):
        name = "broken"
        fail_start = True

    for cls in (FakeSink, Failing, Broken):
        monkeypatch.setitem(SINKS, cls.name, cls)


def hub(run_dir, *names, resumed=False, is_main=True) -> Tracker:
    info = RunInfo(run_dir, "abcd1234", "unet-gaussian-abcd1234", "p", {}, resumed=resumed)
    return Tracker(info, TrackingConfig(report_to=names), is_main, "gaussian sigma=0.5")


def write_records(run_dir, steps):
    with open(run_dir / "metrics.jsonl", "a") as f:
        for step in steps:
            f.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")


@pytest.mark.parametrize("name, key", [
    ("loss", "train/loss"), ("lr", "train/lr"), ("grad_norm", "train/grad_norm"),
    ("images_per_s", "train/images_per_s"), ("train_time_s", "train/time_s"),
    ("val_psnr", "val/psnr"), ("val_ssim_noisy", "val/ssim_noisy"),
    ("val_psnr@0.3", "val/psnr_sigma_0p3"), ("val_ssim@1", "val/ssim_sigma_1"),
])  # fmt: skip
def test_chart_names_are_sectioned_and_sortable(name, key):
    assert chart_name(name) == key
    assert re.fullmatch(r"[a-z]+/[A-Za-z0-9_]+", key)  # W&B sorts/filters only these


def test_images_for_trackers_are_uint8():
    out = to_uint8(torch.tensor([[[0.0, 0.5], [1.0, 2.0]]]))
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 128], [255, 255]]


def test_every_tracker_is_an_accelerate_tracker_by_name():
    assert {"wandb", "tensorboard"} <= set(SINKS)
    for name, sink in SINKS.items():
        assert sink.name == name and name in LOGGER_TYPE_TO_CLASS


def test_tensorboard_hyperparameters_are_flat_scalars_and_strings():
    flat = flat_hparams({"train": {"lr": 0.1, "output_dir": None}, "noise": {"s": (0.1, 0.3)}})
    assert flat == {"train/lr": 0.1, "train/output_dir": "None", "noise/s": "(0.1, 0.3)"}


# --- mode choice ----------------------------------------------------------------------


@pytest.fixture
def listening_port():
    """A local port that accepts connections: a reachable 'W&B host' with no network."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once this socket is closed


@pytest.mark.parametrize("requested", ["online", "offline", "disabled"])
def test_an_explicit_mode_is_kept(requested):
    assert resolve_wandb_mode(requested, {"WANDB_MODE": "disabled"}) == requested


@pytest.mark.parametrize(
    "env_mode, mode",
    [("offline", "offline"), ("dryrun", "offline"), ("disabled", "disabled"), ("online", "online")],
)
def test_auto_follows_wandb_mode_from_the_environment(env_mode, mode):
    assert resolve_wandb_mode("auto", {"WANDB_MODE": env_mode}) == mode


def test_auto_is_offline_without_credentials_even_with_network(tmp_path, listening_port):
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{listening_port}", "NETRC": str(tmp_path / "none")}
    assert resolve_wandb_mode("auto", env) == "offline"


def test_auto_is_online_with_a_key_and_a_reachable_host(listening_port):
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{listening_port}", "WANDB_API_KEY": "k"}
    assert resolve_wandb_mode("auto", env) == "online"


def test_auto_is_offline_with_a_key_but_no_reachable_host():
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}", "WANDB_API_KEY": "k"}
    assert resolve_wandb_mode("auto", env) == "offline"


def test_a_netrc_entry_for_the_host_counts_as_credentials(tmp_path, listening_port):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login user password k\n")
    netrc.chmod(0o600)
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{listening_port}", "NETRC": str(netrc)}
    assert resolve_wandb_mode("auto", env) == "online"
    netrc.write_text("machine elsewhere.example login user password k\n")
    assert resolve_wandb_mode("auto", env) == "offline"


# --- resume: never send W&B a step twice ------------------------------------------------


def test_high_water_survives_chained_resumes(tmp_path):
    write_records(tmp_path, [5, 10, 15])  # killed after logging 15; checkpoint at 10
    truncate_metrics(tmp_path, 10)
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10]
    assert logged_high_water(tmp_path) == 15
    write_records(tmp_path, [12])  # killed again before reaching 15
    truncate_metrics(tmp_path, 10)
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10]
    assert logged_high_water(tmp_path) == 15  # W&B still holds 15
    write_records(tmp_path, [15, 20])
    assert logged_high_water(tmp_path) == 20


def test_a_fresh_start_forgets_the_high_water(tmp_path):
    write_records(tmp_path, [5, 10, 15])
    truncate_metrics(tmp_path, 10)
    assert (tmp_path / HIGH_WATER).exists()
    truncate_metrics(tmp_path, 0)  # no valid checkpoint: a new W&B run
    assert read_metrics(tmp_path) == [] and not (tmp_path / HIGH_WATER).exists()
    assert logged_high_water(tmp_path) == 0


def test_a_resumed_run_sends_only_steps_beyond_what_its_trackers_hold(tmp_path, fake_sinks):
    write_records(tmp_path, [5, 10, 15])  # killed after logging 15; checkpoint at 10
    truncate_metrics(tmp_path, 10)
    tracker = hub(tmp_path, "fake", resumed=True)
    assert tracker.sent_up_to == 15
    for step in (15, 20):
        tracker.log({"loss": 0.5}, step)
    [sink] = tracker.sinks
    assert sink.sent == [(20, {"train/loss": 0.5})]
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10, 15, 20]  # jsonl gets all
    assert hub(tmp_path, "fake").sent_up_to == 0  # a new run has nothing to protect


# --- failures and processes -------------------------------------------------------------


def test_a_failing_tracker_warns_once_and_the_others_go_on(tmp_path, fake_sinks):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = hub(tmp_path, "broken", "failing", "fake")
        for step in (5, 10, 15):
            tracker.log({"loss": 0.5}, step)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert messages[0].startswith(
        "broken init failed (ConnectionError: service unreachable); continuing without broken"
    )
    assert messages[1].startswith(
        "failing logging failed (ConnectionError: service went away); continuing without failing"
    )
    assert [sink.name for sink in tracker.sinks] == ["fake"]
    assert [step for step, _ in tracker.sinks[0].sent] == [5, 10, 15]
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10, 15]


def test_sample_grids_land_as_png_and_on_every_tracker(tmp_path, fake_sinks):
    tracker = hub(tmp_path, "fake")
    clean = torch.rand(8, 1, 28, 28)
    noisy = (clean + 0.5 * torch.randn_like(clean)).clamp(0, 1)
    tracker.log_samples(noisy, clean * 0.9, clean, step=10)
    png = tmp_path / "figures" / "samples" / "step_00000010.png"
    assert np.asarray(Image.open(png).convert("L")).std() > 20
    [(step, values)] = tracker.sinks[0].sent
    assert step == 10 and values["grid"].dtype == np.uint8
    assert values["grid"].shape == (8 * 28 + 7 * 2, 3 * 28 + 2 * 2)
    caption = values["caption"]
    assert "sigma=0.5" in caption and "step 10" in caption
    assert re.search(r"PSNR \d+\.\d\d -> \d+\.\d\d dB", caption)


def test_other_processes_record_nothing(tmp_path, fake_sinks):
    tracker = hub(tmp_path, "fake", is_main=False)
    tracker.log({"loss": 0.5}, 5)
    tracker.log_samples(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), 5)
    tracker.finish()
    assert tracker.sinks == [] and list(tmp_path.iterdir()) == []
