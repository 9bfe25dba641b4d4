"""Datasets as one uint8 tensor, and index-based batches sharded across ranks.

No Dataset/DataLoader and no per-sample transforms: a batch is `images[indices]`, taken
from a per-epoch seeded permutation, so any step's batch can be recomputed from
(seed, epoch, step) alone. That is what makes resume and world-size changes exact.
"""

from __future__ import annotations

import gzip
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from denoise_dist.errors import DataError
from denoise_dist.rng import generator

DATA_ENV = "DENOISE_DIST_DATA"
DEFAULT_ROOT = "./data"
# torchvision's folder (root/<name>/raw) and download logic for each dataset.
TORCHVISION_NAMES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SEED = 0  # the validation split is the same for every run seed
DOWNLOAD_TIMEOUT_S = 20


def resolve_data_root(flag: str | None) -> Path:
    """--data-dir, then $DENOISE_DIST_DATA, then ./data."""
    return Path(flag or os.environ.get(DATA_ENV) or DEFAULT_ROOT).expanduser()


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
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + _prod(shape)
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or padded: {len(raw)} bytes, header says {expected}")
    data = torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8)
    return data.reshape(shape)


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
        raise DataError(f"{dataset} is missing and {root} is not writable, so it cannot be "
                        f"downloaded there; pass --data-dir to a writable folder") from None
    cls = getattr(torchvision.datasets, TORCHVISION_NAMES[dataset])
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # offline must fail fast, never hang
    try:
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError variously
        raise DataError(f"download of {dataset} failed ({type(e).__name__}); "
                        f"{_where_to_put(dataset, root)}") from None
    finally:
        socket.setdefaulttimeout(previous)


def _where_to_put(dataset: str, root: Path) -> str:
    raw_dir = root / TORCHVISION_NAMES[dataset] / "raw"
    names = ", ".join(n for pair in FILES.values() for n in pair)
    return (f"put {names} (or their .gz) in {raw_dir}, or point --data-dir / ${DATA_ENV} "
            f"at a folder that has {TORCHVISION_NAMES[dataset]}/raw/")


def load_split(dataset: str, root: Path, split: str, download: bool = True) -> torch.Tensor:
    """One split of a dataset as a uint8 tensor [N, H, W]; downloads it if allowed and missing."""
    raw_dir = root / TORCHVISION_NAMES[dataset] / "raw"
    image_name, label_name = FILES[split]
    if _find(raw_dir, image_name) is None or _find(raw_dir, label_name) is None:
        if not download:
            raise DataError(f"{dataset} {split} files not found; {_where_to_put(dataset, root)}")
        _download(dataset, root)
    images = read_idx(_find(raw_dir, image_name))
    labels = read_idx(_find(raw_dir, label_name))
    if images.ndim != 3:
        raise DataError(f"{raw_dir / image_name} holds {images.ndim}-d data, expected images")
    if len(images) != len(labels):
        raise DataError(f"{raw_dir}: {len(images)} {split} images but {len(labels)} labels")
    return images


def split_train_val(images: torch.Tensor, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out `val_size` training images by a fixed permutation (independent of run seed)."""
    if val_size >= len(images):
        raise DataError(f"val_size {val_size} leaves no training images (have {len(images)})")
    perm = torch.randperm(len(images), generator=generator("split", SPLIT_SEED))
    return images[perm[val_size:]], images[perm[:val_size]]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W] -> float [N, 1, H, W] in [0, 1]."""
    return images.unsqueeze(1).float().div_(255)


@dataclass(frozen=True)
class Sharding:
    """Which images each rank trains on at each step.

    Every optimizer step consumes one global batch of `global_batch` images taken in
    order from the epoch's permutation. Rank r takes the r-th contiguous slice of it, and
    micro-batch m (of `grad_accum`) the m-th slice of that. The last `dropped_per_epoch`
    images of each permutation are skipped; they differ from epoch to epoch.
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
                f"= {self.world_size} x {self.grad_accum}")
        if self.steps_per_epoch == 0:
            raise DataError(f"batch_size {self.global_batch} exceeds the "
                            f"{self.num_examples} training images")

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

    def global_batch_indices(self, perm: torch.Tensor, step_in_epoch: int) -> torch.Tensor:
        start = step_in_epoch * self.global_batch
        return perm[start: start + self.global_batch]


def epoch_permutation(num_examples: int, seed: int, epoch: int, device="cpu") -> torch.Tensor:
    return torch.randperm(num_examples, generator=generator("perm", seed, epoch)).to(device)


def eval_shard(num_examples: int, world_size: int, rank: int) -> slice:
    """Contiguous, disjoint, covering slices: every evaluation image counted exactly once."""
    per_rank, extra = divmod(num_examples, world_size)
    start = rank * per_rank + min(rank, extra)
    return slice(start, start + per_rank + (1 if rank < extra else 0))
