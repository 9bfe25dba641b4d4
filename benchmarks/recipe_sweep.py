"""One point of the sweeps that chose the recipes: a bare training loop on MNIST (the
package's data, noise, models, schedule, losses and EMA; no Accelerate, no checkpoints),
printing validation PSNR/SSIM on 2,000 held-out images at each quarter.

    python benchmarks/recipe_sweep.py --steps 3850 --batch 64 --lr 1.5e-3 --bf16 [--width 32]
        [--depth 2] [--sigma 0.5 | --blind 0.1,0.7] [--loss mse|psnr] [--ema 0.999]

The runs and their figures are in benchmarks/quality_sweep.md. Step counts, not wall
time, are the budget here (so a busy machine changes the time, not the result); the
seconds per step of each configuration were measured apart, on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from denoise_dist import data, noise
from denoise_dist.config import Config, overlay
from denoise_dist.metrics import psnr, ssim
from denoise_dist.models import build_model
from denoise_dist.optim import EMA, LOSSES, lr_at


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.0)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--blind", default="", help="lo,hi: train blind, score at 0.1 0.3 0.5 0.7")
    p.add_argument("--loss", default="mse", choices=("mse", "psnr"))
    p.add_argument("--tag", default="")
    a = p.parse_args()

    torch.manual_seed(0)
    train, val = data.split_train_val(
        data.load_split("mnist", data.resolve_data_root(None), "train", False), 5000
    )
    clean_val = data.to_float(val[:2000])
    if a.blind:
        low, high = map(float, a.blind.split(","))
        name, params = "gaussian_blind", {"sigma_min": low, "sigma_max": high}
        sigmas = (0.1, 0.3, 0.5, 0.7)
    else:
        name, params, sigmas = "gaussian", {"sigma": a.sigma}, (a.sigma,)
    val_sets = {
        s: noise.fixed_noisy(clean_val, "gaussian", {"sigma": s}, "val", 1234) for s in sigmas
    }
    model = build_model("unet", width=a.width, depth=a.depth).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=a.lr)
    ema = EMA(model, a.ema) if a.ema else None
    # The package's schedule and loss, from the same config fields train reads.
    cfg = overlay(Config(), {"lr": a.lr, "warmup_steps": a.warmup, "schedule": "cosine"}, "sweep")
    train_set = data.TensorTrainSet(train, 0)
    sharding = data.Sharding(len(train), a.batch)
    rows = torch.arange(a.batch)

    def scores(net) -> dict:
        net.eval()
        out = {}
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            for s, noisy in val_sets.items():
                pred = torch.cat([net(noisy[i : i + 500]).float() for i in range(0, 2000, 500)])
                out[s] = (
                    round(psnr(pred, clean_val).mean().item(), 3),
                    round(ssim(pred, clean_val).mean().item(), 4),
                )
        net.train()
        return out

    train_s = 0.0
    for step in range(a.steps):
        start = time.perf_counter()
        clean = train_set.batch(step, rows, sharding)
        draw = noise.train_draw(0, step // sharding.steps_per_epoch, step, rows)
        noisy = noise.add_noise(name, clean, draw, params)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg, a.steps)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            out = model(noisy)
        LOSSES[a.loss]((out.float() - clean).pow(2).flatten(1).mean(1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model, step)
        train_s += time.perf_counter() - start
        if (step + 1) % max(1, a.steps // 4) == 0 or step + 1 == a.steps:
            result, averaged = scores(model), scores(ema.model) if ema is not None else None
            print(
                f"{a.tag} step {step + 1} train {train_s:.0f}s {result} ema {averaged}", flush=True
            )
    print(
        json.dumps(
            {"tag": a.tag, "args": vars(a), "final": result, "ema": averaged, "train_s": train_s}
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
