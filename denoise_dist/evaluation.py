"""Batched PSNR/SSIM sums over a (shard of an) evaluation set. Plain torch.

Callers sum the returned totals across ranks; each rank passes a disjoint shard, so
every image is counted exactly once whatever the world size.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from denoise_dist.metrics import psnr, ssim


@torch.no_grad()
def denoise_batched(model: nn.Module, noisy: torch.Tensor, batch_size: int = 500,
                    autocast=nullcontext) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        outs = []
        for start in range(0, len(noisy), batch_size):
            with autocast():
                outs.append(model(noisy[start:start + batch_size]).float())
        return torch.cat(outs) if outs else noisy[:0].float()
    finally:
        model.train(was_training)


def quality_sums(pred: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """[sum of per-image PSNR, sum of per-image SSIM, image count] as float64."""
    if len(pred) == 0:
        return torch.zeros(3, dtype=torch.float64, device=clean.device)
    return torch.stack([psnr(pred, clean).double().sum(), ssim(pred, clean).double().sum(),
                        torch.tensor(float(len(pred)), dtype=torch.float64, device=clean.device)])


def means(sums: torch.Tensor) -> tuple[float, float]:
    psnr_sum, ssim_sum, count = sums.tolist()
    return psnr_sum / count, ssim_sum / count
