"""Run `denoise-dist train` with one fault injected from outside the package.

    python tests/faults/inject.py nan-at-step=7 train --output-dir ...

Run under `accelerate launch`, a fault written `name=step@rank` strikes that rank only.

The package has no test hooks: faults are monkeypatched in here, before the CLI runs.
"""

import errno
import os
import sys

import torch

import denoise_dist.noise
from denoise_dist.cli import main


def nan_at_step(bad_step: int) -> None:
    """Poison the noisy batch of one step, as a bad sample or an overflow would."""
    real_draw, real_add_noise = denoise_dist.noise.train_draw, denoise_dist.noise.add_noise
    current = {}

    def draw(seed, epoch, step, rows):
        current["step"] = step  # step is 0-based
        return real_draw(seed, epoch, step, rows)

    def poisoned(name, clean, draw, params):
        noisy = real_add_noise(name, clean, draw, params)
        return noisy * float("nan") if current.get("step") == bad_step - 1 else noisy

    denoise_dist.noise.train_draw, denoise_dist.noise.add_noise = draw, poisoned


def step_tracker() -> dict:
    """{"step": the 1-based step in progress}, kept current by wrapping the noise draw."""
    real_draw, current = denoise_dist.noise.train_draw, {"step": 0}

    def draw(seed, epoch, step, rows):
        current["step"] = step + 1
        return real_draw(seed, epoch, step, rows)

    denoise_dist.noise.train_draw = draw
    return current


def nan_grad_at_step(bad_step: int) -> None:
    """NaN gradients at one step with a finite loss, as an overflow in backward would give;
    under DDP they reach every rank through the gradient all-reduce."""
    from accelerate import Accelerator

    current, real_backward = step_tracker(), Accelerator.backward

    def backward(self, loss, **kwargs):
        if current["step"] == bad_step:
            loss = loss * float("nan")
        return real_backward(self, loss, **kwargs)

    Accelerator.backward = backward


def nan_weights_at_step(bad_step: int) -> None:
    """One weight becomes NaN in the update of one step, with a finite loss and gradient
    norm: only a check of the weights themselves can catch it."""
    current, real_step = step_tracker(), torch.optim.Adam.step

    def step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        if current["step"] == bad_step:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return result

    torch.optim.Adam.step = step


def unverified_step(step: int) -> None:
    """This process sees checkpoint `step` fail verification, as a node of a shared file
    system that has not yet seen all of its bytes would."""
    import denoise_dist.checkpoint

    real_verify = denoise_dist.checkpoint.verify

    def verify(folder):
        if folder.name == f"step_{step:08d}":
            return "injected: not yet visible on this node"
        return real_verify(folder)

    denoise_dist.checkpoint.verify = verify


def enospc_at_checkpoint(nth: int) -> None:
    """The nth accelerator.save_state fails half-way with a full disk."""
    from accelerate import Accelerator

    real, calls = Accelerator.save_state, [0]

    def failing(self, output_dir=None, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            os.makedirs(output_dir, exist_ok=True)
            torch.save({"half": torch.zeros(10)}, f"{output_dir}/model.safetensors")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir, **kwargs)

    Accelerator.save_state = failing


def stall_in_checkpoint(nth: int) -> None:
    """The nth checkpoint stalls after its files are written, before its manifest and
    rename, so that a test can kill -9 the process in the middle of a checkpoint."""
    import time

    from accelerate import Accelerator

    real, calls = Accelerator.save_state, [0]

    def stalling(self, output_dir=None, **kwargs):
        result = real(self, output_dir, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            time.sleep(600)
        return result

    Accelerator.save_state = stalling


FAULTS = {
    "nan-at-step": nan_at_step,
    "nan-grad-at-step": nan_grad_at_step,
    "nan-weights-at-step": nan_weights_at_step,
    "unverified-step": unverified_step,
    "enospc-at-checkpoint": enospc_at_checkpoint,
    "stall-in-checkpoint": stall_in_checkpoint,
}

if __name__ == "__main__":
    name, value = sys.argv[1].split("=")
    value, _, rank = value.partition("@")
    if not rank or int(rank) == int(os.environ.get("RANK", "0")):
        FAULTS[name](int(value))
    sys.exit(main(sys.argv[2:]))
