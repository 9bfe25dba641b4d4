"""The images `evaluate` scores (`data.EvalImages`, loaded by the dataset's kind): their
fixed-seed noisy versions, each process's share, and the hardest-images figure's view."""

from __future__ import annotations

import torch

from denoise_dist import data, noise

HARDEST_CROP = 128  # larger images are shown in the hardest-images figure as centre crops


def noisy_groups(images: data.EvalImages, name: str, params: dict, seed: int) -> list[torch.Tensor]:
    """Each group's fixed-seed noisy version, drawn under the group's own tag."""
    return [
        noise.fixed_noisy(group, name, params, tag, seed)
        for group, tag in zip(images.groups, images.noise_tags, strict=True)
    ]


def process_share(images: data.EvalImages, world: int, rank: int) -> list[tuple[slice, int, slice]]:
    """This process's images (disjoint, covering across processes), as (their indices in
    the whole set, a group, their rows in it)."""
    share = data.eval_shard(images.count, world, rank)
    parts = []
    for group, start in enumerate(images.starts):
        first = max(share.start, start)
        stop = min(share.stop, start + len(images.groups[group]))
        if first < stop:
            parts.append((slice(first, stop), group, slice(first - start, stop - start)))
    return parts


def image_at(images: data.EvalImages, groups: list[torch.Tensor], index: int) -> torch.Tensor:
    """Image `index` of the whole set, [1, H, W], from `groups` (the clean images' groups
    or their noisy versions)."""
    group, row = images.position(index)
    return groups[group][row]


def centre_crop(image: torch.Tensor) -> torch.Tensor:
    """What the hardest-images figure shows of an image: at most its central
    HARDEST_CROP x HARDEST_CROP pixels."""
    height, width = image.shape[-2:]
    top, left = max(0, (height - HARDEST_CROP) // 2), max(0, (width - HARDEST_CROP) // 2)
    return image[..., top : top + HARDEST_CROP, left : left + HARDEST_CROP]
