"""Reading and writing the user's own image files: PNG, JPEG, TIFF, BMP; 8- or 16-bit,
grayscale, or color converted to gray (by luma). Plain Pillow and numpy.

Files are opened lazily and checked from their header (format, size) before any pixel is
decoded, so a decompression bomb never reaches memory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from denoise_dist.atomic import atomic_write

FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
PIL_FORMATS = {"PNG", "JPEG", "MPO", "TIFF", "BMP"}  # Pillow calls some camera JPEGs MPO
SIXTEEN_BIT_FORMATS = {"PNG", "TIFF"}  # the formats that can hold 16-bit grayscale
DEFAULT_MAX_PIXELS = 4096 * 4096


class BadImage(Exception):
    """One input file that cannot be used; the others are still processed."""


def find_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in `folder` by extension, sorted (by path, so the order is stable)."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in FORMATS)


def open_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open lazily (header only) and check format and size before any pixel is decoded."""
    from PIL import Image

    if path.suffix.lower() not in FORMATS:
        raise BadImage("not a PNG, JPEG, TIFF or BMP file (by its extension)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"too large to open safely ({e})") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not a readable image (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow raises all of these for bad files
        raise BadImage(f"cannot read it as an image ({e})") from None
    if image.format not in PIL_FORMATS:
        raise BadImage(f"is a {image.format} file, not PNG, JPEG, TIFF or BMP")
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage(
            f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels} "
            f"(--max-pixels)"
        )
    return image


def image_size(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) from the header."""
    with open_image(path, max_pixels) as image:
        return image.size[1], image.size[0]


def read_gray(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, int]:
    """([1, H, W] float in [0, 1], bits per pixel: 16 for 16-bit grayscale, else 8)."""
    image = open_image(path, max_pixels)
    try:
        with image:
            image.load()
            if image.mode.startswith("I"):  # 16-bit grayscale (I;16*, or I from some TIFFs)
                pixels, bits = np.asarray(image, dtype=np.float32) / 65535.0, 16
            else:
                pixels, bits = np.asarray(image.convert("L"), dtype=np.float32) / 255.0, 8
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt pixel data
        raise BadImage(f"cannot decode it ({e})") from None
    return torch.from_numpy(pixels.clip(0.0, 1.0)).unsqueeze(0), bits


def read_uint8(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """[H, W] uint8 (16-bit files rounded to 8 bits), for training sets."""
    pixels, _ = read_gray(path, max_pixels)
    return (pixels[0] * 255).round().to(torch.uint8)


def write_gray(image: torch.Tensor, path: Path, bits: int = 8) -> None:
    """Write [1, H, W] in [0, 1] as grayscale in the format of `path`'s extension, with
    16 bits where the input had them and the format holds them (PNG, TIFF)."""
    from PIL import Image

    fmt = FORMATS[path.suffix.lower()]
    values = image[0].float().clamp(0, 1)
    if bits == 16 and fmt in SIXTEEN_BIT_FORMATS:
        pixels = (values * 65535).round().to(torch.int32).cpu().numpy().astype(np.uint16)
    else:
        pixels = (values * 255).round().to(torch.uint8).cpu().numpy()
    picture = Image.fromarray(pixels)  # uint16 -> mode I;16, uint8 -> mode L
    options = {"quality": 95} if fmt == "JPEG" else {}
    atomic_write(path, lambda tmp: picture.save(tmp, fmt, **options))
