"""A fully convolutional autoencoder: strided convs down, transposed convs up. Any size.

The output layer is linear, clamped to [0, 1] only at inference: with a sigmoid output this
network collapses to an all-black image on MNIST (the sigmoid saturates and the strokes'
gradient vanishes), which we saw at 9.8 dB, below the noisy input."""

from __future__ import annotations

import torch
from torch import nn

from denoise_dist.models.padding import crop, pad_to_multiple


class ConvAE(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.stride = 4  # two stride-2 levels: inputs are padded to a multiple of 4
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # H/2
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # H/4
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * w, 2 * w, 2, stride=2),
            nn.ReLU(),  # H/2
            nn.ConvTranspose2d(2 * w, w, 2, stride=2),
            nn.ReLU(),  # H
            nn.Conv2d(w, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, size = pad_to_multiple(x, self.stride)
        out = crop(self.decoder(self.encoder(padded)), size)
        return out if self.training else out.clamp(0.0, 1.0)
