"""Every registered model on MNIST at the same CPU-time budget: test PSNR and SSIM.

    python benchmarks/models.py [--minutes 10] [--models unet dncnn conv_ae seed_ae]
        [--sigma 0.5] [--rounds 3] [--out runs/models] [-- MORE TRAIN FLAGS]

Each model trains with the cpu-10min recipe's schedule, batch and precision (only the
model and its own width change: dncnn keeps its 64 channels) for as many steps as fit in
--minutes at its measured speed. The speed is measured first, side by side: --rounds
interleaved rounds of a short real `denoise-dist train` per model, median images/s of
the steady windows. Then each model trains for real and `denoise-dist evaluate` scores it
on the 10,000 test images at --sigma, with the built-in baselines. Finished runs in --out
are reused. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from quality import cli  # the same subprocess wrapper

from denoise_dist.config import ModelConfig
from denoise_dist.export import load_model
from denoise_dist.models import MODELS
from denoise_dist.recipes import RECIPES

RECIPE = "cpu-10min"
PROBE_STEPS, PROBE_LOG_EVERY = 60, 20  # the first window (warm-up) is not counted


def model_flags(name: str) -> list[str]:
    """The model and its own width: the recipe's width is unet's."""
    flags = ["--model", name]
    if "width" in MODELS[name].fields:
        flags += ["--width", str(MODELS[name].defaults.get("width", ModelConfig.width))]
    return flags


def images_per_s(run: Path) -> float:
    """Median images/s of a probe run's windows after the first."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rates = [r["images_per_s"] for r in map(json.loads, lines) if "images_per_s" in r]
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="runs/models")
    parser.add_argument("train_flags", nargs="*", help="after --: more `train` flags")
    args = parser.parse_args()
    out = Path(args.out)
    batch = RECIPES[RECIPE].values["batch_size"]
    common = ["--recipe", RECIPE, "--noise", "gaussian", "--sigma", str(args.sigma)]

    speed_file = out / "speed.json"
    speeds = json.loads(speed_file.read_text()) if speed_file.exists() else {}
    todo = [m for m in args.models if m not in speeds]
    rates: dict[str, list[float]] = {m: [] for m in todo}
    for round_ in range(args.rounds if todo else 0):
        for name in todo:
            probe = out / "probe" / name
            shutil.rmtree(probe, ignore_errors=True)
            cli("train", *common, *model_flags(name), "--max-steps", str(PROBE_STEPS),
                "--log-every", str(PROBE_LOG_EVERY), "--eval-every", "100000",
                "--checkpoint-every", "100000", "--val-size", "64", "--output-dir", str(probe),
                *args.train_flags)  # fmt: skip
            rates[name].append(images_per_s(probe))
            print(f"round {round_ + 1}: {name} {rates[name][-1]:.0f} images/s", flush=True)
    speeds.update({m: statistics.median(r) for m, r in rates.items()})
    out.mkdir(parents=True, exist_ok=True)
    speed_file.write_text(json.dumps(speeds, indent=2))

    rows = []
    for name in args.models:
        steps = max(1, round(args.minutes * 60 * speeds[name] / batch))
        run = out / name
        print(f"training {run}: {steps} steps", flush=True)
        every = str(max(1, steps // 4))
        cli("train", *common, *model_flags(name), "--max-steps", str(steps),
            "--eval-every", every, "--checkpoint-every", every, "--output-dir", str(run),
            *args.train_flags)  # fmt: skip
        summary = json.loads((run / "summary.json").read_text())
        evaluated = run / "eval-gaussian"
        cli("evaluate", str(run), "--sigmas", str(args.sigma), "--baselines", "builtin",
            "--out", str(evaluated))  # fmt: skip
        [result] = json.loads((evaluated / "eval.json").read_text())["results"]
        parameters = sum(p.numel() for p in load_model(run).parameters())
        rows.append((name, steps, parameters, summary, result))

    print(
        f"\nMNIST test set (10,000 images), Gaussian sigma {args.sigma:g}; every model with "
        f"recipe {RECIPE}'s schedule at {args.minutes:g} CPU-minutes by its measured speed\n"
    )
    print("| model | parameters | images/s | steps | train time | PSNR (dB) | SSIM |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name, steps, parameters, summary, result in rows:
        print(
            f"| {name} | {parameters:,} | {speeds[name]:.0f} | {steps} | "
            f"{summary['train_time_s'] / 60:.1f} min | {result['model']['psnr']:.2f} | "
            f"{result['model']['ssim']:.3f} |"
        )
    for baseline in ("median3x3", "gaussian_blur", "identity"):
        first = rows[0][4][baseline]
        print(f"| {baseline} | | | | | {first['psnr']:.2f} | {first['ssim']:.3f} |")
    print(f"\nreproduce: python benchmarks/models.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
