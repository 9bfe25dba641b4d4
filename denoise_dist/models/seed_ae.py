"""The original report's autoencoder: conv features, a linear code, dropout. 28x28 only."""

from __future__ import annotations

import torch
from torch import nn

from denoise_dist.models.dropout import KeyedDropout


class SeedAE(nn.Module):
    image_size = 28

    def __init__(self, code_dim: int = 128, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 32 x 14 x 14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 64 x 7 x 7
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, hidden), nn.ReLU(),
        )  # fmt: skip
        self.drop_in = KeyedDropout(dropout, stream=1)
        self.code = nn.Sequential(
            nn.Linear(hidden, code_dim), nn.ReLU(), nn.Linear(code_dim, hidden), nn.ReLU()
        )
        self.drop_out = KeyedDropout(dropout, stream=2)
        self.decoder = nn.Sequential(
            nn.Linear(hidden, 64 * 7 * 7), nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 2, stride=2), nn.ReLU(),           # 32 x 14 x 14
            nn.ConvTranspose2d(32, 1, 2, stride=2), nn.Sigmoid(),         # 1 x 28 x 28
        )  # fmt: skip

    def forward(self, x: torch.Tensor, draw=None) -> torch.Tensor:
        """`draw` (a denoise_dist.noise.Draw) keys the dropout masks to the global batch
        rows; without one, dropout is plain random dropout."""
        if x.shape[-2:] != (28, 28):
            raise ValueError(f"seed_ae takes 28x28 images, got {tuple(x.shape[-2:])}")
        code = self.code(self.drop_in(self.features(x), draw))
        return self.decoder(self.drop_out(code, draw))
