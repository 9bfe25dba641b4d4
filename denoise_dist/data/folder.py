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
from denoise_dist.data.batches import Sharding, to_float
from denoise_dist.data.kind import NUM_SAMPLES, SPLIT_SEED, EvalImages, Splits
from denoise_dist.errors import DataError

VAL_CROPS_PER_IMAGE = 16
MAX_TUNING_CROPS = 2000  # evaluate tunes its baselines on at most this many crops
CGROUP_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a huge number (2**63 - a page)
DEVICE_MEMORY_SHARE = 0.5  # keep a folder's pixels on the GPU only below this share of free memory


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


class CropTrainSet:
    """Random square crops from images of any size, packed into one flat uint8 tensor.

    Every valid crop position of every image is equally likely (so larger images give
    more crops). An epoch is as many crops as the images hold non-overlapping patches.
    With `augment`, each crop is also flipped and rotated by one of the 8 symmetries of a
    square, drawn like its position: 8x the distinct patches at no cost, the usual
    augmentation for training denoisers on few images."""

    def __init__(
        self, pictures: list[torch.Tensor], patch: int, seed: int, device, augment: bool = False
    ):
        self.patch, self.seed, self.device = patch, seed, torch.device(device)
        heights = torch.tensor([p.shape[0] for p in pictures])
        widths = torch.tensor([p.shape[1] for p in pictures])
        self.nbytes = int((heights * widths).sum())
        # Keep the pixels on the device when they fit (GPU: in half its free memory);
        # else on the host, where each batch's crops are gathered and then moved.
        home = self.device
        if home.type != "cpu" and self.nbytes > DEVICE_MEMORY_SHARE * bytes_available(home):
            home = torch.device("cpu")
        self.home = home
        self.pixels = torch.cat([p.flatten() for p in pictures]).to(home)
        self.offsets = (torch.cumsum(heights * widths, 0) - heights * widths).to(home)
        self.widths = widths.to(home)
        positions = (heights - patch + 1) * (widths - patch + 1)  # valid top-left corners
        self.positions_before = (torch.cumsum(positions, 0) - positions).to(home)
        self.position_ends = torch.cumsum(positions, 0).to(home)
        self.position_widths = (widths - patch + 1).to(home)
        self.total_positions = int(positions.sum())
        self.num_examples = max(1, int((heights // patch * (widths // patch)).sum()))
        within = torch.arange(patch, device=home)
        rows, cols = within.repeat_interleave(patch), within.repeat(patch)
        # Where each output pixel of a crop is read from, for each symmetry: [8 or 1, P*P].
        flip = patch - 1
        symmetries = [(rows, cols), (rows, flip - cols), (flip - rows, cols),
                      (flip - rows, flip - cols), (cols, rows), (cols, flip - rows),
                      (flip - cols, rows), (flip - cols, flip - rows)]  # fmt: skip
        kept = symmetries if augment else symmetries[:1]
        self.patch_rows = torch.stack([r for r, _ in kept])
        self.patch_cols = torch.stack([c for _, c in kept])

    def batch(self, step: int, rows: torch.Tensor, sharding: Sharding) -> torch.Tensor:
        rows = rows.to(self.home)
        key = rng.key("crop", self.seed, step, device=self.home)
        # 62 random bits per row: a crop position, uniform over all valid positions.
        high = rng.random_bits(rng.subkey(key, 0), rows) & 0x3FFFFFFF
        low = rng.random_bits(rng.subkey(key, 1), rows)
        position = ((high << 32) | low) % self.total_positions
        image = torch.searchsorted(self.position_ends, position, right=True)
        local = position - self.positions_before[image]
        top = local // self.position_widths[image]
        left = local % self.position_widths[image]
        width = self.widths[image]
        start = self.offsets[image] + top * width + left
        symmetry = (  # no draw without --augment: the one identity pattern for every row
            rng.random_bits(rng.subkey(key, 2), rows) % len(self.patch_rows)
            if len(self.patch_rows) > 1
            else torch.zeros_like(rows)
        )
        patch_rows, patch_cols = self.patch_rows[symmetry], self.patch_cols[symmetry]
        index = start[:, None] + patch_rows * width[:, None] + patch_cols
        crops = self.pixels[index].view(-1, self.patch, self.patch)
        return to_float(crops.to(self.device, non_blocking=True))


def bytes_available(device: torch.device) -> int:
    """Free memory where `device`'s tensors live: for the CPU, the host's free memory or
    what this job's cgroup (SLURM's --mem, a container's limit) still allows, if less."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        host = 2**63
    cgroup = cgroup_memory_free()
    return host if cgroup is None else min(host, cgroup)


def cgroup_memory_free(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> int | None:
    """Bytes this process's cgroup and every cgroup above it still allow (limit minus
    usage, the tightest), or None where none sets a limit. cgroup v2 and v1."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: memory.max / memory.current
            base, limit_file, usage_file = root, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # v1
            base = root / "memory"
            limit_file, usage_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        free = []
        folder = base / path.lstrip("/")
        while True:
            try:
                limit = (folder / limit_file).read_text().strip()
                if limit != "max" and int(limit) < CGROUP_NO_LIMIT:
                    free.append(int(limit) - int((folder / usage_file).read_text()))
            except (OSError, ValueError):
                pass  # not mounted here, or not readable: no limit known at this level
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
        if free:
            return max(0, min(free))
    return None


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
    free = bytes_available(torch.device("cpu"))
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
    stats = {p: p.stat() for p in image_files.find_images(root, recursive=True)}
    return {
        str(p.relative_to(root)): {"size": s.st_size, "mtime_ns": s.st_mtime_ns}
        for p, s in stats.items()
    }
