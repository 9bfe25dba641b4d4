"""The noise table: every noise's statistics, and the guarantees training relies on."""

import math
from dataclasses import fields

import pytest
import torch

from denoise_dist import noise
from denoise_dist.config import NoiseConfig
from denoise_dist.noise import NOISES, Draw, add_noise, fixed_noisy, train_draw
from denoise_dist.rng import key


def grey(n=64, value=0.5, size=28):
    return torch.full((n, 1, size, size), value)


def draw(n: int, seed: int = 0) -> Draw:
    return Draw(key("test", seed), torch.arange(n))


def params(name: str, **values) -> dict:
    return noise.params_of(name, NoiseConfig(noise=name, **values))


def test_gaussian_statistics():
    clean = grey(200)
    residual = add_noise("gaussian", clean, draw(200, 1), {"sigma": 0.1}) - clean
    assert abs(residual.mean().item()) < 2e-3
    assert abs(residual.std().item() - 0.1) < 2e-3


@pytest.mark.parametrize("name", sorted(NOISES))
def test_every_noise_is_clamped_to_the_unit_range(name):
    noisy = add_noise(name, grey(8, 0.9), draw(8, 2), params(name, sigma=1.0))
    assert noisy.min() >= 0 and noisy.max() <= 1 and noisy.dtype == torch.float32


def test_blind_sigma_varies_per_image_within_range():
    noisy = add_noise(
        "gaussian_blind", grey(300), draw(300, 3), {"sigma_min": 0.1, "sigma_max": 0.3}
    )
    stds = (noisy - 0.5).flatten(1).std(1)
    assert stds.min() > 0.08 and stds.max() < 0.32 and stds.max() - stds.min() > 0.1


def test_salt_pepper_fraction():
    noisy = add_noise("salt_pepper", grey(100), draw(100, 4), {"salt_pepper": 0.2})
    assert abs((noisy != 0.5).float().mean().item() - 0.2) < 0.01
    assert abs((noisy == 0).float().mean().item() - 0.1) < 0.01


def test_poisson_gaussian_variance_grows_with_signal():
    p = {"photons": 20.0, "sigma": 0.01}
    dark = add_noise("poisson_gaussian", grey(200, 0.1), draw(200, 5), p) - 0.1
    bright = add_noise("poisson_gaussian", grey(200, 0.5), draw(200, 5), p) - 0.5
    # Shot noise std = sqrt(x / photons): 0.071 at 0.1, 0.158 at 0.5.
    assert abs(dark.std().item() - math.sqrt(0.1 / 20 + 1e-4)) < 0.01
    assert abs(bright.std().item() - math.sqrt(0.5 / 20 + 1e-4)) < 0.01


@pytest.mark.parametrize("rate", [0.3, 4.0, 20.0, 150.0])
def test_poisson_counts_follow_the_poisson_distribution(rate):
    n = 200_000
    u = noise.Draw(key("poisson", rate), torch.arange(1)).uniform(0, n)[0]
    counts = noise.poisson(torch.full((n,), rate), u, max_rate=rate)
    assert torch.equal(counts, counts.round()) and counts.min() >= 0
    reference = torch.poisson(torch.full((n,), rate), generator=torch.Generator().manual_seed(0))
    top = int(rate + 4 * math.sqrt(rate) + 2)
    ours = torch.bincount(counts.long().clamp(max=top), minlength=top + 1).double()
    theirs = torch.bincount(reference.long().clamp(max=top), minlength=top + 1).double()
    # Two-sample chi-square on the count histogram, cells with enough expected counts.
    cells = (ours + theirs) > 40
    chi2 = ((ours - theirs)[cells] ** 2 / (ours + theirs)[cells]).sum().item()
    assert chi2 < 3 * int(cells.sum()) + 20
    assert abs(counts.mean().item() - rate) < 0.02 * rate + 0.01
    assert abs(counts.var().item() - rate) < 0.05 * rate + 0.01


@pytest.mark.parametrize("name", sorted(NOISES))
def test_a_rank_draws_exactly_its_rows_of_the_global_batch(name):
    clean = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    p = params(name)
    whole = add_noise(name, clean, train_draw(3, 1, 17, torch.arange(64)), p)
    rows = torch.arange(32, 64)
    part = add_noise(name, clean[32:], train_draw(3, 1, 17, rows), p)
    torch.testing.assert_close(part, whole[32:], rtol=0, atol=1e-6)


def test_training_noise_is_a_function_of_seed_epoch_step():
    clean, rows, p = grey(16), torch.arange(16), {"sigma": 0.5}
    a = add_noise("gaussian", clean, train_draw(0, 1, 7, rows), p)
    assert torch.equal(a, add_noise("gaussian", clean, train_draw(0, 1, 7, rows), p))
    assert not torch.equal(a, add_noise("gaussian", clean, train_draw(0, 1, 8, rows), p))
    assert not torch.equal(a, add_noise("gaussian", clean, train_draw(1, 1, 7, rows), p))


def test_fixed_eval_noise_ignores_the_global_rng_and_unrelated_settings():
    clean = grey(16)
    torch.manual_seed(0)
    a = fixed_noisy(clean, "gaussian", {"sigma": 0.5}, "val", 1234)
    torch.manual_seed(99)
    assert torch.equal(a, fixed_noisy(clean, "gaussian", {"sigma": 0.5}, "val", 1234))
    assert not torch.equal(a, fixed_noisy(clean, "gaussian", {"sigma": 0.5}, "test", 1234))
    assert not torch.equal(a, fixed_noisy(clean, "gaussian", {"sigma": 0.5}, "val", 1))


# --- the table --------------------------------------------------------------------------


NOISE_FIELDS = {f.name for f in fields(NoiseConfig)} - {"noise", "eval_sigmas", "eval_seed"}


@pytest.mark.parametrize("name", sorted(NOISES))
def test_each_entry_reads_config_fields_and_sweeps_one_of_them(name):
    spec = NOISES[name]
    assert set(spec.params) <= NOISE_FIELDS
    evaluated = NOISES[spec.eval_as or name]
    assert evaluated.level in evaluated.params and evaluated.eval_as is None
    assert list(spec.levels) == sorted(spec.levels) and spec.levels
    caption = noise.describe(name, params(name))
    assert caption and all(f"{getattr(NoiseConfig(), p):g}" in caption for p in spec.params)


def test_every_noise_parameter_of_the_config_is_read_by_some_noise():
    assert NOISE_FIELDS == {p for spec in NOISES.values() for p in spec.params}
