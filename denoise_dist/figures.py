"""Matplotlib figures for the run folder, and the uint8 sample grid shared with trackers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from denoise_dist.atomic import atomic_write

COLUMNS = ("noisy", "denoised", "clean")


def sample_grid(
    noisy: Sequence[torch.Tensor] | torch.Tensor,
    denoised: Sequence[torch.Tensor] | torch.Tensor,
    clean: Sequence[torch.Tensor] | torch.Tensor,
    gap: int = 2,
) -> np.ndarray:
    """uint8 image: one row per sample, columns noisy | denoised | clean, white gaps.

    Takes batches [N, 1, H, W] or lists of images of any sizes (on any device: the grid
    is built on the CPU). uint8 because W&B renders float images in [0, 1] as black."""
    return column_grid([noisy, denoised, clean], gap)


def column_grid(
    columns: Sequence[Sequence[torch.Tensor] | torch.Tensor], gap: int = 2
) -> np.ndarray:
    """uint8 image: one row per sample, one column per entry of `columns` (each a batch
    or a list of images of any sizes), white gaps."""
    rows = []
    for images in zip(*columns, strict=True):
        tiles = [t.detach().float().cpu().reshape(t.shape[-2:]).clamp(0, 1).numpy() for t in images]
        height = max(t.shape[0] for t in tiles)
        padded = [np.pad(t, ((0, height - t.shape[0]), (0, 0)), constant_values=1.0) for t in tiles]
        spacer = np.ones((height, gap), dtype=np.float32)
        rows.append(np.concatenate([p for t in padded for p in (t, spacer)][:-1], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=1.0) for r in rows]
    spaced = [part for r in rows for part in (r, np.ones((gap, width), dtype=np.float32))][:-1]
    return (np.concatenate(spaced) * 255).round().astype(np.uint8)


def _savefig(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def save_sample_figure(
    grid: np.ndarray, path: Path, title: str, labels: Sequence[str] = COLUMNS
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = grid.shape
    n = len(labels)
    fig, ax = plt.subplots(figsize=(n * 1.6, 1.6 * height / (width / n)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([width * (i + 0.5) / n for i in range(n)], labels, fontsize=8)
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    _savefig(fig, path)
    plt.close(fig)


def save_curves(records: list[dict], path: Path) -> None:
    """Train loss and validation PSNR against step, from metrics.jsonl records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_psnr"]) for r in records if "val_psnr" in r]
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(9, 3.2))
    if train:
        ax_loss.plot(*zip(*train, strict=True))
    ax_loss.set(xlabel="step", ylabel="train MSE", yscale="log", title="loss")
    if val:
        ax_psnr.plot(*zip(*val, strict=True), marker="o")
    noisy = [r["val_psnr_noisy"] for r in records if "val_psnr_noisy" in r]
    if noisy:
        ax_psnr.axhline(noisy[0], color="gray", linestyle="--", label="noisy input")
        ax_psnr.legend()
    ax_psnr.set(xlabel="step", ylabel="PSNR (dB)", title="validation PSNR")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
