"""Classical baselines against straightforward numpy reference implementations, and the
classical extra's (BM3D, scikit-image) against direct calls to those libraries."""

import sys

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from denoise_dist import classical
from tests.helpers import require


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


# The field's classical denoisers (the `classical` extra), against direct calls to the
# libraries, on a real photograph.


def extra_installed():
    missing = [b.name for b in classical.IMAGE_BASELINES.values() if not b.available()]
    require(not missing, f"{', '.join(missing)} not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def photo():
    """A 64x64 crop of scikit-image's camera, with clipped Gaussian noise of sigma 0.1."""
    skimage_data = pytest.importorskip("skimage.data")
    clean = skimage_data.camera()[200:264, 220:284].astype(np.float64) / 255
    noisy = np.clip(clean + 0.1 * np.random.default_rng(0).standard_normal(clean.shape), 0, 1)
    return clean, noisy


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).float()[None]


def direct(name: str, noisy: np.ndarray, sigma: float, factor: float = 1.0) -> np.ndarray:
    """The library call each baseline documents, written out here independently."""
    from skimage import restoration

    if name == "bm3d":
        import bm3d

        out = bm3d.bm3d(noisy, sigma_psd=sigma)
    elif name == "nl_means":
        out = restoration.denoise_nl_means(
            noisy, patch_size=7, patch_distance=11, h=0.8 * sigma, sigma=sigma, fast_mode=True
        )
    elif name == "tv":
        out = restoration.denoise_tv_chambolle(noisy, weight=factor * sigma)
    else:
        out = restoration.denoise_wavelet(noisy, sigma=sigma, method="BayesShrink", mode="soft")
    return np.clip(out, 0, 1)


@pytest.mark.parametrize(
    "name, gain_db", [("bm3d", 5.0), ("nl_means", 3.0), ("tv", 3.0), ("wavelet", 2.0)]
)
def test_baselines_agree_with_direct_calls_and_beat_the_noisy_input(photo, name, gain_db):
    extra_installed()
    clean, noisy = photo
    baseline = classical.IMAGE_BASELINES[name]
    out = classical.apply_image_baseline(baseline, to_tensor(noisy), 0.1, 0.7)
    assert out.shape == (1, 64, 64) and out.dtype == torch.float32
    expected = direct(name, noisy, 0.1, 0.7)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-6)
    noisy_db = numpy_mean_psnr(noisy[None], clean[None])
    assert numpy_mean_psnr(out.numpy(), clean[None]) > noisy_db + gain_db


def test_an_unknown_sigma_is_estimated_from_the_image(photo):
    extra_installed()
    from skimage.restoration import estimate_sigma

    _, noisy = photo
    estimate = estimate_sigma(noisy)
    assert 0.07 < estimate < 0.13  # the estimator works on this photograph
    out = classical.apply_image_baseline(
        classical.IMAGE_BASELINES["wavelet"], to_tensor(noisy), None
    )
    np.testing.assert_allclose(out[0].numpy(), direct("wavelet", noisy, estimate), atol=1e-6)


def test_failures_are_one_line_errors_per_image():
    extra_installed()
    nan_image = torch.full((1, 28, 28), 0.5)
    nan_image[0, 3, 4] = float("nan")
    for baseline in classical.IMAGE_BASELINES.values():
        with pytest.raises(classical.BaselineFailed, match="NaN"):
            classical.apply_image_baseline(baseline, nan_image, 0.1)
    tiny = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(3))
    with pytest.raises(classical.BaselineFailed, match="smaller than block size") as failed:
        classical.apply_image_baseline(classical.IMAGE_BASELINES["bm3d"], tiny, 0.1)
    assert "\n" not in str(failed.value)
    # A flat image is no failure: its estimated sigma is (about) 0, and it stays flat.
    flat = torch.full((1, 16, 16), 0.25)
    for baseline in classical.IMAGE_BASELINES.values():
        out = classical.apply_image_baseline(baseline, flat, None)
        torch.testing.assert_close(out, flat, rtol=0, atol=1e-5)


def test_noise_sigma_is_the_noise_actually_left_after_clipping():
    gen = torch.Generator().manual_seed(4)
    clean = 0.3 + 0.4 * torch.rand(50, 1, 16, 16, generator=gen)
    noise = torch.randn(clean.shape, generator=gen)
    assert classical.noise_sigma(clean + 0.1 * noise, clean) == pytest.approx(0.1, rel=0.02)
    black = torch.zeros(50, 1, 16, 16)
    clipped = (black + 0.5 * noise).clamp(0, 1)
    # Half the noise and its tail above 1 are cut off on a black background.
    expected = np.clip(0.5 * np.random.default_rng(0).standard_normal(10**6), 0, 1).std()
    assert classical.noise_sigma(clipped, black) == pytest.approx(expected, abs=0.01)
    assert expected < 0.3


