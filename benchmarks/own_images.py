"""Denoising real photographs: a unet trained on a folder of scikit-image's photographs,
scored on held-out files, whole, against the classical denoisers.

    python benchmarks/own_images.py [--steps 2000] [--sigma 0.1] [--out runs/own-images]
        [-- MORE TRAIN FLAGS]

It copies the 18 photographs that scikit-image installs (no network needed) into
<out>/photos, runs the real `denoise-dist train --dataset folder` on random crops of the
training files, then `denoise-dist evaluate` on the held-out files at --sigma, and prints
the model's margin over the best classical baseline (goal: at least 4.5 dB at sigma 0.1
within 10 CPU-minutes of training). A finished run in --out is reused. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

# scikit-image's bundled pictures that are photographs (not drawings or test patterns).
PHOTOGRAPHS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
)
BASELINES = ("identity", "gaussian_blur", "median3x3")
GOAL_DB = 4.5


def cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "denoise_dist", *args], capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"`denoise-dist {' '.join(args)}` failed:\n{result.stderr[-3000:]}")
    return result


def copy_photographs(folder: Path) -> None:
    import skimage

    source = Path(skimage.__file__).parent / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOGRAPHS:
        shutil.copy(source / name, folder / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--val-size", type=int, default=4, help="held-out files")
    parser.add_argument("--out", default="runs/own-images")
    parser.add_argument("train_flags", nargs="*", help="after --: more `train` flags")
    args = parser.parse_args()
    out = Path(args.out)
    photos, run = out / "photos", out / "unet"
    copy_photographs(photos)

    flags = [
        "--dataset",
        "folder",
        "--data-dir",
        str(photos),
        "--val-size",
        str(args.val_size),
        "--noise",
        "gaussian",
        "--sigma",
        str(args.sigma),
        "--max-steps",
        str(args.steps),
        "--eval-every",
        str(max(1, args.steps // 4)),
        "--checkpoint-every",
        str(max(1, args.steps // 4)),
        "--output-dir",
        str(run),
        *args.train_flags,
    ]
    start = time.perf_counter()
    trained = cli("train", *flags)
    print(trained.stdout.strip().splitlines()[-1])
    wall = time.perf_counter() - start
    summary = json.loads((run / "summary.json").read_text())
    cli("evaluate", str(run), "--sigmas", str(args.sigma), "--out", str(run / "eval"))
    report = json.loads((run / "eval" / "eval.json").read_text())
    [row] = report["results"]

    print(
        f"\n{report['num_images']} held-out photographs, whole, sigma {args.sigma:g} "
        f"(the model trained {summary['step']} steps: {summary['train_time_s']:.0f} s "
        f"of training, {wall:.0f} s wall, {summary['precision']})"
    )
    print(f"{'method':<16}{'PSNR (dB)':>10}{'SSIM':>8}")
    for method in ("model", *BASELINES):
        print(f"{method:<16}{row[method]['psnr']:>10.2f}{row[method]['ssim']:>8.3f}")
    best = max(BASELINES[1:], key=lambda m: row[m]["psnr"])
    margin = row["model"]["psnr"] - row[best]["psnr"]
    verdict = "met" if margin >= GOAL_DB else "NOT met"
    print(f"model - best classical ({best}): {margin:+.2f} dB (goal >= {GOAL_DB} dB): {verdict}")
    print(f"reproduce: python benchmarks/own_images.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
