"""Test PSNR and SSIM of a recipe's models, per sigma and blind, with their training time.

    python benchmarks/quality.py --recipe cpu-10min [--sigmas 0.1 0.2 ... 0.7]
        [--per-sigma] [--blind] [--out runs/quality] [-- MORE TRAIN FLAGS]

--per-sigma trains one model per sigma (Gaussian noise at that sigma) and scores it at
its own sigma; --blind trains one model on sigma drawn per image over [min, max] of
--sigmas (or --blind-range), with --blind-loss (default psnr: every image's decibels
weigh alike), and
scores it at every sigma. Both use the same recipe, so the same budget.
Every run is a real `denoise-dist train` followed by `denoise-dist evaluate` on all
10,000 MNIST test images with their fixed-seed noise. Finished runs and evaluations in
--out are reused, so an interrupted benchmark picks up where it stopped.

The classical baselines are `evaluate`'s: the built-in ones and, with the classical extra,
BM3D (on the first --bm3d-images test images only: about 1.6 s an image here), NL-means,
TV and wavelet. The table has a row for each, and a row naming the strongest classical
baseline at each sigma; the goals state the model's margin over it.

Prints a markdown table (PSNR / SSIM, for docs/benchmarks.md) and the quality goals as measured,
and writes the numbers to <out>/quality.json. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SIGMAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
BM3D_IMAGES = 50
GOALS_DB = {"cpu-10min": 21.5, "gpu-5min": 22.0}  # at sigma 0.5, per recipe
GOAL_SIGMA, BLIND_GAP_DB = 0.5, 0.3


def cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "denoise_dist", *args], capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"`denoise-dist {' '.join(args)}` failed:\n{result.stderr[-3000:]}")
    return result


def train(args, run_dir: Path, noise_flags: list[str]) -> dict:
    """Train (or reuse a finished run); returns its summary with the wall time of this call."""
    start = time.perf_counter()
    flags = ["--recipe", args.recipe, *noise_flags, "--output-dir", str(run_dir)]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    cli("train", *flags, *args.train_flags)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {**summary, "wall_s_this_call": time.perf_counter() - start}


def evaluate(args, run_dir: Path, sigmas) -> dict:
    out = run_dir / "eval-gaussian"
    wanted = [float(s) for s in sigmas]
    cached = out / "eval.json"
    if cached.exists():
        report = json.loads(cached.read_text())
        bm3d = report.get("baselines", {}).get("bm3d", {})
        if [r["sigma"] for r in report["results"]] == wanted and bm3d.get(
            "max_images"
        ) == args.bm3d_images:
            return report
    flags = ["--noise", "gaussian", "--sigmas", *map(str, wanted), "--out", str(out)]
    flags += ["--max-baseline-images", f"bm3d={args.bm3d_images}"]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    cli("evaluate", str(run_dir), *flags)
    return json.loads(cached.read_text())


def cell(result: dict) -> str:
    if result["psnr"] is None:
        return "-"
    return f"{result['psnr']:.2f} / {result['ssim']:.3f}"


def classical_baselines(result: dict) -> list[str]:
    """The classical methods scored in one row of eval.json's results."""
    return [
        name
        for name, value in result.items()
        if isinstance(value, dict) and "psnr" in value and name not in ("model", "identity")
    ]


