"""Dropout whose mask is a function of (key, global row), not of the global RNG.

Given a `Draw` (the training step passes one per micro-batch), the mask of each image
depends only on the step's key and the image's row in the global batch, so a batch split
across processes drops exactly the units one process would, and a resumed run drops them
again. Without one it is plain `nn.Dropout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeyedDropout(nn.Module):
    def __init__(self, p: float, stream: int):
        super().__init__()
        self.p = p
        self.stream = stream  # one per dropout layer, so layers draw different masks

    def forward(self, x: torch.Tensor, draw=None) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if draw is None:
            return F.dropout(x, self.p, training=True)
        keep = draw.uniform(self.stream, x[0].numel()).view_as(x) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}, stream={self.stream}"
