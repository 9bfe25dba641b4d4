"""Batched, on-device noise models. Every draw comes from an explicit generator.

Training noise for step `step` is drawn for the whole global batch from a generator keyed
by (seed, epoch, step); each rank keeps its own slice. Results therefore do not depend
on how many processes share the batch, and a resumed run draws exactly the same noise.
"""

from __future__ import annotations

import torch

from denoise_dist.config import NoiseConfig
from denoise_dist.rng import generator


def gaussian(clean: torch.Tensor, sigma: float | torch.Tensor, gen: torch.Generator):
    return clean + sigma * torch.randn(clean.shape, generator=gen, device=clean.device)


def per_image_sigma(n: int, low: float, high: float, gen: torch.Generator, device):
    u = torch.rand(n, generator=gen, device=device)
    return (low + (high - low) * u).view(n, 1, 1, 1)


def salt_pepper(clean: torch.Tensor, amount: float, gen: torch.Generator):
    u = torch.rand(clean.shape, generator=gen, device=clean.device)
    noisy = clean.clone()
    noisy[u < amount / 2] = 0.0
    noisy[(u >= amount / 2) & (u < amount)] = 1.0
    return noisy


def poisson_gaussian(clean: torch.Tensor, photons: float, sigma: float, gen: torch.Generator):
    """Sensor-like: shot noise with `photons` at full scale, plus Gaussian read noise."""
    shot = torch.poisson(clean * photons, generator=gen) / photons
    return gaussian(shot, sigma, gen)


def add_noise(clean: torch.Tensor, cfg: NoiseConfig, gen: torch.Generator) -> torch.Tensor:
    """Noisy version of a float batch [N, C, H, W] in [0, 1], clamped to [0, 1]."""
    if cfg.noise == "gaussian":
        noisy = gaussian(clean, cfg.sigma, gen)
    elif cfg.noise == "gaussian_blind":
        sigma = per_image_sigma(len(clean), cfg.sigma_min, cfg.sigma_max, gen, clean.device)
        noisy = gaussian(clean, sigma, gen)
    elif cfg.noise == "salt_pepper":
        noisy = salt_pepper(clean, cfg.salt_pepper, gen)
    elif cfg.noise == "poisson_gaussian":
        noisy = poisson_gaussian(clean, cfg.photons, cfg.sigma, gen)
    else:
        raise ValueError(f"unknown noise {cfg.noise!r}")
    return noisy.clamp_(0.0, 1.0)


def train_noise(clean_global: torch.Tensor, cfg: NoiseConfig, seed: int, epoch: int, step: int):
    """Noise for one global batch; identical on every rank and on every resume."""
    return add_noise(clean_global, cfg, generator("train-noise", seed, epoch, step,
                                                  device=clean_global.device))


def fixed_noisy(clean: torch.Tensor, cfg: NoiseConfig, tag: str) -> torch.Tensor:
    """The fixed-seed noisy evaluation set: drawn on the CPU, so every run and every
    device sees identical noise for the same (eval_seed, noise settings, tag)."""
    gen = generator("eval-noise", cfg.eval_seed, tag, cfg.noise, cfg.sigma, cfg.sigma_min,
                    cfg.sigma_max, cfg.salt_pepper, cfg.photons)
    return add_noise(clean.cpu(), cfg, gen).to(clean.device)
