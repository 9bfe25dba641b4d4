"""Named presets (`--recipe NAME`): one table of tested settings for a time budget.

A recipe is a set of config values applied first, so a YAML file and flags still
override any of them. Each was chosen from measured sweeps (benchmarks/, README
"Recipes"); `summary` says what it was measured to reach, where.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    summary: str
    values: dict = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    "cpu-10min": Recipe(
        "unet for 10 minutes of a 2-core CPU with native bf16 (AVX512-BF16 or AMX)",
        {
            "model": "unet", "width": 32, "depth": 2, "batch_size": 128, "max_steps": 2000,
            "lr": 2e-3, "schedule": "cosine", "warmup_steps": 100, "mixed_precision": "bf16",
            "eval_every": 500, "checkpoint_every": 500,
        },
    ),
}  # fmt: skip
