"""`accelerate launch` target for the rank-failure tests: the real training CLI, except
that one rank fails at one step, by raising (a crash) or by hanging (a stuck process;
not in the test suite for its ~1 minute of waiting, see docs/launching.md).

Usage: inject_rank_fault.py raise|hang RANK STEP [train flags...]. The fault is patched
in from here, so the package itself carries no test hooks.
"""

import os
import sys
import time

import denoise_dist.noise
from denoise_dist.cli import main

mode, fault_rank, fault_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
real_train_draw = denoise_dist.noise.train_draw


def train_draw_with_fault(seed, epoch, step, rows):
    if step == fault_step and int(os.environ.get("RANK", "0")) == fault_rank:
        if mode == "hang":
            time.sleep(3600)
        raise RuntimeError(f"injected fault in rank {fault_rank} at step {step}")
    return real_train_draw(seed, epoch, step, rows)


denoise_dist.noise.train_draw = train_draw_with_fault
sys.exit(main(["train", *sys.argv[4:]]))