def strongest(results_at_sigma: dict, names) -> str:
    """The classical baseline with the highest mean PSNR at one sigma."""
    scored = [n for n in names if results_at_sigma[n]["psnr"] is not None]
    return max(scored, key=lambda n: results_at_sigma[n]["psnr"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    parser.add_argument("--per-sigma", action="store_true")
    parser.add_argument("--blind", action="store_true")
    parser.add_argument("--blind-loss", default="psnr", choices=("mse", "psnr"))
    parser.add_argument(
        "--blind-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="the sigmas the blind model trains on (default: min and max of --sigmas)",
    )
    parser.add_argument(
        "--bm3d-images",
        type=int,
        default=BM3D_IMAGES,
        help="test images BM3D scores at each sigma (the others score all 10,000)",
    )
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("train_flags", nargs="*", help="after --: more `train` flags")
    args = parser.parse_args()
    if not (args.per_sigma or args.blind):
        parser.error("choose --per-sigma, --blind or both")
    out = Path(args.out) / args.recipe
    sigmas = sorted(args.sigmas)

    rows: dict[str, dict] = {}
    baselines: dict[str, dict] = {}
    names: list[str] = []
    if args.blind:
        low, high = args.blind_range or (sigmas[0], sigmas[-1])
        run_dir = out / ("blind" if not args.blind_range else f"blind-{low:g}-{high:g}")
        print(f"training {run_dir}", flush=True)
        blind = ["--noise", "gaussian_blind", "--loss", args.blind_loss]
        blind += ["--sigma-min", str(low), "--sigma-max", str(high)]
        summary = train(args, run_dir, blind)
        report = evaluate(args, run_dir, sigmas)
        rows["blind"] = {
            "label": f"blind, trained on σ {low:g}-{high:g}",
            "summary": summary,
            "results": {r["sigma"]: r for r in report["results"]},
        }
    if args.per_sigma:
        results, summaries = {}, []
        for sigma in sigmas:
            run_dir = out / f"sigma{sigma:g}"
            print(f"training {run_dir}", flush=True)
            summaries.append(train(args, run_dir, ["--noise", "gaussian", "--sigma", str(sigma)]))
            results[sigma] = evaluate(args, run_dir, [sigma])["results"][0]
        rows["per sigma"] = {"summary": summaries[-1], "summaries": summaries, "results": results}
    for row in rows.values():
        for sigma, result in row["results"].items():
            for name in ["identity", *classical_baselines(result)]:
                baselines.setdefault(name, {})[sigma] = result[name]
                if name not in names:
                    names.append(name)
    best = {s: strongest({n: baselines[n][s] for n in names[1:]}, names[1:]) for s in sigmas}

    summary = next(iter(rows.values()))["summary"]
    print(
        f"\nTest PSNR (dB) / SSIM on the 10,000 MNIST test images, Gaussian noise, recipe "
        f"{args.recipe} ({summary['step']} steps, {summary['precision']}, "
        f"{summary['device']}, {os.cpu_count()} CPUs)\n"
    )
    print("| model | " + " | ".join(f"σ={s:g}" for s in sigmas) + " | train time |")
    print("|---|" + "--:|" * (len(sigmas) + 1))
    for name, row in rows.items():
        cells = [cell(row["results"][s]["model"]) if s in row["results"] else "" for s in sigmas]
        timed = row.get("summaries", [row["summary"]])
        minutes = sum(s["train_time_s"] for s in timed) / len(timed) / 60
        each = " each" if name == "per sigma" else ""
        label = row.get("label", name)
        print(f"| unet ({label}) | " + " | ".join(cells) + f" | {minutes:.1f} min{each} |")
    for name in names:
        by_sigma = baselines[name]
        counts = {by_sigma[s]["images"] for s in sigmas}
        label = name if counts == {10_000} else f"{name} ({'/'.join(map(str, counts))} images)"
        print(f"| {label} | " + " | ".join(cell(by_sigma[s]) for s in sigmas) + " | - |")
    print(
        "| strongest classical | "
        + " | ".join(f"{best[s]} {baselines[best[s]][s]['psnr']:.2f}" for s in sigmas)
        + " | - |"
    )
    print_goals(args.recipe, rows, sigmas, baselines, best)
    (out / "quality.json").write_text(
        json.dumps(
            {
                "recipe": args.recipe,
                "rows": rows,
                "baselines": baselines,
                "strongest_classical": best,
                "argv": sys.argv[1:],
            },
            indent=2,
            default=str,
        )
    )
    print(
        f"\nwrote {out / 'quality.json'}; reproduce with: python benchmarks/quality.py "
        + " ".join(sys.argv[1:])
    )


def print_goals(recipe: str, rows: dict, sigmas, baselines: dict, best: dict) -> None:
    print()
    for name, row in rows.items():
        margins = [
            f"σ={s:g} {row['results'][s]['model']['psnr'] - baselines[best[s]][s]['psnr']:+.2f}"
            f" ({best[s]})"
            for s in sigmas
            if s in row["results"]
        ]
        print(f"unet ({name}) minus the strongest classical baseline, dB: " + ", ".join(margins))
    goal = GOALS_DB.get(recipe)
    for name, row in rows.items():
        result = row["results"].get(GOAL_SIGMA)
        if goal is None or result is None:
            continue
        timed = row.get("summaries", [row["summary"]])
        worst = max(s["train_time_s"] for s in timed) / 60
        verdict = "met" if result["model"]["psnr"] >= goal else "NOT met"
        print(
            f"goal: {recipe} ({name}) at sigma {GOAL_SIGMA:g}: {result['model']['psnr']:.2f} dB,"
            f" SSIM {result['model']['ssim']:.3f}, after {worst:.1f} min of training "
            f"(target >= {goal:g} dB): {verdict}"
        )
    if "blind" in rows and "per sigma" in rows:
        gaps = {
            s: rows["per sigma"]["results"][s]["model"]["psnr"]
            - rows["blind"]["results"][s]["model"]["psnr"]
            for s in sigmas
        }
        worst = max(gaps, key=lambda s: gaps[s])
        verdict = "met" if gaps[worst] <= BLIND_GAP_DB else "NOT met"
        print(
            "blind minus per-sigma PSNR: "
            + ", ".join(f"σ={s:g} {-g:+.2f}" for s, g in gaps.items())
        )
        print(
            f"goal: blind within {BLIND_GAP_DB:g} dB of per-sigma at every sigma: worst "
            f"{gaps[worst]:.2f} dB below at sigma {worst:g}: {verdict}"
        )


if __name__ == "__main__":
    main()
