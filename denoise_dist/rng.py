"""Seeded generators keyed by tuples, so every random draw is a pure function of its key."""

from __future__ import annotations

import hashlib

import torch


def seed_from(*keys: object) -> int:
    """A 63-bit seed from any tuple of keys, stable across processes and Python runs."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(*keys: object, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed_from(*keys))
