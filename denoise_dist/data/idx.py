"""MNIST-style datasets (mnist, fashion_mnist, kmnist): IDX files in torchvision's layout
(root/MNIST/raw/...), downloaded where allowed and missing, one uint8 tensor [N, 28, 28]
a split. Training holds out a fixed `val_size` of the training split; `evaluate` scores
the test split and tunes on the held-out images."""

from __future__ import annotations

import gzip
import math
import socket
from pathlib import Path

import torch

from denoise_dist import rng
from denoise_dist.atomic import sha256_file
from denoise_dist.data import kind
from denoise_dist.data.batches import TensorTrainSet, to_float
from denoise_dist.errors import DataError

# torchvision's folder name (root/<name>/raw) and download class.
TORCHVISION_NAMES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEFAULT_VAL_SIZE = 5000
DOWNLOAD_TIMEOUT_S = 20


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
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or padded: {len(raw)} bytes, header says {expected}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


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
        f"put {names} (or their .gz) in {raw_dir}, or point --data-dir / ${kind.DATA_ENV} at a "
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
    perm = torch.randperm(len(images), generator=rng.generator("split", kind.SPLIT_SEED))
    return images[perm[val_size:]], images[perm[:val_size]]


def load(dataset: str, settings, root: Path, seed: int, device, first) -> kind.Splits:
    with first():  # only one process downloads
        train = load_split(dataset, root, "train", settings.download)
        test = load_split(dataset, root, "test", settings.download)
    train, val = split_train_val(train, _val_size(settings))
    return kind.Splits(
        TensorTrainSet(train.to(device), seed),
        val.to(device),
        test[: kind.NUM_SAMPLES].to(device),
        f"{dataset}: {len(train)} training, {len(val)} validation images",
    )


def eval_images(
    dataset: str, settings, root: Path, max_images: int | None, first
) -> kind.EvalImages:
    """The test split (its first `max_images`), one group; tuned on the validation split."""
    with first():
        test = load_split(dataset, root, "test", settings.download)
        train = load_split(dataset, root, "train", settings.download)
    val = split_train_val(train, _val_size(settings))[1]
    return kind.EvalImages(
        [to_float(test[:max_images])],
        ["test"],
        to_float(val),
        "test",
        f"validation split ({len(val)} images)",
    )


def _val_size(settings) -> int:
    return DEFAULT_VAL_SIZE if settings.val_size is None else settings.val_size


def fingerprint(dataset: str, root: Path) -> dict[str, dict]:
    """The IDX files by size and SHA-256: a replaced file of the same size is caught."""
    raw_dir = root / TORCHVISION_NAMES[dataset] / "raw"
    found = [_find(raw_dir, name) for pair in FILES.values() for name in pair]
    return {
        str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in found
        if p is not None
    }
