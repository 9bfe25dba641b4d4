"""Per-image PSNR and SSIM in torch (data range 1.0), for batches [N, C, H, W], and
`PerImageScores`, the one sharded scorer that training's validation and `evaluate` use."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

EPS = 1e-10
SSIM_WINDOW = 11  # Wang et al. 2004; smaller images get the largest odd window they hold


def psnr(pred: torch.Tensor, target: torch.Tensor, max_db: float = 100.0) -> torch.Tensor:
    """PSNR of each image in dB, capped at `max_db` for identical images."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(EPS))).clamp_max(max_db)


def gaussian_kernel_1d(radius: int, sigma: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """The normalised 1-D Gaussian of std `sigma` over [-radius, radius] (SSIM's window,
    and the blur baseline's kernel)."""
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_window(height: int, width: int, size: int = SSIM_WINDOW) -> int:
    """The SSIM window for an image: `size`, or the largest odd size the image holds
    (an 8x8 crop gets 7x7; 'valid' filtering needs the window inside the image)."""
    window = min(size, height, width)
    return window - (1 - window % 2)


def ssim(pred: torch.Tensor, target: torch.Tensor, size: int = SSIM_WINDOW, sigma: float = 1.5):
    """Mean SSIM of each image (Wang et al. 2004: 11x11 Gaussian window of sigma 1.5,
    K1=0.01, K2=0.03, 'valid' filtering as in the reference implementation; a smaller
    window on images smaller than it, `ssim_window`)."""
    x, y = pred.double(), target.double()  # float32 variances cancel badly near flat areas
    channels = x.shape[1]
    size = ssim_window(x.shape[-2], x.shape[-1], size)
    g = gaussian_kernel_1d(size // 2, sigma, device=x.device)
    rows = g.view(1, 1, size, 1).expand(channels, 1, size, 1)
    cols = g.view(1, 1, 1, size).expand(channels, 1, 1, size)

    def blur(t):  # the Gaussian is separable: two 1-D passes cost 2*size, not size**2
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(1)


class PerImageScores:
    """Per-image PSNR and SSIM of a set scored in shards, under any number of labels (a
    noise level, a method): each process scores its own images, `reduce` sums the tables
    across processes, and every image then counts exactly once, whatever the sharding.

    `values[*labels, image]` holds (PSNR, SSIM); `scored[*labels, image]` is 1 where
    that image was scored under those labels."""

    def __init__(self, labels: Sequence[int], count: int):
        self.values = torch.zeros(*labels, count, 2, dtype=torch.float64)
        self.scored = torch.zeros(*labels, count, dtype=torch.float64)

    def add(self, at: tuple, indices, pred: torch.Tensor, clean: torch.Tensor) -> None:
        """Score images `indices` (global positions in the set) under labels `at`."""
        self.values[at + (indices, 0)] = psnr(pred, clean).double().cpu()
        self.values[at + (indices, 1)] = ssim(pred, clean).double().cpu()
        self.scored[at + (indices,)] = 1

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor], device) -> None:
        """Sum the tables across processes (`all_reduce_sum` returns the summed tensor)."""
        self.values = all_reduce_sum(self.values.to(device)).cpu()
        self.scored = all_reduce_sum(self.scored.to(device)).cpu()

    def means(self, at: tuple) -> tuple[float, float] | None:
        """(mean PSNR, mean SSIM) of the images scored under `at`; None if none were."""
        scored = self.scored[at] > 0
        if not scored.any():
            return None
        psnr_mean, ssim_mean = self.values[at][scored].mean(0).tolist()
        return psnr_mean, ssim_mean
