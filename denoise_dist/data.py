"""Training data as uint8 tensors on the device, and batches that are pure functions of
(seed, epoch, step), sharded across ranks.

No Dataset/DataLoader and no per-sample transforms. Two kinds of dataset (`DATASETS`):

- MNIST-style (mnist, fashion_mnist, kmnist): IDX files in torchvision's layout, one
  uint8 tensor [N, 28, 28]. A step's global batch is a slice of the epoch's seeded
  permutation.
- folder: the user's own images of any size (PNG, JPEG, TIFF, BMP; searched
  recursively), packed into one flat uint8 tensor. A step's global batch is random
  `patch_size` crops whose image and position are a hash of (seed, step, row).

Either way rank r computes only rows [r*B/W, (r+1)*B/W) of the global batch, and gets
exactly what a single process gets for those rows. That is what makes resume and
world-size changes exact.
"""

from __future__ import annotations

import gzip
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from denoise_dist import images as image_files
from denoise_dist import rng
from denoise_dist.atomic import sha256_file
from denoise_dist.errors import DataError

DATA_ENV = "DENOISE_DIST_DATA"
DEFAULT_ROOT = "./data"
FOLDER = "folder"
# MNIST-style datasets: torchvision's folder name (root/<name>/raw) and download class.
TORCHVISION_NAMES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}


@dataclass(frozen=True)
class DatasetKind:
    """One kind of training data, and what the rest of the package asks of it."""

    summary: str
    crops: bool  # trains on random crops of images of any size (else whole equal-size images)
    needs_data_dir: bool  # --data-dir names the images themselves (else a data root)


DATASETS: dict[str, DatasetKind] = {
    **{
        name: DatasetKind(f"{folder} (IDX files, 28x28)", crops=False, needs_data_dir=False)
        for name, folder in TORCHVISION_NAMES.items()
    },
    FOLDER: DatasetKind(
        "a folder of your own images (--data-dir)", crops=True, needs_data_dir=True
    ),
}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SEED = 0  # the validation split is the same for every run seed
DEFAULT_VAL_SIZE = 5000  # MNIST-style: images; a folder holds out a fifth of its files
VAL_CROPS_PER_IMAGE = 16
NUM_SAMPLES = 8  # rows of the noisy | denoised | clean grid
DOWNLOAD_TIMEOUT_S = 20
DEVICE_MEMORY_SHARE = 0.5  # keep a folder's pixels on the GPU only below this share of free memory


def resolve_data_root(*candidates: str | None) -> Path:
    """The first given candidate (e.g. --data-dir), then $DENOISE_DIST_DATA, then ./data."""
    given = [c for c in candidates if c]
    return Path(given[0] if given else os.environ.get(DATA_ENV) or DEFAULT_ROOT).expanduser()


