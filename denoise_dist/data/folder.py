"""A folder of the user's own images of any size (PNG, JPEG, TIFF, BMP; searched
recursively): a fixed fifth of the files (or `val_size`) is held out. Training reads
random `patch_size` crops of the other files (`CropTrainSet`) and validates on fixed
crops of the held-out ones; `evaluate` scores the held-out files whole and tunes on
fixed crops of the training files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from denoise_dist import images as image_files
from denoise_dist import rng
from denoise_dist.data import memory
from denoise_dist.data.batches import CropTrainSet, to_float
from denoise_dist.data.fingerprint import by_size_and_mtime
from denoise_dist.data.kind import NUM_SAMPLES, SPLIT_SEED, DatasetKind, EvalImages, Splits
from denoise_dist.errors import DataError

VAL_CROPS_PER_IMAGE = 16
MAX_TUNING_CROPS = 2000  # evaluate tunes its baselines on at most this many crops


def folder_files(root: Path, val_size: int | None) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files) of an image folder, split by a fixed permutation
    of the sorted file list (the same split for every run)."""
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is not a folder")
    files = image_files.find_images(root, recursive=True)
    if not files:
        raise DataError(f"{root} holds no PNG, JPEG, TIFF or BMP files (searched recursively)")
    held_out = val_size if val_size is not None else max(1, len(files) // 5)
    if held_out >= len(files):
        raise DataError(
            f"val_size {held_out} leaves no training files ({root} holds {len(files)} images)"
        )
    perm = torch.randperm(len(files), generator=rng.generator("split", SPLIT_SEED)).tolist()
    return [files[i] for i in sorted(perm[held_out:])], [files[i] for i in sorted(perm[:held_out])]


def read_folder_images(files: list[Path], min_size: int = 1) -> list[tuple[Path, torch.Tensor]]:
    """[(path, uint8 [H, W])] for every readable file at least `min_size` a side; each
    unreadable or too small file is one warning naming it."""
    loaded = []
    for path in files:
        try:
            pixels = image_files.read_uint8(path, max_pixels=2**31)
        except image_files.BadImage as e:
            warnings.warn(f"skipped {path}: {e}", stacklevel=2)
            continue
        if min(pixels.shape) < min_size:
            warnings.warn(
                f"skipped {path}: {pixels.shape[1]}x{pixels.shape[0]} is smaller than "
                f"--patch-size {min_size}",
                stacklevel=2,
            )
            continue
        loaded.append((path, pixels))
    return loaded


def fixed_crops(images: list[torch.Tensor], size: int, per_image: int) -> torch.Tensor:
    """uint8 [N, size, size]: up to `per_image` crops of each image on a regular grid."""
    crops = []
    for pixels in images:
        height, width = pixels.shape
        side = max(1, int(per_image**0.5))
        ys = torch.linspace(0, height - size, side).round().long().unique().tolist()
        xs = torch.linspace(0, width - size, side).round().long().unique().tolist()
        crops += [pixels[y : y + size, x : x + size] for y in ys for x in xs]
    return torch.stack(crops)


def check_memory(root: Path, files: list[Path]) -> None:
    """Refuse, before any pixel is decoded, a folder that every process on this machine
    cannot hold in host memory at once (each reads all of it)."""
    need = 0
    for path in files:  # from the headers
        try:
            height, width = image_files.image_size(path, max_pixels=2**31)
            need += height * width
        except image_files.BadImage:
            pass  # read_folder_images names it
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    free = memory.bytes_available(torch.device("cpu"))
    if need * processes > free:
        each = f" for each of {processes} processes on this machine" if processes > 1 else ""
        raise DataError(
            f"{root} holds {need / 2**30:.1f} GiB of pixels{each}, more than the "
            f"{free / 2**30:.1f} GiB of memory free to this job; train on a subset of the folder"
        )


def load(settings, root: Path, seed: int, device, first) -> Splits:
    """Nothing to download: every process reads at once, and none waits (`first` unused)."""
    patch = settings.patch_size
    train_files, val_files = folder_files(root, settings.val_size)
    check_memory(root, train_files + val_files)
    train = read_folder_images(train_files, min_size=patch)
    val = read_folder_images(val_files, min_size=patch)
    if not train:
        raise DataError(f"{root}: no readable training image at least {patch}x{patch} pixels")
    if not val:
        raise DataError(f"{root}: no readable held-out image at least {patch}x{patch} pixels")
    train_set = CropTrainSet([p for _, p in train], patch, seed, device, settings.augment)
    val_crops = fixed_crops([p for _, p in val], patch, VAL_CROPS_PER_IMAGE).to(device)
    return Splits(
        train_set,
        val_crops,
        val_crops[:NUM_SAMPLES],
        f"folder {root}: {len(train)} training files ({train_set.nbytes / 2**20:.1f} MiB of "
        f"pixels, on {train_set.home.type}), {len(val)} held-out files "
        f"({len(val_crops)} validation crops of {patch}x{patch})",
    )


def eval_images(settings, root: Path, max_images: int | None, first) -> EvalImages:
    """The held-out files (the first `max_images`), whole, each its own group and noise
    tag; tuned on fixed crops of the training files."""
    train_files, held_out = folder_files(root, settings.val_size)
    read = read_folder_images(held_out[:max_images])
    train = [p for _, p in read_folder_images(train_files, settings.patch_size)]
    if not read or not train:
        raise DataError(f"{root}: no readable held-out or training images")
    crops = fixed_crops(train, settings.patch_size, VAL_CROPS_PER_IMAGE)[:MAX_TUNING_CROPS]
    return EvalImages(
        [to_float(p[None]) for _, p in read],
        [f"test/{i}" for i in range(len(read))],
        to_float(crops),
        f"held-out files of {root}",
        f"crops of the training files ({len(crops)})",
        [path.relative_to(root).as_posix() for path, _ in read],
    )


def fingerprint(root: Path) -> dict[str, dict]:
    """Every image's size and modification time (a stat per file, cheap for any number)."""
    return by_size_and_mtime(root, image_files.find_images(root, recursive=True))


KIND = DatasetKind(
    "a folder of your own images (--data-dir)",
    crops=True,
    needs_data_dir=True,
    load=load,
    eval_images=eval_images,
    fingerprint=fingerprint,
)
