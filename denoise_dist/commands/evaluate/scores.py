"""Per-image PSNR and SSIM of every method at every level (`Scores`), scored in shards
and summed across processes, so every image counts exactly once."""

from __future__ import annotations

import torch

from denoise_dist.metrics import PerImageScores

NUM_HARDEST = 8


class Scores(PerImageScores):
    """Per-image PSNR and SSIM of every method at every level, which images each method
    scored, and each method's seconds; summed across processes at the end."""

    def __init__(self, levels: int, methods: list[str], count: int):
        super().__init__([levels, len(methods)], count)
        self.methods = methods
        self.seconds = torch.zeros(len(methods), dtype=torch.float64)

    def add_method(self, level: int, method: str, indices, pred, clean) -> None:
        self.add((level, self.methods.index(method)), indices, pred, clean)

    def add_seconds(self, method: str, seconds: float) -> None:
        self.seconds[self.methods.index(method)] += seconds

    def of(self, level: int, method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(PSNR, SSIM, scored) of `method`'s every image at `level`: two float tensors
        and a bool one."""
        at = (level, self.methods.index(method))
        return self.values[at][:, 0], self.values[at][:, 1], self.scored[at] > 0

    def reduce_all(self, device) -> None:
        def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
            torch.distributed.all_reduce(t)
            return t

        self.reduce(all_reduce_sum, device)
        self.seconds = all_reduce_sum(self.seconds.to(device)).cpu()


def hardest_images(scores: Scores, level: int, world: int, device) -> list[int]:
    """The images the model does worst on at `level` (by PSNR, ties to the lower index),
    once every process has scored its share of them."""
    # A copy: all_reduce works in place, and a strided view may not be reduced at all.
    model_psnr = scores.of(level, "model")[0].clone().to(device)
    if world > 1:
        torch.distributed.all_reduce(model_psnr)
    return torch.argsort(model_psnr.cpu(), stable=True)[:NUM_HARDEST].tolist()
