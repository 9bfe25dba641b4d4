"""Denoising models by name. Plain torch: no accelerate, no wandb.

Every model maps a float batch [N, 1, H, W] in [0, 1] to its denoised version.
"""

from __future__ import annotations

from torch import nn

from denoise_dist.models.conv_ae import ConvAE
from denoise_dist.models.seed_ae import SeedAE
from denoise_dist.models.unet import ResUNet

REGISTRY: dict[str, type[nn.Module]] = {"seed_ae": SeedAE, "conv_ae": ConvAE, "unet": ResUNet}


def model_kwargs(name: str, width: int, dropout: float) -> dict:
    """The constructor arguments a model name takes from the config."""
    return {"dropout": dropout} if name == "seed_ae" else {"width": width}


def build_model(name: str, **kwargs) -> nn.Module:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name](**kwargs)
