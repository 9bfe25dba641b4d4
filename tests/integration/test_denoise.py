"""`denoise-dist denoise` on image files: round trips of every format and bit depth, tiles
on a real photograph, bad files, huge images, inputs that must never be overwritten, and
model files that must never be unpickled."""

import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from denoise_dist.export import save_model
from denoise_dist.models import build_model
from tests.conftest import skimage_data
from tests.helpers import run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Exported (untrained, seeded) models: the file handling is what is under test."""
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name, kwargs in [("unet", {"width": 8}), ("seed_ae", {"dropout": 0.2})]:
        torch.manual_seed(0)
        paths[name] = folder / f"{name}.safetensors"
        save_model(
            build_model(name, **kwargs), paths[name], {"model": name, "model_kwargs": kwargs}
        )
    return paths


def random_pixels(shape, seed, dtype=np.uint8, top=255):
    return (np.random.default_rng(seed).random(shape) * top).astype(dtype)


def save(path, pixels, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)
    return path


def png_with_header_size(path, width, height):
    """A tiny PNG whose header claims width x height: a decompression bomb's calling card."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    raw = bytearray(buffer.getvalue())
    raw[16:24] = struct.pack(">II", width, height)  # IHDR data follows 8+4+4 bytes
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))  # CRC of type + data
    path.write_bytes(bytes(raw))
    return path


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def expected_output(model_path, gray, top=255):
    """What the model should write for a [H, W] float image in [0, 1], as integers."""
    from denoise_dist import load_model

    with torch.no_grad():
        out = load_model(model_path)(torch.from_numpy(gray).float()[None, None])[0, 0]
    return (out.clamp(0, 1) * top).round().to(torch.int64).numpy()


def read(path):
    with Image.open(path) as image:
        return image.mode, image.size, np.asarray(image)


def denoise(*args):
    return run_cli("denoise", *map(str, args))


def test_round_trip_of_png_jpeg_tiff_bmp_odd_sizes_rgb_and_16_bit(models, tmp_path):
    inputs = tmp_path / "in"
    gray = {
        "odd.png": random_pixels((31, 45), 1),
        "wide.png": random_pixels((20, 64), 2),
        "a.png": random_pixels((28, 28), 3),
        "b.png": random_pixels((28, 28), 4),
    }
    for name, pixels in gray.items():
        save(inputs / name, pixels)
    rgb = random_pixels((28, 28, 3), 5)
    save(inputs / "rgb.png", rgb)
    deep = random_pixels((17, 23), 6, np.uint16, 65535)
    save(inputs / "deep.png", deep)
    for name in ("photo.jpg", "scan.tif", "old.bmp"):
        save(inputs / name, random_pixels((30, 26), 7))
    (inputs / "notes.txt").write_text("not an image, and not picked up from a folder")
    single = save(tmp_path / "elsewhere" / "single.png", random_pixels((9, 11), 8))
    before = digests(inputs)

    out = tmp_path / "out"
    result = denoise(models["unet"], inputs, single, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "denoised 10 images" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*gray, "rgb.png", "deep.png", "photo.jpg", "scan.tif", "old.bmp", "single.png"]
    )
    for name, pixels in gray.items():
        mode, size, written = read(out / name)
        assert mode == "L" and size == (pixels.shape[1], pixels.shape[0])
        expected = expected_output(models["unet"], pixels / 255.0)
        assert np.abs(written.astype(int) - expected).max() <= 1, name
    luma = np.asarray(Image.fromarray(rgb).convert("L")) / 255.0
    assert (
        np.abs(read(out / "rgb.png")[2].astype(int) - expected_output(models["unet"], luma)).max()
        <= 1
    )
    mode, _, written = read(out / "deep.png")  # 16 bits in, 16 bits out
    assert mode == "I;16"
    assert (
        np.abs(written.astype(int) - expected_output(models["unet"], deep / 65535.0, 65535)).max()
        <= 1
    )
    for name, fmt in (("photo.jpg", "JPEG"), ("scan.tif", "TIFF"), ("old.bmp", "BMP")):
        with Image.open(out / name) as image:
            assert image.format == fmt and image.size == (26, 30) and image.mode == "L"
    assert digests(inputs) == before  # inputs untouched


