"""Draw the README's pictures, small, from a real run and its evaluation.

    python docs/images/make_images.py RUN_DIR EVAL_DIR [--out docs/images]

- samples.png: the run's `figures/samples.png` (noisy | denoised | clean, one row per
  image), its rows cut out and laid out in two blocks side by side, labelled anew;
- psnr_vs_sigma.png: the evaluation's `psnr_vs_sigma.png` (PSNR against the noise level
  for the model and the classical baselines), scaled down.

Both are re-rendered from the PNGs the package wrote, so they show exactly what a user's
run shows. Each must stay under 200 KB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAX_BYTES = 200_000
TILE = 84  # pixels a side of one image in samples.png
GAP = 3
BLOCK_GAP = 18
LABEL_HEIGHT = 22
PLOT_WIDTH = 680
LABELS = ("noisy", "denoised", "clean")


def spans(content: np.ndarray, min_length: int = 8) -> list[tuple[int, int]]:
    """[start, end) runs of True at least `min_length` long."""
    edges = np.diff(np.concatenate([[0], content.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(s, e) for s, e in zip(starts, ends, strict=True) if e - s >= min_length]


def sample_tiles(figure: Image.Image) -> list[list[Image.Image]]:
    """The figure's tiles, row by row: the grid's images are separated by white gaps, and
    the title and labels around it are mostly white."""
    pixels = np.asarray(figure.convert("L"))
    drawn = pixels < 250
    columns = spans(drawn.mean(axis=0) > 0.5)
    if len(columns) != len(LABELS):
        raise ValueError(f"found {len(columns)} image columns, expected {len(LABELS)}")
    left, right = columns[0][0], columns[-1][1]
    rows = spans(drawn[:, left:right].mean(axis=1) > 0.5)
    if not rows:
        raise ValueError("found no rows of images")
    # Trim the axes frame (a 1-pixel line) off the outer tiles.
    return [
        [figure.crop((x0 + 1, y0 + 1, x1 - 1, y1 - 1)).convert("L") for x0, x1 in columns]
        for y0, y1 in rows
    ]


def draw_samples(figure: Image.Image) -> Image.Image:
    rows = sample_tiles(figure)
    half = (len(rows) + 1) // 2
    blocks = [rows[:half], rows[half:]] if len(rows) > 1 else [rows]
    block_width = len(LABELS) * TILE + (len(LABELS) - 1) * GAP
    width = len(blocks) * block_width + (len(blocks) - 1) * BLOCK_GAP
    height = LABEL_HEIGHT + half * TILE + (half - 1) * GAP
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=15)
    for b, block in enumerate(blocks):
        x_block = b * (block_width + BLOCK_GAP)
        for c, label in enumerate(LABELS):
            x = x_block + c * (TILE + GAP) + TILE // 2
            draw.text((x, LABEL_HEIGHT // 2), label, fill=0, font=font, anchor="mm")
        for r, tiles in enumerate(block):
            for c, tile in enumerate(tiles):
                position = (x_block + c * (TILE + GAP), LABEL_HEIGHT + r * (TILE + GAP))
                canvas.paste(tile.resize((TILE, TILE), Image.Resampling.LANCZOS), position)
    return canvas


def draw_plot(figure: Image.Image) -> Image.Image:
    rgb = figure.convert("RGB")
    height = round(rgb.height * PLOT_WIDTH / rgb.width)
    small = rgb.resize((PLOT_WIDTH, height), Image.Resampling.LANCZOS)
    return small.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)


def save(image: Image.Image, path: Path) -> None:
    image.save(path, optimize=True)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{path} is {size} bytes, over {MAX_BYTES}")
    print(f"{path}: {image.width}x{image.height}, {size / 1000:.0f} KB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="A run folder (holds figures/samples.png).")
    parser.add_argument("eval_dir", type=Path, help="An evaluate --out folder.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="Where to write.")
    args = parser.parse_args(argv)
    sources = {
        "samples.png": args.run_dir / "figures" / "samples.png",
        "psnr_vs_sigma.png": args.eval_dir / "psnr_vs_sigma.png",
    }
    for source in sources.values():
        if not source.is_file():
            print(f"make_images: {source} does not exist", file=sys.stderr)
            return 1
    args.out.mkdir(parents=True, exist_ok=True)
    save(draw_samples(Image.open(sources["samples.png"])), args.out / "samples.png")
    save(draw_plot(Image.open(sources["psnr_vs_sigma.png"])), args.out / "psnr_vs_sigma.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
