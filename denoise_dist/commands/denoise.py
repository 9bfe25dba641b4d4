"""`denoise-dist denoise MODEL INPUT... --out DIR`: clean a user's own image files.

Inputs are PNG, JPEG, TIFF or BMP files, or folders of them (`--recursive` searches
subfolders). Each image becomes grayscale in [0, 1] and is denoised whole, or in exact
overlapping tiles when it is larger than `--tile-size`; the result is written under
--out with the input's name, format and bit depth (16-bit PNG/TIFF stay 16-bit). A file
that cannot be read is reported by name and skipped; the exit code is non-zero if any
file failed. Under `accelerate launch`, the processes split the files between them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from denoise_dist import images
from denoise_dist.commands import add_model_argument
from denoise_dist.errors import ConfigError, UserError
from denoise_dist.export import load_model, read_meta, resolve_model_path
from denoise_dist.images import BadImage
from denoise_dist.inference import denoise_tiled, downsampling, receptive_radius
from denoise_dist.models import MODELS
from denoise_dist.runtime import process_state

DEFAULT_TILE = 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="+",
        help="Image files (PNG, JPEG, TIFF, BMP) or folders of them.",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        required=True,
        help="Folder for the denoised images (same names as the inputs).",
    )
    parser.add_argument(
        "--recursive",
        action="store_true",
        help="Search input folders recursively (results keep the subfolder layout).",
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        default=DEFAULT_TILE,
        help="Denoise images larger than this (a side, in pixels) in overlapping tiles "
        f"of about this size, which bounds memory (default: {DEFAULT_TILE}).",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=images.DEFAULT_MAX_PIXELS,
        help=f"Refuse images with more pixels than this (default: {images.DEFAULT_MAX_PIXELS}).",
    )
    parser.add_argument("--cpu", action="store_true", help="Use the CPU even with a GPU.")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks.")


def collect_inputs(inputs: list[str], recursive: bool, failures: list[str]):
    """[(file, its path relative to the output folder)]."""
    files: list[tuple[Path, Path]] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = images.find_images(given, recursive)
            if not found:
                fail(failures, given, "folder holds no PNG, JPEG, TIFF or BMP files")
            files.extend((path, path.relative_to(given)) for path in found)
        elif given.is_file():
            files.append((given, Path(given.name)))
        else:
            fail(failures, given, "no such file or folder")
    return files


def fail(failures: list[str], path: Path, reason: str) -> None:
    print(f"denoise-dist: skipped {path}: {reason}", file=sys.stderr)
    failures.append(str(path))


def file_id(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def plan_targets(files, out_dir: Path, failures: list[str]) -> dict[Path, Path]:
    """input -> output path. Refuses outright if any output would replace an input."""
    inputs = {file_id(f) for f, _ in files}  # by inode: catches links and other spellings
    targets: dict[Path, Path] = {}
    claimed: dict[Path, Path] = {}
    for source, relative in files:
        target = out_dir / relative
        if target.exists() and file_id(target) in inputs:
            raise UserError(
                f"--out {out_dir} would overwrite the input {source}; choose another output folder"
            )
        if target in claimed:
            fail(
                failures,
                source,
                f"same name as {claimed[target]}; both would be written to {target}",
            )
            continue
        claimed[target] = source
        targets[source] = target
    return targets


def resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def denoise(args: argparse.Namespace) -> int:
    if args.tile_size < 16 or args.max_pixels < 1:
        raise ConfigError("--tile-size must be >= 16 and --max-pixels >= 1")
    model_path = resolve_model_path(args.model)
    meta = read_meta(model_path)
    state = process_state(args.cpu)
    model = load_model(model_path, state.device)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")

    failures: list[str] = []
    files = collect_inputs(args.inputs, args.recursive, failures)
    targets = plan_targets(files, out_dir, failures)
    # The model's input size: any for fully convolutional models, fixed for seed_ae.
    size = MODELS[meta["model"]].image_size
    fixed = None if size is None else (size, size)
    if fixed and state.is_main_process:
        print(
            f"{meta['model']} takes {fixed[0]}x{fixed[1]} images only: each input is resized "
            f"to {fixed[0]}x{fixed[1]}, denoised, and resized back to its size"
        )
    # Tiles keep a margin of the receptive field (plus one grid step) around what they keep.
    margin = 0 if fixed else receptive_radius(model, state.device) + downsampling(model)

    own_files = list(targets)[state.process_index :: state.num_processes]
    done = 0
    for source in own_files:
        try:
            image, bits = images.read_gray(source, args.max_pixels)
        except BadImage as e:
            fail(failures, source, str(e))
            continue
        x = image[None].to(state.device)
        if fixed:
            result = resize(model(resize(x, fixed)), tuple(image.shape[-2:]))
        else:
            result = denoise_tiled(model, x, args.tile_size, margin)
        try:
            targets[source].parent.mkdir(parents=True, exist_ok=True)
            images.write_gray(result[0], targets[source], bits)
            done += 1
        except OSError as e:
            fail(failures, source, f"cannot write {targets[source]}: {e}")
    print(f"denoised {done} image{'s' * (done != 1)} into {out_dir}")
    if failures:
        raise UserError(
            f"{len(failures)} input{'s' * (len(failures) != 1)} failed (named above): "
            f"{', '.join(failures)}"
        )
    return done
