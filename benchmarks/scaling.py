"""Training images/s with 1 and 2 processes (CPU DDP over gloo), beside the ideal 2x.

    python benchmarks/scaling.py [--model unet] [--width 32] [--batch-size 128] [--steps 150]

Each row is a real `accelerate launch` of `denoise_dist.train` with the same global batch,
seed and steps; images/s is read back from its metrics.jsonl (training time only, global
images, first log window skipped as warm-up). Each process gets one thread, i.e. one core,
so 2 processes on 2 cores could at best double the 1-process figure. A last row runs one
process with as many threads as the 2-process run has cores, for comparison.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from denoise_dist.tracking import read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"


def run(processes: int, threads: int, args) -> tuple[float, float]:
    """One launch; returns (training images/s, wall seconds of the whole launch)."""
    config = CONFIGS / ("cpu.yaml" if processes == 1 else "cpu_ddp.yaml")
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(config),
            "--num_processes",
            str(processes),
            "--num_cpu_threads_per_process",
            str(threads),
            "-m",
            "denoise_dist.train",
            "--cpu",
            "--output-dir",
            run_dir,
            "--model",
            args.model,
            "--width",
            str(args.width),
            "--batch-size",
            str(args.batch_size),
            "--max-steps",
            str(args.steps),
            "--log-every",
            str(args.log_every),
            "--eval-every",
            str(args.steps),
            "--checkpoint-every",
            str(args.steps),
            "--val-size",
            "512",
        ]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torchrun keeps it as is
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            ours = [line for line in result.stderr.splitlines() if "denoise-dist" in line]
            sys.exit(
                f"{processes}-process run failed:\n" + ("\n".join(ours) or result.stderr[-3000:])
            )
        if f"world_size={processes}" not in result.stdout:
            sys.exit(f"asked for {processes} processes, the run says:\n{result.stdout[:500]}")
        records = read_metrics(Path(run_dir))
    windows = [r["images_per_s"] for r in records if "images_per_s" in r]
    windows = windows[1:] or windows  # the first window holds the warm-up
    return sum(windows) / len(windows), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    rows = [(1, 1), (2, 1), (1, 2)]  # (processes, threads per process)
    results = {row: run(*row, args) for row in rows}
    base = results[(1, 1)][0]
    print(
        f"\nmodel={args.model} width={args.width} global batch={args.batch_size} "
        f"steps={args.steps} cpus={os.cpu_count()}"
    )
    print(
        f"{'processes':>9} {'threads/proc':>12} {'batch/proc':>10} {'images/s':>9} "
        f"{'speed-up':>9} {'ideal':>6} {'launch wall s':>14}"
    )
    for (processes, threads), (ips, wall) in results.items():
        ideal = processes * threads
        print(
            f"{processes:>9} {threads:>12} {args.batch_size // processes:>10} {ips:>9.0f} "
            f"{ips / base:>8.2f}x {ideal:>5.0f}x {wall:>14.1f}"
        )
    two = results[(2, 1)][0]
    print(f"2-process DDP efficiency: {100 * two / (2 * base):.0f}% of the ideal 2x")


if __name__ == "__main__":
    main()
