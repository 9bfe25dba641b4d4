"""A residual U-Net that predicts the noise and subtracts it (DnCNN-style residual
learning). `depth` levels, each halving the resolution and doubling the channels. No
normalisation layers, so results do not depend on how a batch is split across
processes. Fully convolutional: any image size (padded to a multiple of 2**depth)."""

from __future__ import annotations

import torch
from torch import nn

from denoise_dist.models.padding import crop, pad_to_multiple


def conv3(channels_in: int, channels_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv3(channels, channels), nn.ReLU(), conv3(channels, channels))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(x + self.body(x))


class ResUNet(nn.Module):
    def __init__(self, width: int = 32, depth: int = 2):
        super().__init__()
        widths = [width * 2**level for level in range(depth + 1)]
        self.stride = 2**depth
        self.stem = nn.Sequential(conv3(1, width), nn.ReLU(), ResBlock(width))
        self.downs = nn.ModuleList(
            nn.Sequential(conv3(w, 2 * w, stride=2), nn.ReLU(), ResBlock(2 * w))
            for w in widths[:-1]
        )
        self.ups = nn.ModuleList(nn.ConvTranspose2d(2 * w, w, 2, stride=2) for w in widths[:-1])
        self.merges = nn.ModuleList(
            nn.Sequential(conv3(2 * w, w), nn.ReLU(), ResBlock(w)) for w in widths[:-1]
        )
        self.head = conv3(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, size = pad_to_multiple(x, self.stride)
        skips = [self.stem(padded)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        features = skips.pop()
        for up, merge in zip(reversed(self.ups), reversed(self.merges), strict=True):
            features = merge(torch.cat([up(features), skips.pop()], 1))
        denoised = crop(padded - self.head(features), size)
        # Clamp only at inference: clamping in training would zero the gradient at 0 and 1.
        return denoised if self.training else denoised.clamp(0.0, 1.0)
