"""Kill it, corrupt it, fill its disk, poison it: it loses nothing."""

from __future__ import annotations

import base64
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from denoise_dist.checkpoint import verify, write_manifest
from denoise_dist.tracking import read_metrics as metrics
from tests.helpers import (
    CONFIGS,
    REPO,
    assert_same_weights,
    final_weights,
    launch,
    require,
    run_cli,
    tiny_args,
)

pytestmark = pytest.mark.integration
INJECT = str(Path(__file__).with_name("inject.py"))


def inject(fault: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, INJECT, fault, "train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def reference_run(mnist_root, tmp_path_factory) -> Path:
    """An uninterrupted 40-step run that the faulty runs must end up equal to."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli(
        "train",
        *tiny_args(run, "--max-steps", "40", "--checkpoint-every", "5", "--keep-checkpoints", "20"),
    )
    assert result.returncode == 0, result.stderr
    return run


def test_kill_9_at_random_moments_then_resume(reference_run, tmp_path):
    """Six SIGKILLs, one of them inside a checkpoint write; every resume succeeds,
    at most one checkpoint interval is lost each time, and the result is bit-identical."""
    run, rng = tmp_path / "run", random.Random(7)
    args = tiny_args(run, "--max-steps", "40", "--checkpoint-every", "5", "--log-every", "1")
    kills, killed_mid_checkpoint = 0, False
    while True:
        mid_checkpoint = kills == 2  # this time kill inside a checkpoint write
        command = [INJECT, "stall-in-checkpoint=1"] if mid_checkpoint else ["-m", "denoise_dist"]
        proc = subprocess.Popen(
            [sys.executable, *command, "train", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if kills == 6:  # enough: let the last resume finish
            assert proc.wait(timeout=300) == 0, proc.stderr.read()
            break
        kill_at = last_step(run) + rng.randint(1, 6)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if mid_checkpoint and list((run / "checkpoints").glob("*.partial")):
                killed_mid_checkpoint = True
                break
            if not mid_checkpoint and last_step(run) >= kill_at:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "training ended before it could be killed"
        logged_before_kill = last_step(run)
        proc.kill()
        proc.wait()
        kills += 1
        lost = logged_before_kill - newest_checkpoint_step(run)
        assert lost <= 5, f"lost {lost} steps, more than one checkpoint interval"
    assert killed_mid_checkpoint
    assert_same_weights(final_weights(run, 40), final_weights(reference_run, 40))
    steps = [m["step"] for m in metrics(run) if "loss" in m]
    assert steps == list(range(1, 41)), "a step was logged twice or lost from the log"


def last_step(run: Path) -> int:
    records = metrics(run)
    return records[-1]["step"] if records else 0


def newest_checkpoint_step(run: Path) -> int:
    steps = [
        int(p.name[5:])
        for p in (run / "checkpoints").glob("step_*")
        if not p.name.endswith(".partial") and verify(p) is None
    ]
    return max(steps, default=0)


def checkpoint_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(reference_run, tmp_path):
    """One byte flipped at the same size, so only the SHA-256 comparison can catch it;
    --keep-checkpoints 3 keeps the newest three."""
    run = tmp_path / "run"
    args = tiny_args(run, "--checkpoint-every", "5", "--keep-checkpoints", "3")
    assert run_cli("train", *args, "--max-steps", "20").returncode == 0
    assert checkpoint_names(run) == ["step_00000010", "step_00000015", "step_00000020"]
    newest = run / "checkpoints" / "step_00000020" / "model.safetensors"
    corrupted = bytearray(newest.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0x01  # a weight's bit, as a bad disk or copy would flip
    newest.write_bytes(bytes(corrupted))
    result = run_cli("train", *args, "--max-steps", "40")
    assert result.returncode == 0, result.stderr
    assert (
        "skipping corrupt checkpoint" in result.stderr
        and "step_00000020: model.safetensors does not match its checksum" in result.stderr
    )
    assert "resumed from" in result.stdout and "at step 15" in result.stdout
    assert checkpoint_names(run) == ["step_00000030", "step_00000035", "step_00000040"]
    assert_same_weights(final_weights(run, 40), final_weights(reference_run, 40))


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    ok = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mount_point)],
            capture_output=True,
        ).returncode
        == 0
    )
    require(ok, "cannot mount a tmpfs (needs root) to simulate a full disk")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_full_disk_keeps_the_previous_checkpoint_and_stops(mnist_root, small_tmpfs):
    """A real ENOSPC from a 1.6 MB tmpfs: one checkpoint fits, the next does not."""
    run = small_tmpfs / "run"
    result = run_cli(
        "train",
        *tiny_args(
            run,
            "--max-steps",
            "40",
            "--checkpoint-every",
            "10",
            "--eval-every",
            "1000",
            "--keep-checkpoints",
            "5",
        ),
    )
    assert result.returncode != 0
    assert re.search(r"checkpoint at step \d+ failed \(.*MB free", result.stderr)
    assert "Traceback" not in result.stderr
    good = sorted(p for p in (run / "checkpoints").iterdir())
    assert good and all(p.name.startswith("step_") for p in good), "partial checkpoint left"
    assert all(verify(p) is None for p in good)
    assert good[-1].name in result.stderr  # names the last good checkpoint


def test_failed_checkpoint_write_is_cleaned_up_and_stops_training(mnist_root, tmp_path):
    run = tmp_path / "run"
    result = inject(
        "enospc-at-checkpoint=2", *tiny_args(run, "--max-steps", "40", "--checkpoint-every", "10")
    )
    assert result.returncode == 1
    assert (
        "checkpoint at step 20 failed (No space left on device;" in result.stderr
        and "Last good checkpoint: step_00000010" in result.stderr
    )
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000010"]
    assert verify(run / "checkpoints" / "step_00000010") is None
    assert max(m["step"] for m in metrics(run)) == 20  # it did not train on


def test_nan_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(mnist_root, tmp_path):
    run = tmp_path / "run"
    result = inject(
        "nan-at-step=13", *tiny_args(run, "--checkpoint-every", "10", "--log-every", "5")
    )
    assert result.returncode == 1
    assert "loss became nan at step 13" in result.stderr
    assert "step_00000010" in result.stderr and "Traceback" not in result.stderr
    checkpoints = [p.name for p in (run / "checkpoints").iterdir()]
    assert checkpoints == ["step_00000010"]
    assert all(torch.isfinite(t).all() for t in final_weights(run, 10).values())


def assert_stopped_before_checkpointing(run: Path, result, message: str) -> None:
    """Training stopped with `message`, naming step 5's checkpoint, the only one on disk
    (the fault struck at checkpoint step 10), whose weights are finite."""
    assert result.returncode == 1, result.stderr
    # The package's error is one line; `accelerate launch` adds its own traceback after it.
    assert message in result.stderr.split("Traceback")[0], result.stderr
    assert "last good checkpoint" in result.stderr.lower() and "step_00000005" in result.stderr
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000005"]
    assert all(torch.isfinite(t).all() for t in final_weights(run, 5).values())


def test_nan_gradients_at_a_checkpoint_step_are_never_saved(mnist_root, tmp_path):
    """The loss of step 10 is finite (computed before its update); the gradient norm is not."""
    run = tmp_path / "run"
    result = inject("nan-grad-at-step=10", *tiny_args(run, "--checkpoint-every", "5"))
    assert_stopped_before_checkpointing(run, result, "gradient norm became nan at step 10")


def test_nan_gradients_on_one_rank_of_two_are_never_saved(mnist_root, tmp_path):
    run = tmp_path / "run"
    flags = [f for f in tiny_args(run, "--checkpoint-every", "5") if f != "--cpu"]
    result = launch(
        ["--config_file", str(CONFIGS / "cpu_ddp.yaml")],
        INJECT,
        ["nan-grad-at-step=10@1", "train", *flags],
        timeout=240,
    )
    assert_stopped_before_checkpointing(run, result, "gradient norm became nan at step 10")


def test_weights_that_turn_nan_with_a_finite_loss_and_gradient_are_never_saved(
    mnist_root, tmp_path
):
    """EMA on: both the model and its average are checked before a save."""
    run = tmp_path / "run"
    flags = tiny_args(run, "--checkpoint-every", "5", "--ema-decay", "0.9")
    result = inject("nan-weights-at-step=10", *flags)
    assert_stopped_before_checkpointing(
        run, result, "the weights became non-finite at step 10; not checkpointed"
    )


def test_ranks_that_choose_different_checkpoints_refuse_to_train(mnist_root, tmp_path):
    """Rank 1 alone sees the newest checkpoint fail verification: it would resume from
    step 10 while rank 0 resumes from step 20, and DDP would not notice."""
    run = tmp_path / "run"
    flags = [f for f in tiny_args(run, "--max-steps", "20") if f != "--cpu"]
    ddp = ["--config_file", str(CONFIGS / "cpu_ddp.yaml")]
    first = launch(ddp, "denoise_dist.train", flags, timeout=240)
    assert first.returncode == 0, first.stderr
    # --dist-timeout bounds the hang of ranks that disagree, should the check ever go.
    flags = [f for f in tiny_args(run, "--max-steps", "40", "--dist-timeout", "60") if f != "--cpu"]
    result = launch(ddp, INJECT, ["unverified-step=20@1", "train", *flags], timeout=120)
    assert result.returncode != 0
    message = result.stderr.split("Traceback")[0]
    assert (
        "the processes chose different checkpoints to resume from "
        "(rank 0: step 20, rank 1: step 10)" in message
    ), result.stderr
    assert not (run / "checkpoints" / "step_00000030").exists()  # nobody trained on


def test_checkpoint_from_another_model_names_the_differing_fields(mnist_root, tmp_path):
    other = tmp_path / "other"
    assert (
        run_cli("train", *tiny_args(other, "--max-steps", "5", "--model", "conv_ae")).returncode
        == 0
    )
    result = run_cli(
        "train",
        *tiny_args(tmp_path / "new", "--resume", str(other / "checkpoints" / "step_00000005")),
    )
    assert result.returncode != 0
    assert "model: 'conv_ae' -> 'unet'" in result.stderr and "Traceback" not in result.stderr


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Exploit.marker}",))


@pytest.fixture(scope="module")
def five_step_run(mnist_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("five_steps") / "run"
    result = run_cli("train", *tiny_args(run, "--max-steps", "5"))
    assert result.returncode == 0, result.stderr
    return run


def test_an_untouched_checkpoint_resumes(five_step_run, tmp_path):
    """The control for the planted pickles below: the same resume succeeds unplanted."""
    run = tmp_path / "run"
    shutil.copytree(five_step_run, run)
    result = run_cli("train", *tiny_args(run, "--max-steps", "10"))
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and "at step 5" in result.stdout


@pytest.mark.parametrize("planted", ["optimizer.bin", "random_states_0.pkl"])
def test_a_pickle_planted_in_a_checkpoint_is_never_executed(five_step_run, tmp_path, planted):
    """Each file alone (Accelerate would swallow an error loading the RNG states)."""
    run = tmp_path / "run"
    shutil.copytree(five_step_run, run)
    checkpoint = run / "checkpoints" / "step_00000005"
    Exploit.marker = tmp_path / "pwned"
    (checkpoint / planted).write_bytes(pickle.dumps({"state": Exploit()}))
    write_manifest(checkpoint)  # the attacker also fixes the manifest
    result = run_cli("train", *tiny_args(run, "--max-steps", "10"))
    assert not Exploit.marker.exists(), "checkpoint loading executed a pickle"
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{planted} is not a plain tensor file; refused to unpickle it" in result.stderr


def test_no_secret_reaches_the_run_folder_and_nothing_is_world_writable(mnist_root, tmp_path):
    run = tmp_path / "run"
    secret = "0123456789abcdef0123456789abcdef01234567"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "denoise_dist",
            "train",
            *tiny_args(run, "--max-steps", "5", "--report-to", "wandb", "--wandb-mode", "offline"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0),
        env={**os.environ, "WANDB_API_KEY": secret, "WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    files = [p for p in run.rglob("*")]
    assert any(p.suffix == ".wandb" for p in files), "the W&B offline run was not written"
    # W&B sends the key as HTTP basic auth: base64 of "api:KEY" (and a netrc holds it raw).
    encoded = base64.b64encode(f"api:{secret}".encode())
    assert encoded.decode() not in result.stdout + result.stderr
    for path in files:
        if path.is_file():
            content = path.read_bytes()
            assert secret.encode() not in content, f"secret written to {path}"
            assert encoded not in content, f"base64 'api:KEY' written to {path}"
        assert not path.stat().st_mode & 0o002, f"{path} is world-writable"
