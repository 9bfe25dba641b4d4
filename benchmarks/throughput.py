"""Training images/s of denoise-dist against DataLoader pipelines of the same model.

    python benchmarks/throughput.py [--model seed_ae] [--batch-size 128] [--steps 300]
        [--rounds 3] [--device cpu|cuda] [--workers 0 8] [--variants eager bf16 compile]
        [--json results.json]

Every measurement is a fresh process; a round runs every pipeline once, in a different
order each round, and the table shows the median over rounds (and each round's figure).
Images/s is steady state: the first fifth of the steps (warm-up, compilation) is not
timed.

- `dataloader-N`: what tutorials write: torchvision MNIST with `ToTensor()`, a shuffling
  `DataLoader` with N workers (pin_memory on a GPU), noise added per batch, the same
  model class, Adam, MSE and gradient clipping, in fp32.
- `ours-<variant>`: the real `denoise-dist train`, read back from its metrics.jsonl.
  Variants: eager (the default), bf16 (--mixed-precision bf16), compile (--compile),
  compile+bf16, cuda-graph (--cuda-graph: the whole step captured once and replayed; on a
  CPU it runs eagerly), compile+cuda-graph.

Also printed: the median wall time of each whole process (start-up, data, evaluation
included), timed from outside. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from denoise_dist.tracking import read_metrics

VARIANT_FLAGS = {
    "eager": [],
    "bf16": ["--mixed-precision", "bf16"],
    "compile": ["--compile"],
    "compile+bf16": ["--compile", "--mixed-precision", "bf16"],
    "cuda-graph": ["--cuda-graph", "--no-compile"],  # the whole step as one graph (CUDA)
    "compile+cuda-graph": ["--compile", "--cuda-graph"],
}


def dataloader_pipeline(args) -> float:
    """Run in a child process (--role dataloader): the reference loop; prints images/s."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from denoise_dist import data
    from denoise_dist.config import ModelConfig
    from denoise_dist.models import build_model, model_kwargs

    device, workers = torch.device(args.device), args.workers[0]
    root = data.resolve_data_root(args.data_dir)
    dataset = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    torch.manual_seed(0)
    model = build_model(args.model, **model_kwargs(args.model, ModelConfig())).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    warmup = args.steps // 5
    batches, step, start = iter(loader), 0, 0.0
    while step < args.steps:
        try:
            clean, _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        clean = clean.to(device, non_blocking=True)
        noisy = (clean + 0.5 * torch.randn_like(clean)).clamp(0, 1)
        loss = F.mse_loss(model(noisy), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (args.steps - warmup) * args.batch_size / (time.perf_counter() - start)


def ours(args, variant: str) -> float:
    """`denoise-dist train` in a child process; steady-state images/s from metrics.jsonl."""
    log_every = max(1, args.steps // 10)
    with tempfile.TemporaryDirectory() as run_dir:
        flags = [
            "--model",
            args.model,
            "--batch-size",
            str(args.batch_size),
            "--max-steps",
            str(args.steps),
            "--log-every",
            str(log_every),
            "--eval-every",
            str(args.steps),
            "--checkpoint-every",
            str(args.steps),
            "--val-size",
            "500",
            "--output-dir",
            run_dir,
            *VARIANT_FLAGS[variant],
        ]
        if args.device == "cpu":
            flags.append("--cpu")
        if args.data_dir:
            flags += ["--data-dir", args.data_dir]
        result = subprocess.run(
            [sys.executable, "-m", "denoise_dist", "train", *flags], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"ours-{variant} failed: {result.stderr.strip()[-2000:]}")
        records = read_metrics(Path(run_dir))
    windows = [r for r in records if "images_per_s" in r and r["step"] > args.steps // 5]
    seconds = sum(log_every * args.batch_size / r["images_per_s"] for r in windows)
    return len(windows) * log_every * args.batch_size / seconds


def measure(args, pipeline: str) -> tuple[float, float]:
    """(images/s, wall seconds of the whole process) of one pipeline, in a fresh process."""
    start = time.perf_counter()
    if pipeline.startswith("dataloader-"):
        cmd = [
            sys.executable,
            __file__,
            "--role",
            "dataloader",
            "--workers",
            pipeline.split("-")[1],
            "--model",
            args.model,
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
        ]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{pipeline} failed: {result.stderr.strip()[-2000:]}")
        images_per_s = float(result.stdout.strip().splitlines()[-1])
    else:
        images_per_s = ours(args, pipeline.removeprefix("ours-"))
    return images_per_s, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="seed_ae")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0],
        help="DataLoader workers of the reference pipelines",
    )
    parser.add_argument("--variants", nargs="+", default=["eager"], choices=list(VARIANT_FLAGS))
    parser.add_argument("--data-dir")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "dataloader":
        print(dataloader_pipeline(args))
        return

    pipelines = [f"dataloader-{w}" for w in args.workers] + [f"ours-{v}" for v in args.variants]
    results: dict[str, list[tuple[float, float]]] = {p: [] for p in pipelines}
    for round_index in range(args.rounds):
        order = (
            pipelines[round_index % len(pipelines) :] + pipelines[: round_index % len(pipelines)]
        )
        for pipeline in order:
            try:
                results[pipeline].append(measure(args, pipeline))
            except RuntimeError as e:
                print(f"round {round_index + 1}: {e}", file=sys.stderr)
            print(
                f"round {round_index + 1} {pipeline}: "
                f"{results[pipeline][-1][0] if results[pipeline] else float('nan'):.0f} "
                "images/s",
                flush=True,
            )

    medians = {p: statistics.median(r[0] for r in runs) for p, runs in results.items() if runs}
    base = medians.get(pipelines[0])
    device = args.device
    if device == "cuda":
        import torch

        device = torch.cuda.get_device_name(0)
    print(
        f"\nmodel={args.model} batch={args.batch_size} steps={args.steps} rounds={args.rounds} "
        f"device={device} cpus={os.cpu_count()}"
    )
    print(f"{'pipeline':<20}{'images/s':>10}{'vs ' + pipelines[0]:>20}{'wall s':>9}   rounds")
    for pipeline, runs in results.items():
        if not runs:
            print(f"{pipeline:<20}{'failed':>10}")
            continue
        ratio = f"{medians[pipeline] / base:.2f}x" if base else "-"
        wall = statistics.median(r[1] for r in runs)
        each = " ".join(f"{r[0]:.0f}" for r in runs)
        print(f"{pipeline:<20}{medians[pipeline]:>10.0f}{ratio:>20}{wall:>9.1f}   {each}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "batch_size": args.batch_size,
                    "steps": args.steps,
                    "device": device,
                    "rounds": {p: r for p, r in results.items()},
                    "median_images_per_s": medians,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
