"""Test PSNR of every model x sigma against classical denoisers, with training wall time.

    python benchmarks/quality.py [--steps 3000 | --minutes 20] [--models seed_ae conv_ae unet]
        [--per-sigma-models unet] [--sigmas 0.1 ... 0.7] [--out runs/quality] [-- TRAIN FLAGS]

For each model in --models: one blind model (gaussian_blind over [min sigma, max sigma]),
evaluated at every sigma. For each model in --per-sigma-models: one model per sigma, each
evaluated at its own sigma. Every run is a real `denoise-dist train` followed by
`denoise-dist evaluate` on the fixed-seed noisy test set (all 10,000 images unless
--max-images). --minutes converts a wall-time budget per training into steps with a short
probe run of each model. Finished runs and evaluations in --out are reused, so an
interrupted benchmark picks up where it stopped.

Prints a markdown table (for the README) and the issue's quality goals as measured, and
writes the numbers to <out>/quality.json. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SIGMAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
BASELINES = ("median3x3", "gaussian_blur", "identity")
PROBE_STEPS = 30
GOAL_SIGMA, GOAL_MARGIN_DB, BLIND_GAP_DB = 0.5, 6.0, 0.5


def cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "denoise_dist", *args], capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"`denoise-dist {' '.join(args)}` failed:\n{result.stderr[-3000:]}")
    return result


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_flags(args, model: str, steps: int) -> list[str]:
    flags = [
        "--model",
        model,
        "--max-steps",
        str(steps),
        "--batch-size",
        str(args.batch_size),
        "--val-size",
        str(args.val_size),
    ]
    if model != "seed_ae":
        flags += ["--width", str(args.width)]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    return flags + args.train_flags


def seconds_per_step(args, model: str) -> float:
    """Training seconds per step, from a short run (its first log window is warm-up)."""
    with tempfile.TemporaryDirectory() as run_dir:
        cli(
            "train",
            *train_flags(args, model, PROBE_STEPS),
            "--output-dir",
            run_dir,
            "--log-every",
            "10",
            "--eval-every",
            str(PROBE_STEPS),
            "--checkpoint-every",
            str(PROBE_STEPS),
        )
        timed = [
            (r["step"], r["train_time_s"])
            for r in read_metrics(Path(run_dir))
            if "train_time_s" in r
        ]
    (first_step, first_time), (last_step, last_time) = timed[0], timed[-1]
    return (last_time - first_time) / (last_step - first_step)


def train(args, run_dir: Path, model: str, steps: int, noise_flags: list[str]) -> dict:
    """Train (or resume / reuse a finished run) and return its training facts."""
    start = time.perf_counter()
    cli("train", *train_flags(args, model, steps), *noise_flags, "--output-dir", str(run_dir))
    timed = [r["train_time_s"] for r in read_metrics(run_dir) if "train_time_s" in r]
    return {
        "steps": steps,
        "train_time_s": timed[-1],
        "wall_s_this_call": time.perf_counter() - start,
    }


def evaluate(args, run_dir: Path, sigmas) -> dict:
    out = run_dir / "eval-gaussian"
    wanted = [float(s) for s in sigmas]
    cached = out / "eval.json"
    if cached.exists():
        report = json.loads(cached.read_text())
        if [r["sigma"] for r in report["results"]] == wanted and (
            args.max_images is None or report["num_images"] == args.max_images
        ):
            return report
    flags = ["--noise", "gaussian", "--sigmas", *map(str, wanted), "--out", str(out)]
    if args.max_images:
        flags += ["--max-images", str(args.max_images)]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    cli("evaluate", str(run_dir), *flags)
    return json.loads(cached.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=3000, help="training steps per model")
    budget.add_argument(
        "--minutes", type=float, help="training wall time per model (converted to steps by a probe)"
    )
    parser.add_argument(
        "--models",
        nargs="*",
        default=["seed_ae", "conv_ae", "unet"],
        help="models trained blind over the sigma range",
    )
    parser.add_argument(
        "--per-sigma-models", nargs="*", default=["unet"], help="models also trained once per sigma"
    )
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULT_SIGMAS))
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--max-images", type=int, help="test images (default: all 10,000)")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("train_flags", nargs="*", help="after --: more `train` flags")
    args = parser.parse_args()
    out = Path(args.out)
    sigmas = sorted(args.sigmas)
    models = list(dict.fromkeys([*args.models, *args.per_sigma_models]))

    steps = {}
    for model in models:
        if args.minutes:
            per_step = seconds_per_step(args, model)
            steps[model] = max(1, int(args.minutes * 60 / per_step))
            print(
                f"{model}: {per_step:.3f} s/step -> {steps[model]} steps in {args.minutes:g} min",
                flush=True,
            )
        else:
            steps[model] = args.steps

    rows, baselines = {}, {}
    blind_noise = [
        "--noise",
        "gaussian_blind",
        "--sigma-min",
        str(sigmas[0]),
        "--sigma-max",
        str(sigmas[-1]),
    ]
    for model in args.models:
        run_dir = out / f"{model}-blind"
        print(f"training {run_dir} ({steps[model]} steps)", flush=True)
        facts = train(args, run_dir, model, steps[model], blind_noise)
        report = evaluate(args, run_dir, sigmas)
        rows[f"{model} (blind)"] = {
            **facts,
            "psnr": {r["sigma"]: r["model"]["psnr"] for r in report["results"]},
        }
        for r in report["results"]:
            for name in BASELINES:
                baselines.setdefault(name, {})[r["sigma"]] = r[name]["psnr"]
    for model in args.per_sigma_models:
        psnr, times = {}, []
        for sigma in sigmas:
            run_dir = out / f"{model}-sigma{sigma:g}"
            print(f"training {run_dir} ({steps[model]} steps)", flush=True)
            facts = train(
                args, run_dir, model, steps[model], ["--noise", "gaussian", "--sigma", str(sigma)]
            )
            report = evaluate(args, run_dir, [sigma])
            psnr[sigma] = report["results"][0]["model"]["psnr"]
            times.append(facts["train_time_s"])
            for name in BASELINES:
                baselines.setdefault(name, {})[sigma] = report["results"][0][name]["psnr"]
        rows[f"{model} (per sigma)"] = {
            "steps": steps[model],
            "psnr": psnr,
            "train_time_s": sum(times) / len(times),
        }

    num_images = report["num_images"]
    print_table(rows, baselines, sigmas, num_images)
    print_goals(rows, baselines, sigmas)
    print_psnr_vs_time(sorted(p for p in out.iterdir() if (p / "metrics.jsonl").exists()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "baselines": baselines,
                "num_images": num_images,
                "cpus": os.cpu_count(),
                "argv": sys.argv[1:],
            },
            indent=2,
        )
    )
    print(
        f"\nwrote {out / 'quality.json'}; reproduce with: python benchmarks/quality.py "
        + " ".join(sys.argv[1:])
    )


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def print_table(rows: dict, baselines: dict, sigmas, num_images: int) -> None:
    print(
        f"\nTest PSNR (dB) on {num_images} MNIST test images, Gaussian noise "
        f"(fixed-seed noisy set); training time on {os.cpu_count()} CPUs\n"
    )
    header = ["model", *[f"σ={s:g}" for s in sigmas], "steps", "train time"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|")
    for name, row in rows.items():
        cells = [f"{row['psnr'][s]:.2f}" for s in sigmas]
        each = " each" if "per sigma" in name else ""
        print(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {row['steps']} | {duration(row['train_time_s'])}{each} |"
        )
    for name, psnr in baselines.items():
        print(f"| {name} | " + " | ".join(f"{psnr[s]:.2f}" for s in sigmas) + " | - | - |")


def print_psnr_vs_time(run_dirs: list[Path]) -> None:
    """Validation PSNR at each evaluation against training time, per run."""
    print("\nValidation PSNR (dB) against training time (evaluation time excluded)")
    for run_dir in run_dirs:
        records = read_metrics(run_dir)
        time_at = {r["step"]: r["train_time_s"] for r in records if "train_time_s" in r}
        points = [
            f"{duration(time_at[r['step']])}: {r['val_psnr']:.2f}"
            for r in records
            if "val_psnr" in r and r["step"] in time_at
        ]
        print(f"  {run_dir.name:<22} " + ", ".join(points))


def print_goals(rows: dict, baselines: dict, sigmas) -> None:
    print()
    if GOAL_SIGMA in sigmas:
        best_name = max(rows, key=lambda n: rows[n]["psnr"][GOAL_SIGMA])
        margin = rows[best_name]["psnr"][GOAL_SIGMA] - baselines["median3x3"][GOAL_SIGMA]
        verdict = "met" if margin >= GOAL_MARGIN_DB else "NOT met"
        print(
            f"goal 1: best model at sigma {GOAL_SIGMA:g} is {best_name}, {margin:+.2f} dB "
            f"over the 3x3 median (target >= {GOAL_MARGIN_DB:g} dB): {verdict}"
        )
    for name in rows:
        if not name.endswith("(per sigma)"):
            continue
        blind = rows.get(name.replace("(per sigma)", "(blind)"))
        if blind is None:
            continue
        gaps = {s: rows[name]["psnr"][s] - blind["psnr"][s] for s in sigmas}
        worst = max(gaps, key=gaps.get)
        verdict = "met" if gaps[worst] <= BLIND_GAP_DB else "NOT met"
        print(
            f"goal 2: {name.split()[0]} blind model is at most {gaps[worst]:.2f} dB below "
            f"the per-sigma models (worst at sigma {worst:g}; target <= {BLIND_GAP_DB:g} dB)"
            f": {verdict}"
        )


if __name__ == "__main__":
    main()
