import math

import torch

from denoise_dist.config import NoiseConfig
from denoise_dist.noise import add_noise, fixed_noisy, train_noise
from denoise_dist.rng import generator


def grey(n=64, value=0.5, size=28):
    return torch.full((n, 1, size, size), value)


def test_gaussian_statistics():
    clean = grey(200)
    noisy = add_noise(clean, NoiseConfig(noise="gaussian", sigma=0.1), generator(1))
    residual = noisy - clean
    assert abs(residual.mean().item()) < 2e-3
    assert abs(residual.std().item() - 0.1) < 2e-3


def test_results_are_clamped():
    for noise in ["gaussian", "gaussian_blind", "salt_pepper", "poisson_gaussian"]:
        noisy = add_noise(grey(8, 0.9), NoiseConfig(noise=noise, sigma=1.0), generator(2))
        assert noisy.min() >= 0 and noisy.max() <= 1


def test_blind_sigma_varies_per_image_within_range():
    cfg = NoiseConfig(noise="gaussian_blind", sigma_min=0.1, sigma_max=0.3)
    noisy = add_noise(grey(300), cfg, generator(3))
    stds = (noisy - 0.5).flatten(1).std(1)
    assert stds.min() > 0.08 and stds.max() < 0.32 and stds.max() - stds.min() > 0.1


def test_salt_pepper_fraction():
    noisy = add_noise(grey(100), NoiseConfig(noise="salt_pepper", salt_pepper=0.2),
                      generator(4))
    flipped = (noisy != 0.5).float().mean().item()
    assert abs(flipped - 0.2) < 0.01
    assert abs((noisy == 0).float().mean().item() - 0.1) < 0.01


def test_poisson_gaussian_variance_grows_with_signal():
    cfg = NoiseConfig(noise="poisson_gaussian", photons=20.0, sigma=0.01)
    dark = add_noise(grey(200, 0.1), cfg, generator(5)) - 0.1
    bright = add_noise(grey(200, 0.5), cfg, generator(5)) - 0.5
    # Shot noise std = sqrt(x / photons): 0.071 at 0.1, 0.158 at 0.5.
    assert abs(dark.std().item() - math.sqrt(0.1 / 20 + 1e-4)) < 0.01
    assert abs(bright.std().item() - math.sqrt(0.5 / 20 + 1e-4)) < 0.01


def test_training_noise_is_a_function_of_seed_epoch_step():
    clean, cfg = grey(16), NoiseConfig()
    a = train_noise(clean, cfg, seed=0, epoch=1, step=7)
    assert torch.equal(a, train_noise(clean, cfg, seed=0, epoch=1, step=7))
    assert not torch.equal(a, train_noise(clean, cfg, seed=0, epoch=1, step=8))
    assert not torch.equal(a, train_noise(clean, cfg, seed=1, epoch=1, step=7))


def test_fixed_eval_noise_ignores_the_global_rng():
    clean, cfg = grey(16), NoiseConfig()
    torch.manual_seed(0)
    a = fixed_noisy(clean, cfg, "val")
    torch.manual_seed(99)
    assert torch.equal(a, fixed_noisy(clean, cfg, "val"))
    assert not torch.equal(a, fixed_noisy(clean, cfg, "test"))
