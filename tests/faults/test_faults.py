"""Kill it, corrupt it, fill its disk, poison it: it loses nothing (issue 7)."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from denoise_dist.checkpoint import MANIFEST, verify, write_manifest
from tests.conftest import REPO, require, run_cli, tiny_args

pytestmark = pytest.mark.integration
INJECT = str(Path(__file__).with_name("inject.py"))


def weights(run_dir: Path, step: int) -> dict:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def inject(fault: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, INJECT, fault, "train", *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def reference_run(mnist_root, tmp_path_factory) -> Path:
    """An uninterrupted 40-step run that the faulty runs must end up equal to."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli("train", *tiny_args(run, "--max-steps", "40", "--checkpoint-every", "5",
                                         "--keep-checkpoints", "20"))
    assert result.returncode == 0, result.stderr
    return run


def test_kill_9_at_random_moments_then_resume(reference_run, tmp_path):
    """At least 5 SIGKILLs, one of them inside a checkpoint write; every resume succeeds,
    at most one checkpoint interval is lost each time, and the result is bit-identical."""
    run, rng = tmp_path / "run", random.Random(7)
    args = tiny_args(run, "--max-steps", "40", "--checkpoint-every", "5", "--log-every", "1")
    kills, done = 0, False
    while not done:
        proc = subprocess.Popen([sys.executable, "-m", "denoise_dist", "train", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if kills < 6:
            in_checkpoint = kills == 2  # this time wait for a half-written checkpoint
            deadline = time.monotonic() + 120
            started = last_step(run)
            while proc.poll() is None and time.monotonic() < deadline:
                if in_checkpoint and list((run / "checkpoints").glob("*.partial")):
                    break
                if not in_checkpoint and last_step(run) >= started + rng.randint(1, 6):
                    break
                time.sleep(0.01)
            if proc.poll() is None:
                logged_before_kill = last_step(run)
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                kills += 1
                newest = newest_checkpoint_step(run)
                assert logged_before_kill - newest <= 5, "lost more than one checkpoint interval"
                continue
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        done = True
    assert kills >= 5
    assert_same_weights(weights(run, 40), weights(reference_run, 40))
    losses = lambda r: [(m["step"], m["loss"]) for m in metrics(r) if "loss" in m]
    steps = [s for s, _ in losses(run)]
    assert steps == sorted(set(steps)), "a step was logged twice"


def last_step(run: Path) -> int:
    records = metrics(run)
    return records[-1]["step"] if records else 0


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def newest_checkpoint_step(run: Path) -> int:
    steps = [int(p.name[5:]) for p in (run / "checkpoints").glob("step_*")
             if not p.name.endswith(".partial") and verify(p) is None]
    return max(steps, default=0)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(reference_run, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(run, "--checkpoint-every", "5", "--keep-checkpoints", "3")
    assert run_cli("train", *args, "--max-steps", "20").returncode == 0
    newest = run / "checkpoints" / "step_00000020" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a dying disk
    result = run_cli("train", *args, "--max-steps", "40")
    assert result.returncode == 0, result.stderr
    assert "skipping corrupt checkpoint" in result.stderr and "step_00000020" in result.stderr
    assert "resumed from" in result.stdout and "at step 15" in result.stdout
    assert_same_weights(weights(run, 40), weights(reference_run, 40))


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mount_point)],
                        capture_output=True).returncode == 0
    require(ok, "cannot mount a tmpfs (needs root) to simulate a full disk")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_full_disk_keeps_the_previous_checkpoint_and_stops(mnist_root, small_tmpfs):
    """A real ENOSPC from a 1.6 MB tmpfs: one checkpoint fits, the next does not."""
    run = small_tmpfs / "run"
    result = run_cli("train", *tiny_args(run, "--max-steps", "40", "--checkpoint-every", "10",
                                         "--eval-every", "1000", "--keep-checkpoints", "5"))
    assert result.returncode != 0
    assert re.search(r"checkpoint at step \d+ failed \(.*MB free", result.stderr)
    assert "Traceback" not in result.stderr
    good = sorted(p for p in (run / "checkpoints").iterdir())
    assert good and all(p.name.startswith("step_") for p in good), "partial checkpoint left"
    assert all(verify(p) is None for p in good)
    assert good[-1].name in result.stderr  # names the last good checkpoint


def test_failed_checkpoint_write_is_cleaned_up_and_stops_training(mnist_root, tmp_path):
    run = tmp_path / "run"
    result = inject("enospc-at-checkpoint=2",
                    *tiny_args(run, "--max-steps", "40", "--checkpoint-every", "10"))
    assert result.returncode == 1
    assert ("checkpoint at step 20 failed (No space left on device;" in result.stderr
            and "Last good checkpoint: step_00000010" in result.stderr)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000010"]
    assert verify(run / "checkpoints" / "step_00000010") is None
    assert max(m["step"] for m in metrics(run)) == 20  # it did not train on


def test_nan_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(mnist_root, tmp_path):
    run = tmp_path / "run"
    result = inject("nan-at-step=13",
                    *tiny_args(run, "--checkpoint-every", "10", "--log-every", "5"))
    assert result.returncode == 1
    assert "loss became nan at step 13" in result.stderr
    assert "step_00000010" in result.stderr and "Traceback" not in result.stderr
    checkpoints = [p.name for p in (run / "checkpoints").iterdir()]
    assert checkpoints == ["step_00000010"]
    assert all(torch.isfinite(t).all() for t in weights(run, 10).values())


def test_checkpoint_from_another_model_names_the_differing_fields(mnist_root, tmp_path):
    other = tmp_path / "other"
    assert run_cli("train", *tiny_args(other, "--max-steps", "5",
                                       "--model", "conv_ae")).returncode == 0
    result = run_cli("train", *tiny_args(tmp_path / "new", "--resume",
                                         str(other / "checkpoints" / "step_00000005")))
    assert result.returncode != 0
    assert "model: 'conv_ae' -> 'unet'" in result.stderr and "Traceback" not in result.stderr


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Exploit.marker}",))


def test_a_pickle_planted_in_a_checkpoint_is_never_executed(mnist_root, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(run, "--max-steps", "5")
    assert run_cli("train", *args).returncode == 0
    checkpoint = run / "checkpoints" / "step_00000005"
    Exploit.marker = tmp_path / "pwned"
    for name in ["optimizer.bin", "random_states_0.pkl"]:
        (checkpoint / name).write_bytes(pickle.dumps({"state": Exploit()}))
    write_manifest(checkpoint)  # the attacker also fixes the manifest
    result = run_cli("train", *tiny_args(run, "--max-steps", "10"))
    assert not Exploit.marker.exists(), "checkpoint loading executed a pickle"
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_no_secret_reaches_the_run_folder_and_nothing_is_world_writable(mnist_root, tmp_path):
    run = tmp_path / "run"
    secret = "0123456789abcdef0123456789abcdef01234567"
    result = subprocess.run(
        [sys.executable, "-m", "denoise_dist", "train",
         *tiny_args(run, "--max-steps", "5", "--report-to", "wandb", "--wandb-mode", "offline")],
        capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0),
        env={**os.environ, "WANDB_API_KEY": secret, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    files = [p for p in run.rglob("*")]
    assert any(p.suffix == ".wandb" for p in files), "the W&B offline run was not written"
    for path in files:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"secret written to {path}"
        assert not path.stat().st_mode & 0o002, f"{path} is world-writable"
