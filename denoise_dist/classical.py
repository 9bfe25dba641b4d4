"""Classical denoisers to compare a model against.

Built in (plain torch, batched [N, 1, H, W]): identity, a Gaussian blur and a 3x3 median.
The blur's width is a free parameter; `tune_blur_width` picks it on the validation split,
so the test set never chooses it.

With the `classical` extra (`bm3d`, `scikit-image`): BM3D, NL-means, TV (Chambolle) and
wavelet shrinkage (BayesShrink), the field's usual references, run one image at a time
(`IMAGE_BASELINES`). Their noise sigma is given (see `noise_sigma`) or estimated per
image; TV's weight is a factor times sigma, tuned like the blur's width.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from denoise_dist.errors import one_line
from denoise_dist.metrics import gaussian_kernel_1d, psnr

# Candidate blur widths (kernel std in pixels) tried on the validation split.
BLUR_WIDTHS = tuple(round(0.2 + 0.1 * i, 1) for i in range(29))  # 0.2 .. 3.0


def identity(noisy: torch.Tensor) -> torch.Tensor:
    return noisy


def in_batches(method, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`method` applied `batch_size` images at a time (bounds memory)."""
    parts = [method(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(parts) if parts else images[:0]


def gaussian_blur(noisy: torch.Tensor, width: float) -> torch.Tensor:
    """Separable Gaussian blur of std `width` pixels; edges replicated."""
    radius = max(1, math.ceil(3 * width))
    kernel = gaussian_kernel_1d(radius, width, torch.float32, noisy.device)
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


# The field's classical denoisers, from other packages (the `classical` extra). They run
# one 2-D float64 numpy image at a time, so `evaluate` scores them per image, capped and
# shared across processes. Each takes (noisy image, noise sigma, tuned factor).
CLASSICAL_EXTRA = "pip install 'denoise-dist[classical]'"
TV_FACTORS = tuple(round(2 ** (k / 2), 3) for k in range(-6, 5))  # 0.125 .. 4: weight / sigma
MAX_TV_TUNING_IMAGES = 64


def _bm3d(noisy: np.ndarray, sigma: float, factor: float) -> np.ndarray:
    import bm3d

    return bm3d.bm3d(noisy, sigma_psd=sigma)


def _nl_means(noisy: np.ndarray, sigma: float, factor: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    # scikit-image's rule of thumb for fast_mode with the noise sigma given: h = 0.8 sigma.
    return denoise_nl_means(
        noisy, patch_size=7, patch_distance=11, h=0.8 * sigma, sigma=sigma, fast_mode=True
    )


def _tv(noisy: np.ndarray, sigma: float, factor: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(noisy, weight=factor * sigma)


def _wavelet(noisy: np.ndarray, sigma: float, factor: float) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    return denoise_wavelet(noisy, sigma=sigma, method="BayesShrink", mode="soft")


@dataclass(frozen=True)
class ImageBaseline:
    """A classical denoiser run one image at a time, and how its parameters are set."""

    name: str
    module: str  # the package it needs
    params: str  # for the report
    run: Callable[[np.ndarray, float, float], np.ndarray]
    default_cap: int | None  # the most images it scores unless told (None: all)
    cost: float  # relative seconds per pixel, to balance the work across processes
    factors: tuple[float, ...] = (1.0,)  # several: tuned on the tuning images

    def available(self) -> bool:
        # Imported, not just found: a package that is present but broken counts as absent.
        try:
            importlib.import_module(self.module)
        except ImportError:
            return False
        return True


IMAGE_BASELINES: dict[str, ImageBaseline] = {
    b.name: b
    for b in (
        ImageBaseline(
            "bm3d", "bm3d", "bm3d.bm3d(noisy, sigma_psd=sigma), profile 'np'", _bm3d, 10, 20.0
        ),
        ImageBaseline(
            "nl_means",
            "skimage",
            "skimage denoise_nl_means, 7x7 patches, distance 11, fast mode, h = 0.8 sigma",
            _nl_means,
            500,
            1.0,
        ),
        ImageBaseline(
            "tv",
            "skimage",
            "skimage denoise_tv_chambolle, weight = factor x sigma, factor tuned",
            _tv,
            None,
            0.05,
            TV_FACTORS,
        ),
        ImageBaseline(
            "wavelet",
            "skimage",
            "skimage denoise_wavelet, BayesShrink, soft, db1",
            _wavelet,
            None,
            0.02,
        ),
    )
}


class BaselineFailed(Exception):
    """A classical denoiser could not denoise one image."""


def estimate_sigma(noisy: np.ndarray) -> float:
    """A blind estimate of the Gaussian noise sigma of one image (wavelet MAD)."""
    from skimage.restoration import estimate_sigma as skimage_estimate

    return float(skimage_estimate(noisy))


def noise_sigma(noisy: torch.Tensor, clean: torch.Tensor) -> float:
    """The standard deviation of the noise actually in the images (noisy - clean), over a
    set whose clean images are known. Sigma for plain Gaussian noise; less where clipping
    to [0, 1] cut it; the matching Gaussian sigma for salt-and-pepper and Poisson noise."""
    return float((noisy.double() - clean.double()).std(correction=0))


def apply_image_baseline(
    baseline: ImageBaseline, noisy: torch.Tensor, sigma: float | None, factor: float = 1.0
) -> torch.Tensor:
    """`baseline` on one image [C=1, H, W] (any float tensor), clipped to [0, 1]. `sigma`
    None: estimated from the image. Raises BaselineFailed on anything that goes wrong."""
    image = noisy.detach().double().cpu().reshape(noisy.shape[-2:]).numpy()
    if not np.isfinite(image).all():
        raise BaselineFailed("the noisy image has NaN or infinite pixels")
    try:
        if sigma is None:
            sigma = estimate_sigma(image)
        if sigma <= 0:  # no noise to remove (a flat image's estimate)
            return noisy.float().clamp(0, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = np.asarray(baseline.run(image, sigma, factor), dtype=np.float64)
    except Exception as e:  # a foreign library: any error is this image's failure
        raise BaselineFailed(one_line(e)) from e
    if out.shape != image.shape:
        raise BaselineFailed(f"returned shape {out.shape} for an image of {image.shape}")
    if not np.isfinite(out).all():
        raise BaselineFailed("returned NaN or infinite pixels")
    return torch.from_numpy(out).float().clamp(0, 1).reshape(noisy.shape)


def tune_factor(
    baseline: ImageBaseline,
    noisy: torch.Tensor,
    clean: torch.Tensor,
    sigma: float | None,
) -> float:
    """The factor with the highest mean PSNR on (noisy, clean) [N, 1, H, W] (at most
    MAX_TV_TUNING_IMAGES of them, evenly spaced); the first factor if there is nothing to
    tune. Images it fails on are left out."""
    if len(baseline.factors) == 1:
        return baseline.factors[0]
    # Evenly spaced: a folder's crops come file by file, and the first few files are not
    # all kinds of picture.
    step = max(1, math.ceil(len(noisy) / MAX_TV_TUNING_IMAGES))
    noisy, clean = noisy[::step], clean[::step]
    scores = []
    for factor in baseline.factors:
        total, count = 0.0, 0
        for x, y in zip(noisy, clean, strict=True):
            try:
                out = apply_image_baseline(baseline, x, sigma, factor)
            except BaselineFailed:
                continue
            total += float(psnr(out[None], y[None]))
            count += 1
        scores.append(total / count if count else -math.inf)
    return baseline.factors[int(np.argmax(scores))]
