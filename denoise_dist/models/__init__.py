"""Denoising models: one table, `MODELS`. Plain torch: no accelerate, no wandb, no config.

Every model maps a float batch [N, 1, H, W] in [0, 1] to its denoised version. Each entry
names the config fields its constructor takes, so the config's choices, the saved model
metadata and `load_model` all follow from this table: a new model is one file in this
folder and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from denoise_dist.models.conv_ae import ConvAE
from denoise_dist.models.dncnn import DnCNN
from denoise_dist.models.seed_ae import SeedAE
from denoise_dist.models.unet import ResUNet


@dataclass(frozen=True)
class ModelSpec:
    cls: type[nn.Module]
    fields: tuple[str, ...]  # the ModelConfig fields passed to the constructor
    summary: str
    image_size: int | None = None  # the one square size it takes; None: any size
    takes_draw: bool = False  # forward(x, draw): random layers keyed to the global batch
    # ModelConfig values this model starts from, under any recipe, YAML or flag.
    defaults: dict = field(default_factory=dict)

    @property
    def fully_convolutional(self) -> bool:
        return self.image_size is None


MODELS: dict[str, ModelSpec] = {
    "unet": ModelSpec(
        ResUNet, ("width", "depth"), "residual U-Net that predicts the noise (default)"
    ),
    "conv_ae": ModelSpec(ConvAE, ("width",), "fully convolutional autoencoder"),
    "dncnn": ModelSpec(
        DnCNN,
        ("width", "layers"),
        "DnCNN (Zhang et al. 2017): 17 conv layers of 64 channels, residual, no batch norm",
        defaults={"width": 64},
    ),
    "seed_ae": ModelSpec(
        SeedAE,
        ("dropout",),
        "the original report's autoencoder (28x28 only)",
        image_size=SeedAE.image_size,
        takes_draw=True,
    ),
}


def model_kwargs(name: str, source: object) -> dict:
    """The constructor arguments of model `name`, read from a config section (any object)."""
    return {field: getattr(source, field) for field in MODELS[name].fields}


def build_model(name: str, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name].cls(**kwargs)


__all__ = ["MODELS", "ModelSpec", "build_model", "model_kwargs"]
