"""Per-image PSNR and SSIM in torch (data range 1.0), for batches [N, C, H, W]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-10


def psnr(pred: torch.Tensor, target: torch.Tensor, max_db: float = 100.0) -> torch.Tensor:
    """PSNR of each image in dB, capped at `max_db` for identical images."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(EPS))).clamp_max(max_db)


def gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    """The 2-D Gaussian window [1, 1, size, size], normalised to sum 1."""
    g = _gaussian_1d(size, sigma, device)
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def _gaussian_1d(size: int, sigma: float, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, size: int = 11, sigma: float = 1.5):
    """Mean SSIM of each image (Wang et al. 2004: 11x11 Gaussian window of sigma 1.5,
    K1=0.01, K2=0.03, 'valid' filtering as in the reference implementation)."""
    x, y = pred.double(), target.double()  # float32 variances cancel badly near flat areas
    channels = x.shape[1]
    g = _gaussian_1d(size, sigma, x.device)
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


def quality_sums(pred: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """[sum of per-image PSNR, sum of per-image SSIM, image count] as float64, so that
    sums from disjoint shards (or batches) add up to the whole set's."""
    if len(pred) == 0:
        return torch.zeros(3, dtype=torch.float64, device=clean.device)
    count = torch.tensor(float(len(pred)), dtype=torch.float64, device=clean.device)
    return torch.stack([psnr(pred, clean).double().sum(), ssim(pred, clean).double().sum(), count])


def means(sums: torch.Tensor) -> tuple[float, float]:
    """(mean PSNR, mean SSIM) from quality_sums totals."""
    psnr_sum, ssim_sum, count = sums.tolist()
    return psnr_sum / count, ssim_sum / count
