"""Training images/s of denoise-dist against a plain DataLoader pipeline, same model.

    python benchmarks/throughput.py [--model seed_ae] [--batch-size 128] [--steps 300]

"ours" is the real `denoise_dist.train` loop (one process, CPU), read back from its
metrics.jsonl (training time only). Its data time is the same index-and-noise code timed
on its own. "reference" is what most tutorials write: torchvision MNIST with
`transforms.ToTensor()`, a shuffling `DataLoader` (num_workers=0), noise added per batch,
the same model, Adam and MSE. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from denoise_dist import data
from denoise_dist.cli import main as cli_main
from denoise_dist.config import NoiseConfig
from denoise_dist.models import build_model, model_kwargs
from denoise_dist.noise import train_noise


def ours(model: str, batch: int, steps: int, root: Path) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        code = cli_main(
            [
                "train",
                "--model",
                model,
                "--batch-size",
                str(batch),
                "--max-steps",
                str(steps),
                "--log-every",
                str(steps // 6),
                "--eval-every",
                str(steps),
                "--checkpoint-every",
                str(steps),
                "--val-size",
                "500",
                "--cpu",
                "--output-dir",
                run_dir,
                "--data-dir",
                str(root),
            ]
        )
        assert code == 0, f"training failed with exit code {code}"
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    windows = [r["images_per_s"] for r in records if "images_per_s" in r][1:]  # skip warm-up
    return sum(windows) / len(windows)


def our_data_time(batch: int, steps: int, root: Path) -> float:
    """Seconds per step spent building a noisy batch, with the package's own code."""
    images = data.load_split("mnist", root, "train", download=False)
    sharding = data.Sharding(len(images), batch)
    perm = data.epoch_permutation(len(images), 0, 0)
    cfg = NoiseConfig()
    start = time.perf_counter()
    for step in range(steps):
        clean = data.to_float(images[sharding.global_batch_indices(perm, step)])
        train_noise(clean, cfg, 0, 0, step)
    return (time.perf_counter() - start) / steps


def reference(model_name: str, batch: int, steps: int, root: Path) -> tuple[float, float]:
    """A plain DataLoader pipeline; returns (images/s, data seconds per step)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
    torch.manual_seed(0)
    model = build_model(model_name, **model_kwargs(model_name, 32, 0.2))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    warmup, timed = steps // 6, 0
    data_time = compute_time = 0.0
    batches = iter(loader)
    for step in range(steps):
        t0 = time.perf_counter()
        clean, _ = next(batches)
        noisy = (clean + 0.5 * torch.randn_like(clean)).clamp(0, 1)
        t1 = time.perf_counter()
        loss = F.mse_loss(model(noisy), clean)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        t2 = time.perf_counter()
        if step >= warmup:
            data_time, compute_time, timed = data_time + t1 - t0, compute_time + t2 - t1, timed + 1
    return timed * batch / (data_time + compute_time), data_time / timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="seed_ae")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    root = data.resolve_data_root(args.data_dir)

    ref_ips, ref_data_s = reference(args.model, args.batch_size, args.steps, root)
    our_ips = ours(args.model, args.batch_size, args.steps, root)
    our_data_s = our_data_time(args.batch_size, args.steps, root)
    our_step_s = args.batch_size / our_ips
    ref_step_s = args.batch_size / ref_ips
    print(
        f"\nmodel={args.model} batch={args.batch_size} steps={args.steps} "
        f"threads={torch.get_num_threads()} cpus={os.cpu_count()}"
    )
    print(f"{'pipeline':<12}{'images/s':>10}{'data ms/step':>14}{'data % of step':>16}")
    print(
        f"{'reference':<12}{ref_ips:>10.0f}{1e3 * ref_data_s:>14.2f}"
        f"{100 * ref_data_s / ref_step_s:>15.1f}%"
    )
    print(
        f"{'ours':<12}{our_ips:>10.0f}{1e3 * our_data_s:>14.2f}"
        f"{100 * our_data_s / our_step_s:>15.1f}%"
    )
    print(
        f"speed-up: {our_ips / ref_ips:.2f}x (target >= 1.5x); "
        f"our data time {100 * our_data_s / our_step_s:.1f}% of a step (target < 5%)"
    )


if __name__ == "__main__":
    sys.exit(main())