def test_bad_files_are_named_and_the_others_still_processed(models, tmp_path):
    inputs = tmp_path / "in"
    save(inputs / "good.png", random_pixels((28, 28), 1))
    (inputs / "corrupt.png").write_bytes(b"these bytes are not an image")
    whole = io.BytesIO()
    Image.fromarray(random_pixels((40, 40), 2)).save(whole, "PNG")
    (inputs / "truncated.png").write_bytes(whole.getvalue()[:-60])
    png_with_header_size(inputs / "bomb.png", 30000, 30000)  # over Pillow's bomb limit
    png_with_header_size(inputs / "huge.png", 5000, 5000)  # over our default limit
    (tmp_path / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    result = denoise(
        models["unet"], inputs, tmp_path / "notes.txt", tmp_path / "missing.png", "--out", out
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()

    def reason(name):
        found = [
            line
            for line in lines
            if line.startswith("denoise-dist: skipped")
            and line.split(":")[1].strip().endswith(name)
        ]
        assert len(found) == 1, (name, result.stderr)
        return found[0]

    assert "not a readable image" in reason("corrupt.png")
    assert "truncated" in reason("truncated.png")
    assert "900000000 pixels" in reason("bomb.png") and "decompression bomb" in reason("bomb.png")
    assert "5000x5000 = 25000000 pixels is over the limit" in reason("huge.png")
    assert "not a PNG, JPEG, TIFF or BMP" in reason("notes.txt")
    assert "no such file or folder" in reason("missing.png")
    assert lines[-1].startswith("denoise-dist: error: 6 inputs failed")
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    assert "denoised 1 image " in result.stdout


def test_max_pixels_is_a_flag(models, tmp_path):
    image = save(tmp_path / "in" / "forty.png", random_pixels((40, 40), 1))
    refused = denoise(models["unet"], image, "--out", tmp_path / "a", "--max-pixels", 1000)
    assert refused.returncode == 1
    assert "40x40 = 1600 pixels is over the limit of 1000" in refused.stderr
    allowed = denoise(models["unet"], image, "--out", tmp_path / "b", "--max-pixels", 1600)
    assert allowed.returncode == 0, allowed.stderr
    assert (tmp_path / "b" / "forty.png").is_file()


def test_seed_ae_resizes_to_28_and_back_and_says_so(models, tmp_path):
    inputs = tmp_path / "in"
    square = random_pixels((28, 28), 1)
    save(inputs / "square.png", square)
    save(inputs / "odd.png", random_pixels((31, 45), 2))
    out = tmp_path / "out"
    result = denoise(models["seed_ae"], inputs, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "resized to 28x28" in result.stdout
    assert read(out / "odd.png")[1] == (45, 31)
    written = read(out / "square.png")[2]  # 28x28 is not resized: exactly the model's output
    assert (
        np.abs(written.astype(int) - expected_output(models["seed_ae"], square / 255.0)).max() <= 1
    )


def test_output_folder_that_would_overwrite_inputs_is_refused(models, tmp_path):
    inputs = tmp_path / "in"
    save(inputs / "a.png", random_pixels((28, 28), 1))
    save(inputs / "b.png", random_pixels((28, 28), 2))
    (tmp_path / "alias").symlink_to(inputs)  # another spelling of the same folder
    before = digests(inputs)
    for out in (inputs, tmp_path / "alias"):
        result = denoise(models["unet"], inputs, "--out", out)
        assert result.returncode == 1
        assert "would overwrite the input" in result.stderr
    assert digests(inputs) == before


def test_two_inputs_with_one_name_do_not_overwrite_each_other(models, tmp_path):
    first = save(tmp_path / "a" / "x.png", random_pixels((28, 28), 1))
    second = save(tmp_path / "b" / "x.png", random_pixels((28, 28), 2))
    out = tmp_path / "out"
    result = denoise(models["unet"], first, second, "--out", out)
    assert result.returncode == 1
    assert f"skipped {second}: same name as {first}" in result.stderr
    assert (
        np.abs(
            read(out / "x.png")[2].astype(int)
            - expected_output(models["unet"], read(first)[2] / 255.0)
        ).max()
        <= 1
    )


def test_a_large_photograph_is_denoised_in_tiles_exactly(models, tmp_path):
    photo = skimage_data() / "camera.png"  # 512 x 512, a real photograph
    whole = denoise(models["unet"], photo, "--out", tmp_path / "whole", "--tile-size", 512)
    tiled = denoise(models["unet"], photo, "--out", tmp_path / "tiled", "--tile-size", 96)
    assert whole.returncode == 0 and tiled.returncode == 0, tiled.stderr
    a, b = read(tmp_path / "whole" / "camera.png")[2], read(tmp_path / "tiled" / "camera.png")[2]
    assert a.shape == (512, 512)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding at most
    assert np.mean(a != b) < 0.001


def test_sixteen_bit_tiff_stays_sixteen_bit_and_folders_recurse(models, tmp_path):
    with Image.open(skimage_data() / "moon.png") as moon:  # a real 8-bit photograph ...
        deep = np.asarray(moon, dtype=np.uint16) * 257  # ... spread over 16 bits
    inputs = tmp_path / "in"
    save(inputs / "sub" / "moon.tif", deep)
    save(inputs / "top.png", random_pixels((28, 28), 1))
    flat = denoise(models["unet"], inputs, "--out", tmp_path / "flat")
    assert flat.returncode == 0 and "denoised 1 image " in flat.stdout  # not recursive
    out = tmp_path / "out"
    result = denoise(models["unet"], inputs, "--out", out, "--recursive")
    assert result.returncode == 0, result.stderr
    assert (out / "top.png").is_file()
    mode, size, written = read(out / "sub" / "moon.tif")  # the layout is kept
    assert mode == "I;16" and size == (512, 512) and written.dtype == np.uint16
    assert len(np.unique(written)) > 256  # really 16-bit values, not 8 bits scaled up


class WritesAFile:
    """Unpickling this object creates a file: proof that a model file was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_model_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    model = tmp_path / "model.safetensors"
    torch.save({"weights": WritesAFile(marker)}, model)
    save(tmp_path / "in" / "a.png", random_pixels((28, 28), 1))
    result = denoise(model, tmp_path / "in", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "not a readable safetensors file" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
