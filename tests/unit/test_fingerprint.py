"""The data fingerprint a resume compares: a folder by file list, sizes and modification
times; MNIST-style files by size and SHA-256."""

import os

from denoise_dist.data import fingerprint, fingerprint_changes


def write(path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_a_folder_names_what_was_added_removed_and_changed(tmp_path):
    for name in ("a.png", "b.png", "sub/c.png", "sub/d.tif"):
        write(tmp_path / name, b"x" * 10)
    write(tmp_path / "notes.txt", b"not an image: not part of the data")
    before = fingerprint("folder", tmp_path)
    assert sorted(before) == ["a.png", "b.png", "sub/c.png", "sub/d.tif"]
    assert fingerprint_changes(before, fingerprint("folder", tmp_path), tmp_path) is None

    (tmp_path / "notes.txt").write_text("edited")  # not an image: no change
    write(tmp_path / "new.png", b"y")
    (tmp_path / "sub" / "c.png").unlink()
    stat = (tmp_path / "a.png").stat()
    os.utime(tmp_path / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    assert fingerprint_changes(before, fingerprint("folder", tmp_path), tmp_path) == (
        f"1 file added under {tmp_path}: new.png; 1 file removed under {tmp_path}: sub/c.png; "
        f"1 file changed under {tmp_path}: a.png"
    )


def test_long_lists_are_cut_to_one_line(tmp_path):
    old = {f"{i}.png": {"size": 1} for i in range(2)}
    new = {f"{i}.png": {"size": 1} for i in range(7)}
    assert fingerprint_changes(old, new, tmp_path) == (
        f"5 files added under {tmp_path}: 2.png, 3.png, 4.png and 2 more"
    )


def test_mnist_files_are_compared_by_checksum_not_just_size_and_time(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte.gz"):
        write(raw / name, b"\x00" * 100)
    before = fingerprint("mnist", tmp_path)
    assert sorted(before) == [
        "MNIST/raw/train-images-idx3-ubyte",
        "MNIST/raw/train-labels-idx1-ubyte.gz",
    ]
    path = raw / "train-images-idx3-ubyte"
    stat = path.stat()
    write(path, b"\x00" * 99 + b"\x01")  # same size, and the same time restored below
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint_changes(before, fingerprint("mnist", tmp_path), tmp_path) == (
        f"1 file changed under {tmp_path}: MNIST/raw/train-images-idx3-ubyte"
    )
