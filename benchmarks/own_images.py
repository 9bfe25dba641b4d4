"""Denoising real photographs: a unet trained on a folder of scikit-image's photographs,
scored on held-out files, whole, against the classical denoisers (BM3D among them).

    python benchmarks/own_images.py [--steps 2000] [--sigma 0.1] [--out runs/own-images]
        [-- MORE TRAIN FLAGS]

It copies the 18 photographs that scikit-image installs (no network needed) into
<out>/photos, runs the real `denoise-dist train --dataset folder` on random crops of the
training files, then `denoise-dist evaluate` on the held-out files at --sigma, and prints
the model's margin over BM3D and over the strongest classical baseline (by mean PSNR),
on each held-out photograph and on average. Goals at sigma 0.1 within 10 CPU-minutes of
training: the model at least BM3D + 1.8 dB on average and BM3D + 0.5 dB on every
photograph. BM3D needs the classical extra (pip install 'denoise-dist[classical]').
A finished run in --out is reused. Figures are printed, never asserted.
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
REFERENCE = "bm3d"  # the field's classical reference
GOAL_MEAN_DB, GOAL_EACH_DB = 1.8, 0.5  # over BM3D: on average, on every photograph


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
        target = folder / name
        # Copied once: a fresh copy would count as changed data when a finished run resumes.
        if not target.exists() or target.read_bytes() != (source / name).read_bytes():
            shutil.copy2(source / name, target)


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
    start = time.perf_counter()
    cli("evaluate", str(run), "--sigmas", str(args.sigma), "--out", str(run / "eval"))
    eval_wall = time.perf_counter() - start
    report = json.loads((run / "eval" / "eval.json").read_text())
    print(
        f"\n{report['num_images']} held-out photographs, whole, sigma {args.sigma:g} "
        f"(the model trained {summary['step']} steps: {summary['train_time_s']:.0f} s "
        f"of training, {wall:.0f} s wall, {summary['precision']}; evaluate took "
        f"{eval_wall:.0f} s)"
    )
    print_margins(report)
    print(f"reproduce: python benchmarks/own_images.py {' '.join(sys.argv[1:])}")


def print_margins(report: dict) -> None:
    """Mean PSNR/SSIM of every method, then the model's margin over BM3D and over the
    strongest classical baseline on each photograph and on average."""
    [row] = report["results"]
    baselines = [m for m in report["methods"] if m not in ("model", "identity")]
    print(f"{'method':<16}{'PSNR (dB)':>10}{'SSIM':>8}{'images':>8}")
    for method in report["methods"]:
        result = row[method]
        if result["psnr"] is None:
            print(f"{method:<16}{'-':>10}{'-':>8}{0:>8}")
            continue
        print(f"{method:<16}{result['psnr']:>10.2f}{result['ssim']:>8.3f}{result['images']:>8}")
    scored = [m for m in baselines if row[m]["psnr"] is not None]
    strongest = max(scored, key=lambda m: row[m]["psnr"])
    print(f"strongest classical baseline by mean PSNR: {strongest}")
    per_image = row["per_image_psnr"]
    names = report.get("image_names") or [str(i) for i in range(report["num_images"])]
    references = [REFERENCE, strongest] if strongest != REFERENCE else [REFERENCE]
    if REFERENCE not in scored:
        print(f"{REFERENCE} was not scored (pip install 'denoise-dist[classical]')")
        references = [strongest]
    header = "".join(f"{'model - ' + m:>20}" for m in references)
    print(f"\n{'photograph':<24}{'model':>8}" + "".join(f"{m:>10}" for m in references) + header)
    margins: dict[str, list[float]] = {m: [] for m in references}
    for i, name in enumerate(names):
        model = per_image["model"][i]
        cells = ""
        for m in references:
            value = per_image[m][i]
            cells += f"{'-' if value is None else f'{value:.2f}':>10}"
            if value is not None:
                margins[m].append(model - value)
        diffs = "".join(
            f"{'-' if per_image[m][i] is None else f'{model - per_image[m][i]:+.2f} dB':>20}"
            for m in references
        )
        print(f"{name:<24}{model:>8.2f}{cells}{diffs}")
    for m in references:
        if margins[m]:
            mean = sum(margins[m]) / len(margins[m])
            print(
                f"model - {m}: {mean:+.2f} dB on average over {len(margins[m])} photographs, "
                f"{min(margins[m]):+.2f} dB on the worst; beats it on "
                f"{row[m]['model_wins']}/{row[m]['images']}"
            )
    if margins.get(REFERENCE):
        mean, worst = sum(margins[REFERENCE]) / len(margins[REFERENCE]), min(margins[REFERENCE])
        verdict = "met" if mean >= GOAL_MEAN_DB else "NOT met"
        print(f"goal: model >= {REFERENCE} + {GOAL_MEAN_DB} dB on average: {verdict}")
        verdict = "met" if worst >= GOAL_EACH_DB else "NOT met"
        print(f"goal: model >= {REFERENCE} + {GOAL_EACH_DB} dB on every photograph: {verdict}")


if __name__ == "__main__":
    main()
