"""What every dataset kind provides (`DatasetKind`): the splits training reads (`Splits`),
the images `evaluate` scores and tunes on (`EvalImages`), and the fingerprint of its
files that a resume compares (`fingerprint_changes`)."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import torch

from denoise_dist.data.batches import TrainSet

DATA_ENV = "DENOISE_DIST_DATA"
SPLIT_SEED = 0  # the validation split is the same for every run seed
NUM_SAMPLES = 8  # rows of the noisy | denoised | clean grid


@dataclass
class Splits:
    """What training reads: batches, the validation set, and the grid's sample images."""

    train: TrainSet
    val: torch.Tensor  # uint8 [N, H, W] on the device: held-out images or fixed crops
    samples: torch.Tensor  # uint8 [NUM_SAMPLES, H, W] on the device
    description: str


@dataclass
class EvalImages:
    """What `evaluate` scores: float [n, 1, H, W] groups on the CPU (images of one size
    share a group), each with the tag of its fixed evaluation noise; and the images the
    baselines are tuned on, never scored."""

    groups: list[torch.Tensor]
    noise_tags: list[str]
    tuning: torch.Tensor
    split: str
    tuning_from: str
    names: list[str] | None = None  # a folder's files, relative to its root
    starts: list[int] = field(init=False)  # each group's first index in the whole set

    def __post_init__(self):
        self.starts = [0, *accumulate(len(g) for g in self.groups)][:-1]

    @property
    def count(self) -> int:
        return sum(len(g) for g in self.groups)

    def position(self, index: int) -> tuple[int, int]:
        """(group, row in it) of image `index` of the whole set."""
        group = bisect.bisect_right(self.starts, index) - 1
        return group, index - self.starts[group]


@dataclass(frozen=True)
class DatasetKind:
    """One kind of data: what the rest of the package asks of it. A new kind is one
    entry in `data.DATASETS`."""

    summary: str
    crops: bool  # trains on random crops of images of any size (else whole equal-size images)
    needs_data_dir: bool  # --data-dir names the images themselves (else a data root)
    # (settings, root, seed, device, first) -> Splits; `first` runs its block on one
    # process first (the one that downloads), when the kind needs it.
    load: Callable[..., Splits]
    # (settings, root, max_images, first) -> EvalImages: the held-out images, whole.
    eval_images: Callable[..., EvalImages]
    fingerprint: Callable[[Path], dict[str, dict]]  # root -> {file: what a resume compares}


def fingerprint_changes(old: dict, new: dict, root: Path) -> str | None:
    """What differs between two fingerprints, in one line, or None."""
    changes = {
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
        "changed": sorted(k for k in old.keys() & new.keys() if old[k] != new[k]),
    }
    return (
        "; ".join(
            f"{len(names)} file{'s' * (len(names) > 1)} {how} under {root}: {', '.join(names[:3])}"
            + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            for how, names in changes.items()
            if names
        )
        or None
    )
