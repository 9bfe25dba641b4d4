"""Training batches that are pure functions of (seed, epoch, step), sharded across ranks,
and the evaluation shard of each process.

Rank r computes only rows [r*B/W, (r+1)*B/W) of a step's global batch, and gets exactly
what a single process gets for those rows. That is what makes resume and world-size
changes exact. MNIST-style data: a step's global batch is a slice of the epoch's seeded
permutation (`TensorTrainSet`). Images of any size: random crops whose image and
position are a hash of (seed, step, row) (`CropTrainSet`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from denoise_dist import rng
from denoise_dist.data import memory
from denoise_dist.errors import DataError

DEVICE_MEMORY_SHARE = 0.5  # keep a folder's pixels on the GPU only below this share of free memory


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W] -> float [N, 1, H, W] in [0, 1]."""
    return images.unsqueeze(1).float().div_(255)


def eval_shard(num_examples: int, world_size: int, rank: int) -> slice:
    """Contiguous, disjoint, covering slices: every evaluation image counted exactly once."""
    per_rank, extra = divmod(num_examples, world_size)
    start = rank * per_rank + min(rank, extra)
    return slice(start, start + per_rank + (1 if rank < extra else 0))


@dataclass(frozen=True)
class Sharding:
    """Which rows of each step's global batch this rank trains on.

    Every optimizer step consumes one global batch of `global_batch` examples. Rank r
    takes the r-th contiguous slice of it, and micro-batch m (of `grad_accum`) the m-th
    slice of that. An epoch is `num_examples // global_batch` steps; for MNIST-style data
    the last `dropped_per_epoch` images of each permutation are skipped, a different set
    each epoch.
    """

    num_examples: int
    global_batch: int
    world_size: int = 1
    rank: int = 0
    grad_accum: int = 1

    def __post_init__(self):
        if self.global_batch % (self.world_size * self.grad_accum):
            raise DataError(
                f"batch_size {self.global_batch} must divide by processes x grad_accum "
                f"= {self.world_size} x {self.grad_accum}"
            )
        if self.steps_per_epoch == 0:
            raise DataError(
                f"batch_size {self.global_batch} exceeds the {self.num_examples} training "
                f"examples of an epoch"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch

    @property
    def dropped_per_epoch(self) -> int:
        return self.num_examples % self.global_batch

    @property
    def micro_batch(self) -> int:
        return self.global_batch // (self.world_size * self.grad_accum)

    def rank_slice(self, micro: int = 0) -> slice:
        """This rank's part of a global batch, for one micro-batch."""
        start = (self.rank * self.grad_accum + micro) * self.micro_batch
        return slice(start, start + self.micro_batch)

    def rows(self, micro: int, device) -> torch.Tensor:
        """The global batch rows of one micro-batch, as an index tensor."""
        part = self.rank_slice(micro)
        return torch.arange(part.start, part.stop, device=device)


def epoch_permutation(num_examples: int, seed: int, epoch: int, device="cpu") -> torch.Tensor:
    return torch.randperm(num_examples, generator=rng.generator("perm", seed, epoch)).to(device)


class TensorTrainSet:
    """MNIST-style: equal-size images [N, H, W]; each epoch is a seeded permutation."""

    def __init__(self, images: torch.Tensor, seed: int):
        self.images = images
        self.seed = seed
        self.num_examples = len(images)
        self._perm: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            perm = epoch_permutation(self.num_examples, self.seed, epoch, self.images.device)
            self._perm = (epoch, perm)
        return self._perm[1]

    def batch(self, step: int, rows: torch.Tensor, sharding: Sharding) -> torch.Tensor:
        """float [len(rows), 1, H, W]: rows `rows` of step `step`'s global batch."""
        epoch, step_in_epoch = divmod(step, sharding.steps_per_epoch)
        indices = self.permutation(epoch)[step_in_epoch * sharding.global_batch + rows]
        return to_float(self.images[indices])


class CropTrainSet:
    """Random square crops from images of any size, packed into one flat uint8 tensor.

    Every valid crop position of every image is equally likely (so larger images give
    more crops). An epoch is as many crops as the images hold non-overlapping patches.
    With `augment`, each crop is also flipped and rotated by one of the 8 symmetries of a
    square, drawn like its position: 8x the distinct patches at no cost, the usual
    augmentation for training denoisers on few images."""

    def __init__(
        self, pictures: list[torch.Tensor], patch: int, seed: int, device, augment: bool = False
    ):
        self.patch, self.seed, self.device = patch, seed, torch.device(device)
        heights = torch.tensor([p.shape[0] for p in pictures])
        widths = torch.tensor([p.shape[1] for p in pictures])
        self.nbytes = int((heights * widths).sum())
        # Keep the pixels on the device when they fit (GPU: in half its free memory);
        # else on the host, where each batch's crops are gathered and then moved.
        home = self.device
        if home.type != "cpu" and self.nbytes > DEVICE_MEMORY_SHARE * memory.bytes_available(home):
            home = torch.device("cpu")
        self.home = home
        self.pixels = torch.cat([p.flatten() for p in pictures]).to(home)
        self.offsets = (torch.cumsum(heights * widths, 0) - heights * widths).to(home)
        self.widths = widths.to(home)
        positions = (heights - patch + 1) * (widths - patch + 1)  # valid top-left corners
        self.positions_before = (torch.cumsum(positions, 0) - positions).to(home)
        self.position_ends = torch.cumsum(positions, 0).to(home)
        self.position_widths = (widths - patch + 1).to(home)
        self.total_positions = int(positions.sum())
        self.num_examples = max(1, int((heights // patch * (widths // patch)).sum()))
        within = torch.arange(patch, device=home)
        rows, cols = within.repeat_interleave(patch), within.repeat(patch)
        # Where each output pixel of a crop is read from, for each symmetry: [8 or 1, P*P].
        flip = patch - 1
        symmetries = [(rows, cols), (rows, flip - cols), (flip - rows, cols),
                      (flip - rows, flip - cols), (cols, rows), (cols, flip - rows),
                      (flip - cols, rows), (flip - cols, flip - rows)]  # fmt: skip
        kept = symmetries if augment else symmetries[:1]
        self.patch_rows = torch.stack([r for r, _ in kept])
        self.patch_cols = torch.stack([c for _, c in kept])

    def batch(self, step: int, rows: torch.Tensor, sharding: Sharding) -> torch.Tensor:
        rows = rows.to(self.home)
        key = rng.key("crop", self.seed, step, device=self.home)
        # 62 random bits per row: a crop position, uniform over all valid positions.
        high = rng.random_bits(rng.subkey(key, 0), rows) & 0x3FFFFFFF
        low = rng.random_bits(rng.subkey(key, 1), rows)
        position = ((high << 32) | low) % self.total_positions
        image = torch.searchsorted(self.position_ends, position, right=True)
        local = position - self.positions_before[image]
        top = local // self.position_widths[image]
        left = local % self.position_widths[image]
        width = self.widths[image]
        start = self.offsets[image] + top * width + left
        symmetry = (  # no draw without --augment: the one identity pattern for every row
            rng.random_bits(rng.subkey(key, 2), rows) % len(self.patch_rows)
            if len(self.patch_rows) > 1
            else torch.zeros_like(rows)
        )
        patch_rows, patch_cols = self.patch_rows[symmetry], self.patch_cols[symmetry]
        index = start[:, None] + patch_rows * width[:, None] + patch_cols
        crops = self.pixels[index].view(-1, self.patch, self.patch)
        return to_float(crops.to(self.device, non_blocking=True))
