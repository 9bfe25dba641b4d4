"""The counter-based generator: its numbers look random, and any slice of a draw is the
same as that part of the whole draw, which is what sharding and resume rely on."""

import math

import pytest
import torch

from denoise_dist import rng

N = 1_000_000


def test_uniform_is_uniform_on_the_open_interval():
    u = rng.uniform(rng.key("test", 1), torch.arange(N))
    assert u.min() > 0 and u.max() < 1
    counts = torch.histc(u, bins=100, min=0, max=1)
    chi2 = ((counts - N / 100) ** 2 / (N / 100)).sum().item()
    assert chi2 < 160  # 99 degrees of freedom: p < 1e-4 above ~150


def test_normal_has_the_moments_of_a_standard_normal():
    z = rng.normal(rng.key("test", 2), torch.arange(N)).double()
    assert abs(z.mean().item()) < 0.005
    assert abs(z.std().item() - 1) < 0.005
    assert abs((z**3).mean().item()) < 0.02  # skewness
    assert abs((z**4).mean().item() - 3) < 0.05  # kurtosis
    assert abs((z.abs() < 1).double().mean().item() - math.erf(1 / math.sqrt(2))) < 0.002


@pytest.mark.parametrize("lag", [1, 2, 28, 784])
def test_neighbouring_elements_are_uncorrelated(lag):
    u = rng.uniform(rng.key("test", 3), torch.arange(N))
    corr = torch.corrcoef(torch.stack([u[:-lag], u[lag:]]))[0, 1].item()
    assert abs(corr) < 0.005


def test_keys_and_subkeys_give_unrelated_streams():
    index = torch.arange(N)
    a = rng.uniform(rng.key("train-noise", 0, 0, 7), index)
    streams = [
        rng.uniform(rng.key("train-noise", 0, 0, 8), index),  # the next step
        rng.uniform(rng.key("train-noise", 1, 0, 7), index),  # another seed
        rng.uniform(rng.subkey(rng.key("train-noise", 0, 0, 7), 1), index),
    ]
    for b in streams:
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.005


def test_every_bit_is_balanced():
    bits = rng.random_bits(rng.key("test", 4), torch.arange(N))
    assert bits.min() >= 0 and bits.max() < 2**32
    for shift in range(32):
        share = ((bits >> shift) & 1).double().mean().item()
        assert abs(share - 0.5) < 0.003, shift


def test_a_slice_of_the_indices_is_that_slice_of_the_draw():
    key = rng.key("test", 5)
    whole = rng.normal(key, rng.element_index(torch.arange(64), 784))
    part = rng.normal(key, rng.element_index(torch.arange(16, 48), 784))
    assert torch.equal(part, whole[16:48])


def test_draws_are_pure_functions_of_key_and_index():
    key = rng.key("test", 6)
    torch.manual_seed(0)
    a = rng.normal(key, torch.arange(1000))
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(a, rng.normal(key, torch.arange(1000)))
    assert torch.equal(rng.key("test", 6), key) and not torch.equal(rng.key("test", 7), key)
