"""Classical baselines against straightforward numpy reference implementations."""

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from denoise_dist import classical


def numpy_median3x3(images: np.ndarray) -> np.ndarray:
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    return np.median(sliding_window_view(padded, (3, 3), axis=(2, 3)), axis=(-2, -1))


def numpy_blur(images: np.ndarray, width: float) -> np.ndarray:
    """Direct (not separable) 2-D convolution with a normalised Gaussian, edges replicated."""
    radius = max(1, int(np.ceil(3 * width)))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * width**2))
    kernel /= kernel.sum()
    padded = np.pad(
        images.astype(np.float64), ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="edge"
    )
    windows = sliding_window_view(padded, kernel.shape, axis=(2, 3))
    return (windows * kernel).sum(axis=(-2, -1))


def numpy_mean_psnr(pred: np.ndarray, clean: np.ndarray) -> float:
    mse = ((pred.astype(np.float64) - clean) ** 2).reshape(len(pred), -1).mean(1)
    return float(np.mean(10 * np.log10(1 / mse)))


@pytest.fixture
def images():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(5, 1, 13, 17, generator=gen)


def test_median_matches_numpy(images):
    expected = numpy_median3x3(images.numpy())
    np.testing.assert_allclose(classical.median3x3(images).numpy(), expected, atol=0)


def test_median_removes_an_isolated_impulse():
    image = torch.full((1, 1, 9, 9), 0.25)
    image[0, 0, 4, 4] = 1.0
    assert torch.equal(classical.median3x3(image), torch.full_like(image, 0.25))


@pytest.mark.parametrize("width", [0.3, 1.0, 2.5])
def test_blur_matches_a_direct_numpy_convolution(images, width):
    expected = numpy_blur(images.numpy(), width)
    np.testing.assert_allclose(classical.gaussian_blur(images, width).numpy(), expected, atol=2e-6)


def test_blur_keeps_flat_images_flat():
    flat = torch.full((2, 1, 8, 8), 0.6)
    torch.testing.assert_close(classical.gaussian_blur(flat, 1.7), flat)


@pytest.mark.parametrize("method", [classical.median3x3, lambda x: classical.gaussian_blur(x, 1.2)])
def test_results_do_not_depend_on_how_images_are_batched(images, method):
    # Evaluation shards the test set across processes; each image must score the same
    # (up to float rounding: a convolution's summation order may depend on the batch).
    whole = method(images)
    one_by_one = torch.cat([method(images[i : i + 1]) for i in range(len(images))])
    torch.testing.assert_close(whole, one_by_one, rtol=0, atol=1e-6)


def test_tuned_width_is_the_numpy_argmax_of_mean_psnr():
    gen = torch.Generator().manual_seed(1)
    # Smooth clean images (blurred noise) so that the best width is in the middle.
    clean = classical.gaussian_blur(torch.rand(20, 1, 16, 16, generator=gen), 1.5)
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    noisy = (clean + 0.3 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    widths = (0.3, 0.6, 1.0, 1.5, 2.0, 3.0)
    scores = [
        numpy_mean_psnr(numpy_blur(noisy.numpy(), w), clean.numpy().astype(np.float64))
        for w in widths
    ]
    best = classical.tune_blur_width(noisy, clean, widths, batch_size=7)
    assert best == widths[int(np.argmax(scores))]
    assert best not in (widths[0], widths[-1])  # a real trade-off, not an edge of the grid


def test_tuning_prefers_little_blur_on_clean_detail_and_much_on_flat_noise():
    gen = torch.Generator().manual_seed(2)
    detail = torch.rand(4, 1, 12, 12, generator=gen)
    assert classical.tune_blur_width(detail, detail) == classical.BLUR_WIDTHS[0]
    flat = torch.full((4, 1, 12, 12), 0.5)
    noisy = flat + 0.2 * torch.randn(flat.shape, generator=gen)
    assert classical.tune_blur_width(noisy, flat) == classical.BLUR_WIDTHS[-1]
