"""Classical denoisers to compare a model against. Plain torch, batched [N, 1, H, W].

The Gaussian blur's width is a free parameter; `tune_blur_width` picks it on the
validation split, so the test set never chooses it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from denoise_dist.metrics import psnr

# Candidate blur widths (kernel std in pixels) tried on the validation split.
BLUR_WIDTHS = tuple(round(0.2 + 0.1 * i, 1) for i in range(29))  # 0.2 .. 3.0


def identity(noisy: torch.Tensor) -> torch.Tensor:
    return noisy


def in_batches(method, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`method` applied `batch_size` images at a time (bounds memory)."""
    parts = [method(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(parts) if parts else images[:0]


def gaussian_kernel_1d(width: float, device=None) -> torch.Tensor:
    radius = max(1, math.ceil(3 * width))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-(x**2) / (2 * width**2))
    return kernel / kernel.sum()


def gaussian_blur(noisy: torch.Tensor, width: float) -> torch.Tensor:
    """Separable Gaussian blur of std `width` pixels; edges replicated."""
    kernel = gaussian_kernel_1d(width, noisy.device)
    radius = len(kernel) // 2
    x = F.pad(noisy.float(), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))


def median3x3(noisy: torch.Tensor) -> torch.Tensor:
    """3x3 median filter; edges replicated (the same as scipy's mode='reflect' for 3x3)."""
    h, w = noisy.shape[-2:]
    padded = F.pad(noisy.float(), (1, 1, 1, 1), mode="replicate")
    # The nine shifted copies; much faster on a CPU than F.unfold.
    shifted = [padded[..., i : i + h, j : j + w] for i in range(3) for j in range(3)]
    return torch.stack(shifted, dim=2).median(dim=2).values


@torch.no_grad()
def tune_blur_width(
    noisy: torch.Tensor,
    clean: torch.Tensor,
    widths: tuple[float, ...] = BLUR_WIDTHS,
    batch_size: int = 1000,
) -> float:
    """The width with the highest mean per-image PSNR on (noisy, clean); ties go to the
    smaller width."""
    totals = torch.zeros(len(widths), dtype=torch.float64)
    for start in range(0, len(noisy), batch_size):
        x, y = noisy[start : start + batch_size], clean[start : start + batch_size]
        for i, width in enumerate(widths):
            totals[i] += psnr(gaussian_blur(x, width), y).double().sum().cpu()
    return widths[int(totals.argmax())]