def test_tv_weight_factor_is_the_argmax_of_mean_psnr_on_the_tuning_images():
    extra_installed()
    gen = torch.Generator().manual_seed(5)
    clean = classical.gaussian_blur(torch.rand(6, 1, 24, 24, generator=gen), 1.5)
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    noisy = (clean + 0.2 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    tv = classical.IMAGE_BASELINES["tv"]
    scores = [
        numpy_mean_psnr(
            np.stack([direct("tv", x[0].double().numpy(), 0.2, f) for x in noisy]),
            clean[:, 0].double().numpy(),
        )
        for f in tv.factors
    ]
    best = classical.tune_factor(tv, noisy, clean, 0.2)
    assert best == tv.factors[int(np.argmax(scores))]
    assert best not in (tv.factors[0], tv.factors[-1])


def test_without_the_extra_the_builtin_baselines_run_and_one_line_says_how_to_add_them(
    monkeypatch,
):
    from denoise_dist.commands.evaluate import options as evaluate
    from denoise_dist.errors import ConfigError

    for module in ("bm3d", "skimage", "skimage.restoration"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` raises ImportError
    chosen, missing = evaluate.chosen_baselines(None)
    assert chosen == ["gaussian_blur", "median3x3"]
    assert missing == ["bm3d", "nl_means", "tv", "wavelet"]
    note = evaluate.missing_extra_note(missing)
    assert "\n" not in note and "pip install 'denoise-dist[classical]'" in note
    with pytest.raises(ConfigError, match=r"bm3d needs the classical extra: pip install"):
        evaluate.chosen_baselines(["builtin", "bm3d"])
    assert evaluate.chosen_baselines(["builtin"]) == (["gaussian_blur", "median3x3"], [])


def test_installed_baselines_are_all_chosen_by_default_and_groups_expand():
    extra_installed()
    from denoise_dist.commands.evaluate import options as evaluate

    everything = ["gaussian_blur", "median3x3", "bm3d", "nl_means", "tv", "wavelet"]
    assert evaluate.chosen_baselines(None) == (everything, [])
    assert evaluate.chosen_baselines(["tv", "classical", "median3x3"]) == (everything[1:], [])


@pytest.mark.parametrize(
    "given, expected",
    [
        (None, {"bm3d": 10, "nl_means": 500, "tv": None, "wavelet": None}),
        (["3"], {"bm3d": 3, "nl_means": 3, "tv": None, "wavelet": None}),
        (["bm3d=2", "tv=7"], {"bm3d": 2, "nl_means": 500, "tv": 7, "wavelet": None}),
    ],
)
def test_baseline_caps(given, expected):
    from denoise_dist.commands.evaluate import options as evaluate

    assert evaluate.baseline_caps(given) == expected


@pytest.mark.parametrize("given", [["0"], ["bm3d=x"], ["median3x3=4"]])
def test_bad_baseline_caps_are_config_errors(given):
    from denoise_dist.commands.evaluate import options as evaluate
    from denoise_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="--max-baseline-images"):
        evaluate.baseline_caps(given)


def test_work_is_split_once_each_and_balanced_by_size():
    from denoise_dist.commands.evaluate.baselines import ClassicalJob as Work
    from denoise_dist.commands.evaluate.baselines import this_process_jobs as assign_work

    pixels = [1411 * 1411, 300 * 451, 303 * 384, 400 * 400, 28 * 28]
    work = [Work(m, k, True) for m in ("bm3d", "tv") for k in range(len(pixels))]
    for world in (1, 2, 3):
        loads = [0.0] * world
        shares = [assign_work(work, pixels, list(loads), rank) for rank in range(world)]
        assert sorted((w.method, w.index) for s in shares for w in s) == sorted(
            (w.method, w.index) for w in work
        )
    two = [assign_work(work, pixels, [0.0, 0.0], rank) for rank in range(2)]
    # The big retina-sized BM3D job goes alone to one process.
    big = next(s for s in two if Work("bm3d", 0, True) in s)
    assert [w for w in big if w.method == "bm3d"] == [Work("bm3d", 0, True)]
