"""The tracker's own logic, without W&B: metric names, mode choice, what a resumed run may
send, and that a failing W&B call costs one warning, not the run."""

import json
import re
import socket
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from denoise_dist.config import Config, NoiseConfig
from denoise_dist.tracking import (
    HIGH_WATER,
    Tracker,
    describe_noise,
    logged_high_water,
    read_metrics,
    resolve_wandb_mode,
    to_uint8,
    truncate_metrics,
    wandb_key,
)


class FakeAccelerator:
    """What Tracker uses of an Accelerator; `log` records what would go to W&B."""

    def __init__(self, is_main=True, fail=False):
        self.is_main_process = is_main
        self.trackers = [SimpleNamespace(name="wandb")]
        self.fail = fail
        self.sent = []

    def log(self, values, step):
        if self.fail:
            raise ConnectionError("W&B service went away")
        self.sent.append((step, values))


def tracker_with_fake_wandb(tmp_path, sent_up_to=0, **accelerator):
    """A Tracker as if W&B had started: its W&B calls land in FakeAccelerator.sent."""
    tracker = Tracker(FakeAccelerator(**accelerator), Config(), tmp_path, "abcd1234", {})
    tracker.run, tracker.wandb = object(), SimpleNamespace(Image=lambda grid, caption: caption)
    tracker.sent_up_to = sent_up_to
    return tracker


def write_records(run_dir, steps):
    with open(run_dir / "metrics.jsonl", "a") as f:
        for step in steps:
            f.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")


@pytest.mark.parametrize("name, key", [
    ("loss", "train/loss"), ("lr", "train/lr"), ("grad_norm", "train/grad_norm"),
    ("images_per_s", "train/images_per_s"), ("train_time_s", "train/time_s"),
    ("val_psnr", "val/psnr"), ("val_ssim_noisy", "val/ssim_noisy"),
    ("val_psnr@0.3", "val/psnr_sigma_0p3"), ("val_ssim@1", "val/ssim_sigma_1"),
])
def test_wandb_keys_are_sectioned_and_sortable(name, key):
    assert wandb_key(name) == key
    assert re.fullmatch(r"[a-z]+/[A-Za-z0-9_]+", key)  # W&B sorts/filters only these


@pytest.mark.parametrize("noise, words", [
    (NoiseConfig(noise="gaussian", sigma=0.25), "gaussian sigma=0.25"),
    (NoiseConfig(noise="gaussian_blind"), "gaussian sigma=0.1..0.7 (blind)"),
    (NoiseConfig(noise="salt_pepper", salt_pepper=0.3), "salt & pepper 0.3"),
    (NoiseConfig(noise="poisson_gaussian", photons=10, sigma=0.1),
     "poisson 10 photons + gaussian sigma=0.1"),
])
def test_captions_name_the_noise(noise, words):
    assert describe_noise(noise) == words


def test_images_for_wandb_are_uint8():
    image = torch.tensor([[[0.0, 0.5], [1.0, 2.0]]])
    out = to_uint8(image)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 128], [255, 255]]


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


@pytest.mark.parametrize("env_mode, mode", [("offline", "offline"), ("dryrun", "offline"),
                                            ("disabled", "disabled"), ("online", "online")])
def test_auto_follows_wandb_mode_from_the_environment(env_mode, mode):
    assert resolve_wandb_mode("auto", {"WANDB_MODE": env_mode}) == mode


def test_auto_is_offline_without_credentials_even_with_network(tmp_path, listening_port):
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{listening_port}",
           "NETRC": str(tmp_path / "none")}
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
    write_records(tmp_path, [5, 10, 15])       # killed after logging 15; checkpoint at 10
    truncate_metrics(tmp_path, 10)
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10]
    assert logged_high_water(tmp_path) == 15
    write_records(tmp_path, [12])              # killed again before reaching 15
    truncate_metrics(tmp_path, 10)
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10]
    assert logged_high_water(tmp_path) == 15   # W&B still holds 15
    write_records(tmp_path, [15, 20])
    assert logged_high_water(tmp_path) == 20


def test_a_fresh_start_forgets_the_high_water(tmp_path):
    write_records(tmp_path, [5, 10, 15])
    truncate_metrics(tmp_path, 10)
    assert (tmp_path / HIGH_WATER).exists()
    truncate_metrics(tmp_path, 0)              # no valid checkpoint: a new W&B run
    assert read_metrics(tmp_path) == [] and not (tmp_path / HIGH_WATER).exists()
    assert logged_high_water(tmp_path) == 0


def test_a_resumed_tracker_sends_only_steps_beyond_what_wandb_holds(tmp_path):
    tracker = tracker_with_fake_wandb(tmp_path, sent_up_to=15)
    for step in (10, 15, 20):
        tracker.log({"loss": 0.5}, step)
    assert [step for step, _ in tracker.accelerator.sent] == [20]
    assert tracker.accelerator.sent[0][1] == {"train/loss": 0.5}
    assert [r["step"] for r in read_metrics(tmp_path)] == [10, 15, 20]  # jsonl gets all


def test_a_resumed_run_starts_sending_after_the_high_water(tmp_path):
    write_records(tmp_path, [5, 10, 15])
    truncate_metrics(tmp_path, 10)
    cfg = Config()
    resumed = Tracker(FakeAccelerator(), cfg, tmp_path, "abcd1234", {})
    assert resumed.sent_up_to == 0  # report_to none: nothing to protect
    cfg.tracking.report_to, cfg.tracking.wandb_mode = "wandb", "disabled"
    assert Tracker(FakeAccelerator(), cfg, tmp_path, "abcd1234", {}).sent_up_to == 15
    assert Tracker(FakeAccelerator(), cfg, tmp_path, None, {}).sent_up_to == 0  # new run


# --- failures and processes -------------------------------------------------------------

def test_a_failing_wandb_call_warns_once_and_the_run_goes_on(tmp_path):
    tracker = tracker_with_fake_wandb(tmp_path, fail=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in (5, 10, 15):
            tracker.log({"loss": 0.5}, step)
    assert len(caught) == 1 and "W&B logging failed" in str(caught[0].message)
    assert tracker.run is None and tracker.accelerator.trackers == []
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10, 15]


def test_sample_grids_land_as_png_with_or_without_wandb(tmp_path):
    tracker = tracker_with_fake_wandb(tmp_path)
    clean = torch.rand(8, 1, 28, 28)
    noisy = (clean + 0.5 * torch.randn_like(clean)).clamp(0, 1)
    tracker.log_samples(noisy, clean * 0.9, clean, step=10)
    png = tmp_path / "figures" / "samples" / "step_00000010.png"
    assert np.asarray(Image.open(png).convert("L")).std() > 20
    [(step, values)] = tracker.accelerator.sent
    caption = values["samples"]
    assert step == 10 and "sigma=0.5" in caption and "step 10" in caption
    assert re.search(r"PSNR \d+\.\d\d -> \d+\.\d\d dB", caption)


def test_other_processes_log_nothing(tmp_path):
    tracker = Tracker(FakeAccelerator(is_main=False), Config(), tmp_path, None, {})
    tracker.log({"loss": 0.5}, 5)
    tracker.log_samples(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), 5)
    tracker.finish()
    assert list(tmp_path.iterdir()) == []
