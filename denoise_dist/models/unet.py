"""A small residual U-Net that predicts the noise and subtracts it (DnCNN-style residual
learning). No normalisation layers, so results do not depend on how a batch is split
across processes. Fully convolutional: any image size."""

from __future__ import annotations

import torch
from torch import nn

from denoise_dist.models.padding import crop, pad_to_multiple


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(x + self.body(x))


class ResUNet(nn.Module):
    fully_convolutional = True

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), ResBlock(w))
        self.down1 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
                                   ResBlock(2 * w))
        self.down2 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
                                   ResBlock(4 * w))
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.merge2 = nn.Sequential(nn.Conv2d(4 * w, 2 * w, 3, padding=1), nn.ReLU(),
                                    ResBlock(2 * w))
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.merge1 = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU(), ResBlock(w))
        self.head = nn.Conv2d(w, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, size = pad_to_multiple(x, 4)
        s1 = self.stem(padded)
        s2 = self.down1(s1)
        bottom = self.down2(s2)
        u2 = self.merge2(torch.cat([self.up2(bottom), s2], 1))
        u1 = self.merge1(torch.cat([self.up1(u2), s1], 1))
        denoised = crop(padded - self.head(u1), size)
        # Clamp only at inference: clamping in training would zero the gradient at 0 and 1.
        return denoised if self.training else denoised.clamp(0.0, 1.0)
