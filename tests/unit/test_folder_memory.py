"""The folder memory guard: refused before any pixel is decoded, counting every process
on the machine and the job's cgroup limit; the device-or-host choice for the pixels; and
no process waiting in a barrier while another reads the folder."""

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from denoise_dist import data
from denoise_dist.errors import DataError
from tests.helpers import folder_settings

SIDE = 64  # each test image is SIDE x SIDE grey pixels


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        pixels = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
    return root


NEED = 5 * SIDE * SIDE  # bytes of uint8 pixels in the folder


def never_decode(*args, **kwargs):
    raise AssertionError("a pixel was decoded before the memory check")


def load_folder(root: Path, device="cpu", first=None) -> data.Splits:
    return data.load(folder_settings(root, 1, 16), 0, device, first)


def test_a_folder_larger_than_free_memory_is_refused_before_decoding(folder, monkeypatch):
    monkeypatch.setattr(data.folder, "bytes_available", lambda device: NEED - 1)
    monkeypatch.setattr(data.folder.image_files, "read_uint8", never_decode)
    with pytest.raises(DataError, match="more than the 0.0 GiB of memory free to this job"):
        load_folder(folder)


def test_every_process_on_the_machine_is_counted(folder, monkeypatch):
    """Four processes each read the whole folder: four times its pixels must fit."""
    monkeypatch.setattr(data.folder, "bytes_available", lambda device: 2 * NEED)
    monkeypatch.setattr(data.folder.image_files, "read_uint8", never_decode)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(DataError, match="for each of 4 processes on this machine"):
        load_folder(folder)


def test_a_folder_that_fits_loads(folder, monkeypatch):
    monkeypatch.setattr(data.folder, "bytes_available", lambda device: NEED)
    splits = load_folder(folder)
    assert splits.train.nbytes == 4 * SIDE * SIDE  # one of five files held out


def test_folder_loading_waits_for_no_other_process(folder):
    """MNIST may download on the main process first while the others wait in a barrier
    bounded by --dist-timeout; a folder has nothing to download, so no one waits."""

    @contextmanager
    def barrier():
        raise AssertionError("folder loading entered main_process_first")
        yield

    assert load_folder(folder, first=barrier).train.num_examples > 0


@pytest.mark.parametrize(("free", "home"), [(10 * NEED, "meta"), (NEED, "cpu")])
def test_pixels_stay_on_the_device_only_below_half_its_free_memory(monkeypatch, free, home):
    """`meta` stands in for a GPU: the same choice, without one."""
    monkeypatch.setattr(data.folder, "bytes_available", lambda device: free)
    pictures = [torch.zeros(SIDE, SIDE, dtype=torch.uint8) for _ in range(5)]
    crops = data.CropTrainSet(pictures, 16, 0, "meta")
    assert crops.home.type == home and crops.pixels.device.type == home


def write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_cgroup_v2_gives_the_tightest_limit_above_this_process(tmp_path):
    root = tmp_path / "cgroup"
    job = root / "system.slice" / "slurmstepd.scope" / "job_7"
    write(job, memory_max=str(2**30), memory_current=str(2**28))  # SLURM's --mem=1G
    write(job / "step_0" / "task_0", memory_max="max", memory_current="1000")
    membership = tmp_path / "self_cgroup"
    membership.write_text("0::/system.slice/slurmstepd.scope/job_7/step_0/task_0\n")
    assert data.cgroup_memory_free(root, membership) == 2**30 - 2**28


def test_cgroup_v1_without_a_limit_gives_none(tmp_path):
    root = tmp_path / "cgroup"
    write(
        root / "memory" / "job",
        memory_limit_in_bytes="9223372036854771712",
        memory_usage_in_bytes="5000",
    )
    membership = tmp_path / "self_cgroup"
    membership.write_text("4:memory:/job\n0::/\n")
    assert data.cgroup_memory_free(root, membership) is None
    (root / "memory" / "job" / "memory.limit_in_bytes").write_text("100000")
    assert data.cgroup_memory_free(root, membership) == 95000


def test_host_memory_counts_the_cgroup_limit(monkeypatch):
    monkeypatch.setattr(data.folder, "cgroup_memory_free", lambda: 12345)
    assert data.bytes_available(torch.device("cpu")) == 12345
