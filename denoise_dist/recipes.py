"""Named presets (`--recipe NAME`): one table of settings chosen for a time budget.

A recipe is a set of config values applied first, so a YAML file and flags still
override any of them. The CPU recipes were chosen from the sweeps kept in
benchmarks/quality_sweep.md; the recipes table in docs/configuration.md says what each reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    summary: str
    values: dict = field(default_factory=dict)


# Batch 64 beat batch 128 at the same CPU time (more updates; a step costs less than
# half), and depth 3 or width 24-48 did not pay for their cost. bf16 needs a CPU that has
# it in hardware (AVX512-BF16 or AMX); elsewhere pass --mixed-precision fp32 and expect
# about twice the time.
CPU = {
    "model": "unet", "width": 32, "depth": 2, "batch_size": 64, "lr": 1.5e-3,
    "schedule": "cosine", "warmup_steps": 100, "mixed_precision": "bf16",
}  # fmt: skip

RECIPES: dict[str, Recipe] = {
    "cpu-10min": Recipe(
        "unet, 3850 steps of batch 64 in bf16: about 10 minutes on 2 CPU cores",
        {**CPU, "max_steps": 3850, "eval_every": 1000, "checkpoint_every": 1000},
    ),
    "cpu-4min": Recipe(
        "unet, 1700 steps of batch 64 in bf16: about 4 minutes on 2 CPU cores",
        {**CPU, "max_steps": 1700, "eval_every": 850, "checkpoint_every": 850},
    ),
    # Measured on scikit-image's photographs (benchmarks/own_images.py); batch 16 of 64x64
    # crops beat batch 32 at the same CPU time, and a depth-3 unet did worse.
    "photos-10min": Recipe(
        "for a folder of photographs (--data-dir; pass your --sigma): unet, 2700 steps of "
        "16 flipped and rotated 64x64 crops in bf16: about 10 minutes on 2 CPU cores",
        {
            **CPU, "dataset": "folder", "augment": True, "patch_size": 64, "batch_size": 16,
            "lr": 1e-3, "max_steps": 2700, "eval_every": 900, "checkpoint_every": 900,
        },
    ),
    "gpu-5min": Recipe(
        "a wider unet, 24000 steps of batch 256 in bf16, compiled: about 2 minutes on one "
        "H100 (benchmarks/gpu_recipe.sh)",
        {
            "model": "unet", "width": 48, "depth": 2, "batch_size": 256, "lr": 1e-3,
            "schedule": "cosine", "warmup_steps": 500, "mixed_precision": "bf16",
            "max_steps": 24000, "eval_every": 6000, "checkpoint_every": 6000,
        },
    ),
}  # fmt: skip
