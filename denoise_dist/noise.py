"""Noise models: one table, `NOISES`. Plain torch; knows nothing of the config.

Each entry says how to draw the noise, which config fields it reads, how it describes
itself in captions, and which of its parameters `evaluate` sweeps, at which levels. The
config's choices, the evaluation grid, captions and the keys of the fixed evaluation
noise all come from this table, so a new noise is one entry here (plus a config field if
it needs a new parameter).

Every draw comes from a `Draw`: a counter-based key and the global row of each image.
Training keys are (seed, epoch, step), so a rank that holds rows 64..127 of a global
batch draws exactly the noise a single process draws for those rows, and a resumed run
draws it again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from denoise_dist import rng

SIGMAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
AMOUNTS = (0.1, 0.2, 0.3, 0.4, 0.5)
Params = Mapping[str, float]
TRAIN_NOISE_KEY = "train-noise"  # the first word of every training draw's key


@dataclass(frozen=True)
class Draw:
    """The randomness of one batch: a key, and the global row index of each image."""

    key: torch.Tensor
    rows: torch.Tensor

    def uniform(self, stream: int, per_row: int) -> torch.Tensor:
        """[rows, per_row] uniforms in (0, 1); `stream` separates the draws of one batch."""
        return rng.uniform(rng.subkey(self.key, stream), rng.element_index(self.rows, per_row))

    def normal(self, stream: int, per_row: int) -> torch.Tensor:
        return rng.normal(rng.subkey(self.key, stream), rng.element_index(self.rows, per_row))


def _per_row(clean: torch.Tensor) -> int:
    return clean[0].numel()


def gaussian(clean: torch.Tensor, draw: Draw, p: Params) -> torch.Tensor:
    return clean + p["sigma"] * draw.normal(0, _per_row(clean)).view_as(clean)


def gaussian_blind(clean: torch.Tensor, draw: Draw, p: Params) -> torch.Tensor:
    """Gaussian noise with a sigma drawn per image, uniformly in [sigma_min, sigma_max]."""
    low, high = p["sigma_min"], p["sigma_max"]
    sigma = (low + (high - low) * draw.uniform(0, 1)).view(-1, *[1] * (clean.dim() - 1))
    return clean + sigma * draw.normal(1, _per_row(clean)).view_as(clean)


def salt_pepper(clean: torch.Tensor, draw: Draw, p: Params) -> torch.Tensor:
    """A fraction `salt_pepper` of pixels set to 0 or 1, half each."""
    u = draw.uniform(0, _per_row(clean)).view_as(clean)
    amount = p["salt_pepper"]
    flipped = torch.where(u < amount / 2, 0.0, 1.0).to(clean.dtype)
    return torch.where(u < amount, flipped, clean)


def poisson_gaussian(clean: torch.Tensor, draw: Draw, p: Params) -> torch.Tensor:
    """Sensor-like: shot noise with `photons` at full brightness, plus Gaussian read noise."""
    photons = p["photons"]
    u = draw.uniform(0, _per_row(clean)).view_as(clean)
    counts = poisson(clean.float() * photons, u, max_rate=photons)
    return counts / photons + p["sigma"] * draw.normal(1, _per_row(clean)).view_as(clean)


def poisson(rate: torch.Tensor, u: torch.Tensor, max_rate: float) -> torch.Tensor:
    """Poisson(rate) counts from uniforms `u`, by inverting the CDF P(X <= k) = Q(k+1, rate)
    with a bisection over k: exact up to float rounding, and a fixed amount of tensor work
    (no data-dependent loop), so it compiles and graphs like the other noises."""
    top = math.ceil(max_rate + 10 * math.sqrt(max_rate) + 10)  # P(X > top) < 1e-20
    low = torch.zeros_like(rate)
    high = torch.full_like(rate, float(top))
    for _ in range(math.ceil(math.log2(top + 1))):
        mid = torch.floor((low + high) / 2)
        enough = torch.special.gammaincc(mid + 1, rate) >= u
        high = torch.where(enough, mid, high)
        low = torch.where(enough, low, mid + 1)
    return low


@dataclass(frozen=True)
class Noise:
    """One noise model of the table."""

    apply: Callable[[torch.Tensor, Draw, Params], torch.Tensor]  # unclamped noisy batch
    params: tuple[str, ...]  # the NoiseConfig fields it reads
    describe: Callable[[Params], str]  # a few words for captions
    level: str  # the parameter `evaluate` sweeps ...
    levels: tuple[float, ...]  # ... over these values by default
    eval_as: str | None = None  # evaluate as this noise at each level (a blind noise)


NOISES: dict[str, Noise] = {
    "gaussian": Noise(
        gaussian, ("sigma",), lambda p: f"gaussian sigma={p['sigma']:g}", "sigma", SIGMAS
    ),
    "gaussian_blind": Noise(
        gaussian_blind,
        ("sigma_min", "sigma_max"),
        lambda p: f"gaussian sigma={p['sigma_min']:g}..{p['sigma_max']:g} (blind)",
        "sigma",
        SIGMAS,
        eval_as="gaussian",
    ),
    "salt_pepper": Noise(
        salt_pepper,
        ("salt_pepper",),
        lambda p: f"salt & pepper {p['salt_pepper']:g}",
        "salt_pepper",
        AMOUNTS,
    ),
    "poisson_gaussian": Noise(
        poisson_gaussian,
        ("photons", "sigma"),
        lambda p: f"poisson {p['photons']:g} photons + gaussian sigma={p['sigma']:g}",
        "sigma",
        SIGMAS,
    ),
}


def params_of(name: str, source: object) -> dict[str, float]:
    """The parameters noise `name` reads, taken from a config section (or any object)."""
    return {field: getattr(source, field) for field in NOISES[name].params}


def describe(name: str, params: Params) -> str:
    return NOISES[name].describe(params)


def add_noise(name: str, clean: torch.Tensor, draw: Draw, params: Params) -> torch.Tensor:
    """Noisy version of a float batch [N, C, H, W] in [0, 1], clamped to [0, 1]."""
    return NOISES[name].apply(clean, draw, params).clamp(0.0, 1.0)


def train_draw(seed: int, epoch: int, step: int, rows: torch.Tensor) -> Draw:
    """The randomness of training step `step`: the same on every rank and every resume."""
    return Draw(rng.key(TRAIN_NOISE_KEY, seed, epoch, step, device=rows.device), rows)


def fixed_noisy(clean: torch.Tensor, name: str, params: Params, tag: str, seed: int):
    """A fixed-seed noisy evaluation set: the same images for every run, every device and
    every process count. Drawn on the CPU (elementwise float functions may round
    differently on other devices), then moved to `clean`'s device."""
    key = rng.key("eval-noise", seed, tag, name, sorted(params.items()))
    rows = torch.arange(len(clean))
    return add_noise(name, clean.cpu(), Draw(key, rows), params).to(clean.device)
