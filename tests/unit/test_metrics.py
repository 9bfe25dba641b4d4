import math

import pytest
import torch
import torch.nn.functional as F

from denoise_dist.metrics import gaussian_kernel_1d, psnr, ssim
from tests.conftest import skimage_data


def test_psnr_known_values():
    clean = torch.zeros(2, 1, 8, 8)
    pred = clean.clone()
    pred[0] += 0.1  # MSE 0.01 -> 20 dB
    pred[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert psnr(pred, clean).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)


def test_psnr_of_identical_images_is_capped():
    x = torch.rand(1, 1, 8, 8)
    assert psnr(x, x).item() == 100.0


def test_ssim_identical_is_one():
    x = torch.rand(3, 1, 28, 28)
    assert ssim(x, x).tolist() == pytest.approx([1.0] * 3, abs=1e-5)


def test_ssim_of_constant_images_matches_closed_form():
    # Constant images: variances and covariance vanish, so SSIM is the luminance term.
    a, b = 0.2, 0.6
    x, y = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(x, y).item() == pytest.approx(expected, abs=1e-5)


def test_ssim_of_negated_pattern_matches_closed_form():
    # y = 1 - x around mean 0.5: equal means and variances, covariance -var.
    torch.manual_seed(0)
    x = 0.5 + 0.1 * torch.sign(torch.randn(1, 1, 32, 32))
    y = 1 - x
    value = ssim(x, y).item()
    assert value < 0  # anti-correlated structure
    # Window statistics vary, but the mean must equal the analytic value per window on average.
    import torch.nn.functional as F

    w = gaussian_window().float()
    mu = F.conv2d(x, w)
    var = F.conv2d(x * x, w) - mu**2
    c1, c2 = 0.01**2, 0.03**2
    lum = (2 * mu * (1 - mu) + c1) / (mu**2 + (1 - mu) ** 2 + c1)
    expected = (lum * (-2 * var + c2) / (2 * var + c2)).mean().item()
    assert value == pytest.approx(expected, abs=1e-4)


def gaussian_window() -> torch.Tensor:
    """SSIM's 2-D window [1, 1, 11, 11], built directly as the outer product."""
    g = gaussian_kernel_1d(5, 1.5)
    return (g[:, None] * g[None, :]).view(1, 1, 11, 11)


def test_psnr_decreases_with_noise():
    clean = torch.rand(4, 1, 28, 28)
    low = psnr(clean + 0.01 * torch.randn_like(clean), clean).mean()
    high = psnr(clean + 0.1 * torch.randn_like(clean), clean).mean()
    assert low > high + 15 and math.isfinite(high.item())


def test_separable_ssim_equals_the_direct_2d_window():
    torch.manual_seed(1)
    x, y = (
        torch.rand(4, 1, 28, 28, dtype=torch.float64),
        torch.rand(4, 1, 28, 28, dtype=torch.float64),
    )
    w = gaussian_window().double()

    def blur(t):
        return F.conv2d(t, w)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    direct = (
        (((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        .flatten(1)
        .mean(1)
    )
    assert torch.allclose(ssim(x, y), direct, atol=1e-12)


def test_psnr_and_ssim_match_scikit_image_on_real_mnist(mnist_root):
    """The published figures use these functions: check them against an independent
    implementation (scikit-image's, with the settings of Wang et al. 2004)."""
    skimage_data()  # scikit-image is installed (a failure in CI, a skip elsewhere)
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from denoise_dist.data import load_split, to_float
    from denoise_dist.noise import fixed_noisy

    clean = to_float(load_split("mnist", mnist_root, "test", download=False)[:64])
    noisy = fixed_noisy(clean, "gaussian", {"sigma": 0.3}, "test", 1234)
    ours_psnr, ours_ssim = psnr(noisy, clean), ssim(noisy, clean)
    for i in range(len(clean)):
        x, y = noisy[i, 0].double().numpy(), clean[i, 0].double().numpy()
        assert ours_psnr[i].item() == pytest.approx(
            peak_signal_noise_ratio(y, x, data_range=1.0), abs=1e-4
        )
        reference = structural_similarity(
            y, x, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert ours_ssim[i].item() == pytest.approx(reference, abs=1e-4)


def test_ssim_on_images_smaller_than_its_window_uses_the_largest_odd_window():
    """The smallest training crop the config accepts (8x8) cannot hold the 11x11 window
    (the 'valid' filtering would have no output): it is scored with the 7x7 truncated
    Gaussian window, computed here directly in 2-D."""
    torch.manual_seed(2)
    clean = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    noisy = (clean + 0.1 * torch.randn_like(clean)).clamp(0, 1)
    g = gaussian_kernel_1d(3, 1.5)
    w = (g[:, None] * g[None, :]).view(1, 1, 7, 7)
    c1, c2 = 0.01**2, 0.03**2
    mx, my = F.conv2d(noisy, w), F.conv2d(clean, w)
    vx, vy = F.conv2d(noisy * noisy, w) - mx**2, F.conv2d(clean * clean, w) - my**2
    cov = F.conv2d(noisy * clean, w) - mx * my
    direct = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert torch.allclose(ssim(noisy, clean), direct.flatten(1).mean(1), atol=1e-12)
    assert ssim(noisy[:, :, :7, :6], clean[:, :, :7, :6]).shape == (3,)  # 5x5 window
