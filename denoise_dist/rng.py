"""Counter-based random numbers: every draw is a pure function of (key, element index).

A key is two 32-bit words hashed from any tuple, such as ("train-noise", seed, epoch,
step). Element i of a draw is a hash of (key, i), computed with integer tensor ops. So:

- a rank draws only its slice of a global batch, yet gets exactly the numbers a single
  process would (the global indices say which elements it holds);
- a resumed run draws the same numbers again, with no generator state to save;
- the draw is plain tensor arithmetic on the batch's device, so it works unchanged inside
  `torch.compile` and CUDA graphs (keys are tensor inputs, not Python state).
"""

from __future__ import annotations

import hashlib

import torch

MASK32 = 0xFFFFFFFF
# Odd multipliers below 2**31, so that a 32-bit value times one fits in int64.
MULTIPLIERS = ((0x7FEB352D, 0x2C1B3C6D), (0x297A2D39, 0x5BD1E995))


def seed_from(*keys: object) -> int:
    """A 63-bit seed from any tuple of keys, stable across processes and Python runs."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(*keys: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator seeded from keys (for once-per-epoch draws such as permutations)."""
    return torch.Generator(device=device).manual_seed(seed_from(*keys))


def key(*keys: object, device: torch.device | str = "cpu") -> torch.Tensor:
    """The two 32-bit words of a draw's key, as an int64 tensor [2] on `device`."""
    seed = seed_from(*keys)
    return torch.tensor([seed & MASK32, (seed >> 32) & MASK32], dtype=torch.int64, device=device)


def subkey(parent: torch.Tensor, stream: int) -> torch.Tensor:
    """An independent key for sub-draw `stream` of one key (e.g. sigma, then pixels)."""
    return _mix(parent ^ (stream * 0x9E3779B9 & MASK32), MULTIPLIERS[1])


def _mix(x: torch.Tensor, multipliers: tuple[int, int]) -> torch.Tensor:
    """A 32-bit avalanche mix (xorshift-multiply, after Wellons' lowbias32) in int64."""
    first, second = multipliers
    x = x ^ (x >> 16)
    x = (x * first) & MASK32
    x = x ^ (x >> 15)
    x = (x * second) & MASK32
    return x ^ (x >> 16)


def random_bits(key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """32 random bits (int64 in [0, 2**32)) for each element index, under `key`."""
    h = _mix((index & MASK32) ^ key[0], MULTIPLIERS[0])
    return _mix(h ^ key[1] ^ (index >> 32), MULTIPLIERS[1])


def uniform(key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Uniform float32 in the open interval (0, 1): 2**23 evenly spaced values."""
    return ((random_bits(key, index) >> 9).float() + 0.5) * (1.0 / 2**23)


def normal(key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Standard normal float32 by inverting the CDF (tails reach about 5.3 sigma)."""
    # (2k + 1 - 2**24) / 2**24 for k in [0, 2**24) is exact in float32, symmetric in (-1, 1).
    k = (random_bits(key, index) >> 8).float()
    return torch.erfinv((2 * k + (1 - 2**24)) * (1.0 / 2**24)) * 2**0.5


def element_index(rows: torch.Tensor, per_row: int) -> torch.Tensor:
    """Global element indices [len(rows), per_row] for rows of a global batch."""
    offsets = torch.arange(per_row, device=rows.device, dtype=torch.int64)
    return rows.to(torch.int64)[:, None] * per_row + offsets
