"""Shared fixtures. A test that needs an absent real part skips on a user's machine and
fails in CI (CI=true), so CI can never pass by skipping. The one exception is the gpu
tier (tests/gpu), since CI has no GPU."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from benchmarks.own_images import PHOTOGRAPHS  # scikit-image's photographs
from tests.helpers import REPO, require

SHARED_DATA = REPO.parent / "shared" / "data"
MNIST_TRAIN_IMAGES = ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")

# Tests (not the package) know where the shared MNIST copy lives.
if "DENOISE_DIST_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["DENOISE_DIST_DATA"] = str(SHARED_DATA)
os.environ.setdefault("WANDB_MODE", "disabled")  # no test may reach the network
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    root = Path(os.environ.get("DENOISE_DIST_DATA", ""))
    require(
        any((root / "MNIST" / "raw" / name).exists() for name in MNIST_TRAIN_IMAGES),
        f"real MNIST not found under DENOISE_DIST_DATA={root or '(unset)'}",
    )
    return root


def skimage_data() -> Path:
    try:
        import skimage
    except ImportError:
        require(False, "scikit-image is not installed (pip install -e '.[test]')")
    return Path(skimage.__file__).parent / "data"


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """A folder of real photographs (scikit-image's), some in a subfolder."""
    source = skimage_data()
    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    for i, name in enumerate(PHOTOGRAPHS):
        shutil.copy(source / name, folder / ("more" if i % 3 == 0 else "") / name)
    return folder


@pytest.fixture
def fresh_accelerate():
    """Accelerate keeps process-wide singletons; reset them around in-process runs."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    def reset():
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()

    reset()
    yield reset  # call it between runs in one test
    reset()
