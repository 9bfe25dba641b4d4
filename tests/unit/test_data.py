import gzip

import pytest
import torch

from denoise_dist.data import load_split, resolve_data_root, split_train_val
from denoise_dist.data.idx import read_idx
from denoise_dist.errors import DataError


def idx_bytes(array: torch.Tensor) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.numpy().tobytes()


def write_split(raw_dir, n_images=10, n_labels=10, gz=False):
    raw_dir.mkdir(parents=True, exist_ok=True)
    images = torch.randint(0, 256, (n_images, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n_labels,), dtype=torch.uint8)
    for name, array in [("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)]:
        payload = idx_bytes(array)
        if gz:
            (raw_dir / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (raw_dir / name).write_bytes(payload)
    return images


def test_data_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("DENOISE_DIST_DATA", str(tmp_path / "env"))
    assert resolve_data_root(str(tmp_path / "flag")) == tmp_path / "flag"
    assert resolve_data_root(None, str(tmp_path / "second")) == tmp_path / "second"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("DENOISE_DIST_DATA")
    assert str(resolve_data_root(None)) == "data"


@pytest.mark.parametrize("gz", [False, True])
def test_reads_plain_and_gzipped_idx(tmp_path, gz):
    images = write_split(tmp_path / "MNIST" / "raw", gz=gz)
    assert torch.equal(load_split("mnist", tmp_path, "train", download=False), images)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError, match=r"put train-images-idx3-ubyte.*MNIST/raw"):
        load_split("mnist", tmp_path, "train", download=False)


def test_offline_download_fails_fast_with_a_clear_error(tmp_path, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(DataError, match="download of kmnist failed.*put "):
        load_split("kmnist", tmp_path, "train", download=True)


def test_unwritable_root_when_download_is_needed(tmp_path):
    blocker = tmp_path / "a-file"  # a folder cannot be made below a file, even by root
    blocker.write_text("")
    with pytest.raises(DataError, match="not writable"):
        load_split("mnist", blocker / "data", "train", download=True)


def test_wrong_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="wrong magic"):
        read_idx(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(idx_bytes(torch.zeros(4, 28, 28, dtype=torch.uint8))[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_image_label_count_mismatch(tmp_path):
    write_split(tmp_path / "MNIST" / "raw", n_images=10, n_labels=9)
    with pytest.raises(DataError, match="10 train images but 9 labels"):
        load_split("mnist", tmp_path, "train", download=False)


def test_validation_split_is_disjoint_and_seed_independent():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1).expand(100, 2, 2).contiguous()
    train, val = split_train_val(images, 20)
    assert len(train) == 80 and len(val) == 20
    assert not set(train[:, 0, 0].tolist()) & set(val[:, 0, 0].tolist())
    torch.manual_seed(123)
    assert torch.equal(split_train_val(images, 20)[1], val)
    with pytest.raises(DataError, match="leaves no training images"):
        split_train_val(images, 100)


def test_augmented_crops_are_the_plain_crops_under_all_8_symmetries_of_a_square():
    from denoise_dist.data import CropTrainSet, Sharding

    pictures = [torch.randint(0, 256, (40, 50), dtype=torch.uint8) for _ in range(3)]
    plain = CropTrainSet(pictures, 16, seed=7, device="cpu")
    augmented = CropTrainSet(pictures, 16, seed=7, device="cpu", augment=True)
    sharding = Sharding(plain.num_examples, 16, 1, 0)  # batch() does not read it
    rows = torch.arange(256)
    before, after = plain.batch(3, rows, sharding), augmented.batch(3, rows, sharding)
    seen = set()
    for crop, moved in zip(before, after, strict=True):  # same position, one symmetry each
        images = [crop.rot90(k, (-2, -1)) for k in range(4)]
        images += [image.flip(-1) for image in images]
        [which] = [i for i, image in enumerate(images) if torch.equal(image, moved)]
        seen.add(which)
    assert seen == set(range(8))  # every symmetry is drawn
    assert torch.equal(after, augmented.batch(3, rows, sharding))  # a function of the step
    assert torch.equal(after[100:], augmented.batch(3, rows[100:], sharding))  # and the row
