"""Which rows of a step's global batch each rank trains on (`Sharding`), the MNIST-style
training set (`TensorTrainSet`: a step's batch is a slice of the epoch's seeded
permutation), and each process's evaluation shard. Rank r computes only rows
[r*B/W, (r+1)*B/W) and gets exactly what a single process gets for them: that makes
resume and world-size changes exact."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from denoise_dist import rng
from denoise_dist.errors import DataError


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


class TrainSet(Protocol):
    """What training reads: a kind's training set (`TensorTrainSet`, a folder's crops)."""

    num_examples: int  # an epoch's examples

    def batch(self, step: int, rows: torch.Tensor, sharding: Sharding) -> torch.Tensor:
        """float [len(rows), 1, H, W]: rows `rows` of step `step`'s global batch."""
        ...


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