# --- MNIST-style IDX files --------------------------------------------------------------


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped) of unsigned bytes, checking magic and size."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (wrong magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path} has a truncated header")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + _prod(shape)
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or padded: {len(raw)} bytes, header says {expected}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _prod(xs: list[int]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _find(raw_dir: Path, name: str) -> Path | None:
    for candidate in (raw_dir / name, raw_dir / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def _download(dataset: str, root: Path) -> None:
    import torchvision

    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError:
        raise DataError(
            f"{dataset} is missing and {root} is not writable, so it cannot be downloaded "
            f"there; pass --data-dir to a writable folder"
        ) from None
    cls = getattr(torchvision.datasets, TORCHVISION_NAMES[dataset])
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # offline must fail fast, never hang
    try:
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError variously
        raise DataError(
            f"download of {dataset} failed ({type(e).__name__}); {_where_to_put(dataset, root)}"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _where_to_put(dataset: str, root: Path) -> str:
    raw_dir = root / TORCHVISION_NAMES[dataset] / "raw"
    names = ", ".join(n for pair in FILES.values() for n in pair)
    return (
        f"put {names} (or their .gz) in {raw_dir}, or point --data-dir / ${DATA_ENV} at a "
        f"folder that has {TORCHVISION_NAMES[dataset]}/raw/"
    )


def load_split(dataset: str, root: Path, split: str, download: bool = True) -> torch.Tensor:
    """One split of a dataset as a uint8 tensor [N, H, W]; downloads it if allowed and missing."""
    raw_dir = root / TORCHVISION_NAMES[dataset] / "raw"
    image_name, label_name = FILES[split]
    if _find(raw_dir, image_name) is None or _find(raw_dir, label_name) is None:
        if not download:
            raise DataError(f"{dataset} {split} files not found; {_where_to_put(dataset, root)}")
        _download(dataset, root)
    images = read_idx(_find(raw_dir, image_name))  # type: ignore[arg-type]
    labels = read_idx(_find(raw_dir, label_name))  # type: ignore[arg-type]
    if images.ndim != 3:
        raise DataError(f"{raw_dir / image_name} holds {images.ndim}-d data, expected images")
    if len(images) != len(labels):
        raise DataError(f"{raw_dir}: {len(images)} {split} images but {len(labels)} labels")
    return images


def split_train_val(images: torch.Tensor, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out `val_size` training images by a fixed permutation (independent of run seed)."""
    if val_size >= len(images):
        raise DataError(f"val_size {val_size} leaves no training images (have {len(images)})")
    perm = torch.randperm(len(images), generator=rng.generator("split", SPLIT_SEED))
    return images[perm[val_size:]], images[perm[:val_size]]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W] -> float [N, 1, H, W] in [0, 1]."""
    return images.unsqueeze(1).float().div_(255)


# --- a folder of the user's own images --------------------------------------------------


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


CGROUP_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a huge number (2**63 - a page)


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


# --- training sets ----------------------------------------------------------------------


@dataclass(frozen=True)
class Sharding:
    """Which rows of each step's global batch this rank trains on.

    Every optimizer step consumes one global batch of `global_batch` examples. Rank r
    takes the r-th contiguous slice of it, and micro-batch m (of `grad_accum`) the m-th
    slice of that. An epoch is `num_examples // global_batch` steps; for MNIST-style data
    the last `dropped_per_epoch` images of each permutation are skipped, a different set
    each epoch.
    """

    num_examples: int
    global_batch: int
    world_size: int = 1
    rank: int = 0
    grad_accum: int = 1

    def __post_init__(self):
        if self.global_batch % (self.world_size * self.grad_accum):
            raise DataError(
                f"batch_size {self.global_batch} must divide by processes x grad_accum "
                f"= {self.world_size} x {self.grad_accum}"
            )
        if self.steps_per_epoch == 0:
            raise DataError(
                f"batch_size {self.global_batch} exceeds the {self.num_examples} training "
                f"examples of an epoch"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch

    @property
    def dropped_per_epoch(self) -> int:
        return self.num_examples % self.global_batch

    @property
    def micro_batch(self) -> int:
        return self.global_batch // (self.world_size * self.grad_accum)

    def rank_slice(self, micro: int = 0) -> slice:
        """This rank's part of a global batch, for one micro-batch."""
        start = (self.rank * self.grad_accum + micro) * self.micro_batch
        return slice(start, start + self.micro_batch)

    def rows(self, micro: int, device) -> torch.Tensor:
        """The global batch rows of one micro-batch, as an index tensor."""
        part = self.rank_slice(micro)
        return torch.arange(part.start, part.stop, device=device)


def epoch_permutation(num_examples: int, seed: int, epoch: int, device="cpu") -> torch.Tensor:
    return torch.randperm(num_examples, generator=rng.generator("perm", seed, epoch)).to(device)


class TensorTrainSet:
    """MNIST-style: equal-size images [N, H, W]; each epoch is a seeded permutation."""

    def __init__(self, images: torch.Tensor, seed: int):
        self.images = images
        self.seed = seed
        self.num_examples = len(images)
        self._perm: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            perm = epoch_permutation(self.num_examples, self.seed, epoch, self.images.device)
            self._perm = (epoch, perm)
        return self._perm[1]

    def batch(self, step: int, rows: torch.Tensor, sharding: Sharding) -> torch.Tensor:
        """float [len(rows), 1, H, W]: rows `rows` of step `step`'s global batch."""
        epoch, step_in_epoch = divmod(step, sharding.steps_per_epoch)
        indices = self.permutation(epoch)[step_in_epoch * sharding.global_batch + rows]
        return to_float(self.images[indices])


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


@dataclass
class Splits:
    """What training reads: batches, the validation set, and the grid's sample images."""

    train: TensorTrainSet | CropTrainSet
    val: torch.Tensor  # uint8 [N, H, W] on the device: held-out images or fixed crops
    samples: torch.Tensor  # uint8 [NUM_SAMPLES, H, W] on the device
    description: str


def load(settings, seed: int, device, first=None) -> Splits:
    """The splits for training, as `settings` (the config's data section, or any object
    with its fields) says. `first` is a context in which only one process runs first (so
    only one downloads)."""
    from contextlib import nullcontext

    device = torch.device(device)
    dataset, root = settings.dataset, resolve_data_root(settings.data_dir)
    val_size, patch = settings.val_size, settings.patch_size
    if DATASETS[dataset].crops:  # nothing to download: every process reads at once, and
        return _load_folder(root, val_size, patch, seed, device, settings.augment)  # none waits
    with first() if first is not None else nullcontext():
        train = load_split(dataset, root, "train", settings.download)
        test = load_split(dataset, root, "test", settings.download)
    train, val = split_train_val(train, DEFAULT_VAL_SIZE if val_size is None else val_size)
    return Splits(
        TensorTrainSet(train.to(device), seed),
        val.to(device),
        test[:NUM_SAMPLES].to(device),
        f"{dataset}: {len(train)} training, {len(val)} validation images",
    )


def _load_folder(
    root: Path, val_size: int | None, patch: int, seed: int, device, augment: bool
) -> Splits:
    train_files, val_files = folder_files(root, val_size)
    need = 0
    for path in train_files + val_files:  # from the headers, before any pixel is decoded
        try:
            height, width = image_files.image_size(path, max_pixels=2**31)
            need += height * width
        except image_files.BadImage:
            pass  # read_folder_images names it
    # Every process on this machine reads the whole folder into host memory at once.
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    free = bytes_available(torch.device("cpu"))
    if need * processes > free:
        each = f" for each of {processes} processes on this machine" if processes > 1 else ""
        raise DataError(
            f"{root} holds {need / 2**30:.1f} GiB of pixels{each}, more than the "
            f"{free / 2**30:.1f} GiB of memory free to this job; train on a subset of the folder"
        )
    train = read_folder_images(train_files, min_size=patch)
    val = read_folder_images(val_files, min_size=patch)
    if not train:
        raise DataError(f"{root}: no readable training image at least {patch}x{patch} pixels")
    if not val:
        raise DataError(f"{root}: no readable held-out image at least {patch}x{patch} pixels")
    train_set = CropTrainSet([p for _, p in train], patch, seed, device, augment)
    val_crops = fixed_crops([p for _, p in val], patch, VAL_CROPS_PER_IMAGE).to(device)
    return Splits(
        train_set,
        val_crops,
        val_crops[:NUM_SAMPLES],
        f"folder {root}: {len(train)} training files ({train_set.nbytes / 2**20:.1f} MiB of "
        f"pixels, on {train_set.home.type}), {len(val)} held-out files "
        f"({len(val_crops)} validation crops of {patch}x{patch})",
    )


def eval_shard(num_examples: int, world_size: int, rank: int) -> slice:
    """Contiguous, disjoint, covering slices: every evaluation image counted exactly once."""
    per_rank, extra = divmod(num_examples, world_size)
    start = rank * per_rank + min(rank, extra)
    return slice(start, start + per_rank + (1 if rank < extra else 0))


# --- what a resume checks -----------------------------------------------------------------


def fingerprint(dataset: str, root: Path) -> dict[str, dict]:
    """The training data's files, by path under `root`: for a folder each image's size and
    modification time (a stat per file, cheap for any number of files); for MNIST-style
    data each file's size and SHA-256 (all 55 MB of MNIST: 0.1-0.2 s on 2 CPU cores)."""
    if dataset == FOLDER:
        stats = {p: p.stat() for p in image_files.find_images(root, recursive=True)}
        return {
            str(p.relative_to(root)): {"size": s.st_size, "mtime_ns": s.st_mtime_ns}
            for p, s in stats.items()
        }
    raw_dir = root / TORCHVISION_NAMES[dataset] / "raw"
    found = [_find(raw_dir, name) for pair in FILES.values() for name in pair]
    return {
        str(p.relative_to(root)): {
            "size": p.stat().st_size,
            "sha256": sha256_file(p),
        }
        for p in found
        if p is not None
    }


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
