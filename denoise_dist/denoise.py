"""`denoise-dist denoise MODEL INPUT... --out DIR`: clean a user's own image files.

Inputs are PNG, JPEG, TIFF or BMP files, or folders of them (not recursive). Each image
becomes grayscale in [0, 1]; same-size images are denoised together in batches, and the
result is written under --out with the input's name and format. A file that cannot be
read is reported by name and skipped; the exit code is non-zero if any file failed.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from denoise_dist.atomic import atomic_write
from denoise_dist.errors import ConfigError, UserError
from denoise_dist.export import load_model, read_meta, resolve_model_path

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
           ".bmp": "BMP"}
PIL_FORMATS = {"PNG", "JPEG", "MPO", "TIFF", "BMP"}  # Pillow calls some camera JPEGs MPO
DEFAULT_MAX_PIXELS = 4096 * 4096
PIXELS_PER_BATCH = 2**22  # bounds memory when many images share one size


class BadImage(Exception):
    """One input file that cannot be used; the others are still processed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="A run folder (its best_model.safetensors) or a .safetensors file.")
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="Image files (PNG, JPEG, TIFF, BMP) or folders of them.")
    parser.add_argument("--out", metavar="DIR", required=True,
                        help="Folder for the denoised images (same names as the inputs).")
    parser.add_argument("--batch-size", type=int, default=64, help="Images per forward pass.")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="Refuse images with more pixels than this "
                             f"(default: {DEFAULT_MAX_PIXELS}).")
    parser.add_argument("--cpu", action="store_true", help="Use the CPU even with a GPU.")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks.")


def collect_inputs(inputs: list[str], failures: list[str]) -> list[Path]:
    files = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = sorted(p for p in given.iterdir()
                           if p.is_file() and p.suffix.lower() in FORMATS)
            if not found:
                fail(failures, given, "folder holds no PNG, JPEG, TIFF or BMP files")
            files.extend(found)
        elif given.is_file():
            files.append(given)
        else:
            fail(failures, given, "no such file or folder")
    return files


def fail(failures: list[str], path: Path, reason: str) -> None:
    print(f"denoise-dist: skipped {path}: {reason}", file=sys.stderr)
    failures.append(str(path))


def file_id(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def plan_targets(files: list[Path], out_dir: Path, failures: list[str]) -> dict[Path, Path]:
    """input -> output path. Refuses outright if any output would replace an input."""
    inputs = {file_id(f) for f in files}  # by inode: catches links and other spellings
    targets: dict[Path, Path] = {}
    claimed: dict[Path, Path] = {}
    for source in files:
        target = out_dir / source.name
        if target.exists() and file_id(target) in inputs:
            raise UserError(f"--out {out_dir} would overwrite the input {source}; "
                            f"choose another output folder")
        if target in claimed:
            fail(failures, source, f"same name as {claimed[target]}; both would be "
                                   f"written to {target}")
            continue
        claimed[target] = source
        targets[source] = target
    return targets


def open_image(path: Path, max_pixels: int):
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
        raise BadImage(f"{width}x{height} = {width * height} pixels is over the limit of "
                       f"{max_pixels} (--max-pixels)")
    return image


def read_gray(path: Path, max_pixels: int) -> torch.Tensor:
    """[1, H, W] float in [0, 1]. 16-bit grayscale keeps its full range."""
    image = open_image(path, max_pixels)
    try:
        with image:
            image.load()
            if image.mode.startswith("I"):  # 16-bit grayscale (I;16*, or I from some TIFFs)
                pixels = np.asarray(image, dtype=np.float32) / 65535.0
            else:
                pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt pixel data
        raise BadImage(f"cannot decode it ({e})") from None
    return torch.from_numpy(pixels.clip(0.0, 1.0)).unsqueeze(0)


def write_gray(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    pixels = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    fmt = FORMATS[path.suffix.lower()]
    options = {"quality": 95} if fmt == "JPEG" else {}
    atomic_write(path, lambda tmp: Image.fromarray(pixels, mode="L").save(tmp, fmt, **options))


def image_size(path: Path, max_pixels: int) -> tuple[int, int]:
    with open_image(path, max_pixels) as image:
        return image.size[1], image.size[0]  # (H, W)


def batches(items: list, height: int, width: int, batch_size: int):
    per_batch = max(1, min(batch_size, PIXELS_PER_BATCH // (height * width)))
    for start in range(0, len(items), per_batch):
        yield items[start:start + per_batch]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def denoise(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.max_pixels < 1:
        raise ConfigError("--batch-size and --max-pixels must be >= 1")
    model_path = resolve_model_path(args.model)
    meta = read_meta(model_path)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    model = load_model(model_path, device)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")

    failures: list[str] = []
    files = collect_inputs(args.inputs, failures)
    targets = plan_targets(files, out_dir, failures)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The model's input size: any for fully convolutional models, fixed for seed_ae.
    fixed = None if getattr(model, "fully_convolutional", True) else (model.image_size,) * 2
    groups: dict[tuple[int, int], list[Path]] = defaultdict(list)
    for source in targets:
        try:
            groups[fixed or image_size(source, args.max_pixels)].append(source)
        except BadImage as e:
            fail(failures, source, str(e))
    if fixed:
        print(f"{meta['model']} takes {fixed[0]}x{fixed[1]} images only: each input is "
              f"resized to {fixed[0]}x{fixed[1]}, denoised, and resized back to its size")

    done = 0
    for (height, width), sources in groups.items():
        for chunk in batches(sources, height, width, args.batch_size):
            sizes, inputs = {}, []
            for source in chunk:
                try:
                    image = read_gray(source, args.max_pixels)
                except BadImage as e:
                    fail(failures, source, str(e))
                    continue
                sizes[source] = tuple(image.shape[-2:])
                inputs.append(resize(image[None], (height, width))[0])
            if not inputs:
                continue
            denoised = model(torch.stack(inputs).to(device)).float().cpu()
            for (source, size), clean in zip(sizes.items(), denoised):
                try:
                    write_gray(resize(clean[None], size)[0], targets[source])
                    done += 1
                except OSError as e:
                    fail(failures, source, f"cannot write {targets[source]}: {e}")
    print(f"denoised {done} image{'s' * (done != 1)} into {out_dir}")
    if failures:
        raise UserError(f"{len(failures)} input{'s' * (len(failures) != 1)} failed "
                        f"(named above): {', '.join(failures)}")
    return done
