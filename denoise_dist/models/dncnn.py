"""DnCNN (Zhang et al., "Beyond a Gaussian Denoiser", IEEE TIP 2017): `layers` 3x3
convolutions of `width` channels with ReLU, predicting the noise, which is subtracted.

Written here (30 lines) rather than taken from deepinv: deepinv's `DnCNN` is the same
network but pulls torchmetrics, einops, h5py, requests and natsort into the core. Like
deepinv's, it has no batch normalisation (the paper has it between the convolutions):
batch statistics would make a batch split across DDP processes train differently from
the whole batch, and SyncBatchNorm does not run on CPU (gloo). The paper's defaults,
17 layers of 64 channels, are the model's defaults (`ModelSpec.defaults`)."""

from __future__ import annotations

import torch
from torch import nn


class DnCNN(nn.Module):
    def __init__(self, width: int = 64, layers: int = 17):
        super().__init__()
        convs = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
        for _ in range(layers - 2):
            convs += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        convs.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*convs)
        # He initialisation keeps the signal's scale through the deep ReLU stack that the
        # paper's batch norm would otherwise keep.
        for conv in self.body[:-1]:
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)  # type: ignore[arg-type]  # bias=True above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        denoised = x - self.body(x)
        # Clamp only at inference: clamping in training would zero the gradient at 0 and 1.
        return denoised if self.training else denoised.clamp(0.0, 1.0)
