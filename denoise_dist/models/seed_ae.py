"""The original report's autoencoder: conv features, a linear code, dropout. 28x28 only."""

from __future__ import annotations

import torch
from torch import nn


class SeedAE(nn.Module):
    fully_convolutional = False
    image_size = 28

    def __init__(self, code_dim: int = 128, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 32 x 14 x 14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 64 x 7 x 7
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, code_dim), nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, 64 * 7 * 7), nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 2, stride=2), nn.ReLU(),           # 32 x 14 x 14
            nn.ConvTranspose2d(32, 1, 2, stride=2), nn.Sigmoid(),         # 1 x 28 x 28
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (28, 28):
            raise ValueError(f"seed_ae takes 28x28 images, got {tuple(x.shape[-2:])}")
        return self.decoder(self.encoder(x))
