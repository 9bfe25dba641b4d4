"""Running a trained model over images: in batches, and in overlapping tiles for images
too large for one pass. Plain torch.

Tiling is exact, not blended: each tile is run with a margin at least as wide as the
model's receptive field around the part of it that is kept, and tiles start on the
model's downsampling grid, so every kept pixel sees exactly the inputs it sees in a
whole-image pass. Tiled and whole-image results agree to float rounding; there are no
seams to hide.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn


@torch.no_grad()
def denoise_batched(
    model: nn.Module, noisy: torch.Tensor, batch_size: int = 500, autocast=nullcontext
) -> torch.Tensor:
    """The model's output for a batch [N, C, H, W], `batch_size` images at a time."""
    was_training = model.training
    model.eval()
    try:
        outs = []
        for start in range(0, len(noisy), batch_size):
            with autocast():
                outs.append(model(noisy[start : start + batch_size]).float())
        return torch.cat(outs) if outs else noisy[:0].float()
    finally:
        model.train(was_training)


def downsampling(model: nn.Module) -> int:
    """The factor a model pads its input to (1 for models without downsampling)."""
    return getattr(model, "stride", 1)


def receptive_radius(model: nn.Module, device=None) -> int:
    """How far (in pixels) an output pixel can see, measured: the extent of the gradient
    of one output pixel with respect to the input, for a random input."""
    align = downsampling(model)
    size = 16 * align + 1
    was_training = model.training
    model.train()  # no output clamp, whose zero gradient would hide the field
    try:
        with torch.enable_grad():  # callers may run under no_grad
            while True:
                x = torch.rand(1, 1, size, size, device=device, requires_grad=True)
                centre = size // 2
                model(x)[0, 0, centre, centre].backward()
                assert x.grad is not None
                rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
                radius = int(max((rows - centre).abs().max(), (cols - centre).abs().max()))
                if radius < centre - align:  # the field fits inside the probe
                    return radius
                size = 2 * size - 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def tile_starts(length: int, core: int, align: int) -> list[int]:
    """Starts of the kept parts of tiles covering [0, length), each a multiple of `align`."""
    core = max(align, core // align * align)
    return list(range(0, length, core))


@torch.no_grad()
def denoise_tiled(
    model: nn.Module,
    image: torch.Tensor,
    tile: int,
    margin: int,
    autocast=nullcontext,
) -> torch.Tensor:
    """The model's output for one image [1, C, H, W], computed in tiles of at most
    about `tile` + 2 x `margin` pixels a side."""
    height, width = image.shape[-2:]
    if height <= tile and width <= tile:
        return denoise_batched(model, image, autocast=autocast)
    align = downsampling(model)
    margin = math.ceil(margin / align) * align  # keeps every tile on the downsampling grid
    core = max(align, tile // align * align)
    out = torch.empty(image.shape, dtype=torch.float32, device=image.device)
    for top in tile_starts(height, core, align):
        for left in tile_starts(width, core, align):
            bottom, right = min(top + core, height), min(left + core, width)
            y0, x0 = max(0, top - margin), max(0, left - margin)
            y1, x1 = min(height, bottom + margin), min(width, right + margin)
            result = denoise_batched(model, image[..., y0:y1, x0:x1], autocast=autocast)
            out[..., top:bottom, left:right] = result[
                ..., top - y0 : bottom - y0, left - x0 : right - x0
            ]
    return out
