"""Training and evaluation data as uint8 tensors, and batches that are pure functions of
(seed, epoch, step), sharded across ranks (`batches.py`). No Dataset/DataLoader, no
per-sample transforms.

The kinds of data are one table, `DATASETS`: each `DatasetKind` (`kind.py`) loads its
training splits and its held-out evaluation images, fingerprints its files, and says
whether it trains on crops and whether --data-dir names the images themselves.
MNIST-style IDX files are `idx.py`, a folder of the user's own images `folder.py`. A new
kind is a module like those and one entry in the table.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

from denoise_dist.data import folder, idx
from denoise_dist.data.batches import (
    Sharding,
    TensorTrainSet,
    epoch_permutation,
    eval_shard,
    to_float,
)
from denoise_dist.data.folder import (
    VAL_CROPS_PER_IMAGE,
    CropTrainSet,
    bytes_available,
    cgroup_memory_free,
    fixed_crops,
    folder_files,
    read_folder_images,
)  # fmt: skip
from denoise_dist.data.idx import (
    DEFAULT_VAL_SIZE,
    FILES,
    TORCHVISION_NAMES,
    load_split,
    split_train_val,
)
from denoise_dist.data.kind import (
    DATA_ENV,
    NUM_SAMPLES,
    DatasetKind,
    EvalImages,
    Splits,
    fingerprint_changes,
)
from denoise_dist.errors import DataError

DEFAULT_ROOT = "./data"
FOLDER = "folder"
DATASETS: dict[str, DatasetKind] = {
    **{
        name: DatasetKind(
            f"{TORCHVISION_NAMES[name]} (IDX files, 28x28)", crops=False, needs_data_dir=False,
            load=partial(idx.load, name), eval_images=partial(idx.eval_images, name),
            fingerprint=partial(idx.fingerprint, name),
        )
        for name in TORCHVISION_NAMES
    },
    FOLDER: DatasetKind(
        "a folder of your own images (--data-dir)", crops=True, needs_data_dir=True,
        load=folder.load, eval_images=folder.eval_images, fingerprint=folder.fingerprint,
    ),
}  # fmt: skip


def resolve_data_root(*candidates: str | None) -> Path:
    """The first given candidate (e.g. --data-dir), then $DENOISE_DIST_DATA, then ./data."""
    given = [c for c in candidates if c]
    return Path(given[0] if given else os.environ.get(DATA_ENV) or DEFAULT_ROOT).expanduser()


def load(settings, seed: int, device, first=None) -> Splits:
    """The splits for training, as `settings` (the config's data section, or any object
    with its fields) says. `first` is a context in which only one process runs first (so
    only one downloads)."""
    root = resolve_data_root(settings.data_dir)
    kind = DATASETS[settings.dataset]
    return kind.load(settings, root, seed, torch.device(device), first or nullcontext)


def load_eval_images(
    settings, data_dir: str | None, max_images: int | None, first=None
) -> EvalImages:
    """The images `evaluate` scores and tunes on, for a model trained as `settings` says:
    from `data_dir` if given; else a folder model's own folder, or else
    $DENOISE_DIST_DATA, then the root it was trained from (if still there), then ./data."""
    kind = DATASETS[settings.dataset]
    if kind.needs_data_dir:  # the images themselves: no other place to look
        root = data_dir or settings.data_dir
        if not root or not Path(root).is_dir():
            raise DataError(
                f"the model was trained on the image folder {settings.data_dir}, which is not "
                f"here; pass --data-dir"
            )
        return kind.eval_images(settings, Path(root), max_images, first or nullcontext)
    stored = settings.data_dir if settings.data_dir and Path(settings.data_dir).is_dir() else None
    root = resolve_data_root(data_dir, os.environ.get(DATA_ENV), stored)
    return kind.eval_images(settings, root, max_images, first or nullcontext)


def fingerprint(dataset: str, root: Path) -> dict[str, dict]:
    """The training data's files, by path under `root`, as its kind fingerprints them."""
    return DATASETS[dataset].fingerprint(root)


__all__ = [
    "DATASETS", "DATA_ENV", "DEFAULT_VAL_SIZE", "FILES", "FOLDER", "NUM_SAMPLES",
    "TORCHVISION_NAMES", "VAL_CROPS_PER_IMAGE", "CropTrainSet", "DatasetKind", "EvalImages",
    "Sharding", "Splits", "TensorTrainSet", "bytes_available", "cgroup_memory_free",
    "epoch_permutation", "eval_shard", "fingerprint", "fingerprint_changes", "fixed_crops",
    "folder_files", "load", "load_eval_images", "load_split", "read_folder_images",
    "resolve_data_root", "split_train_val", "to_float",
]  # fmt: skip
