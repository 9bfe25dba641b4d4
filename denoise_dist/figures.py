"""Matplotlib figures for the run folder, and the uint8 sample grid shared with W&B."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from denoise_dist.atomic import atomic_write

COLUMNS = ("noisy", "denoised", "clean")


def sample_grid(noisy: torch.Tensor, denoised: torch.Tensor, clean: torch.Tensor,
                gap: int = 2) -> np.ndarray:
    """uint8 [rows*H, 3*W] image: one row per sample, columns noisy | denoised | clean.

    uint8 because wandb renders float tensors in [0, 1] as black images."""
    rows = []
    for images in zip(noisy, denoised, clean):
        tiles = [t[0].float().clamp(0, 1) for t in images]
        spacer = torch.ones(tiles[0].shape[0], gap)
        rows.append(torch.cat([tiles[0], spacer, tiles[1], spacer, tiles[2]], dim=1))
    grid = torch.cat([torch.cat([r, torch.ones(gap, r.shape[1])]) for r in rows])[:-gap]
    return (grid.cpu().numpy() * 255).round().astype(np.uint8)


def _savefig(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120,
                                               bbox_inches="tight"))


def save_sample_figure(grid: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = grid.shape
    fig, ax = plt.subplots(figsize=(3 * 1.6, 1.6 * height / (width / 3)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([width * (i + 0.5) / 3 for i in range(3)], COLUMNS)
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
        ax_loss.plot(*zip(*train))
    ax_loss.set(xlabel="step", ylabel="train MSE", yscale="log", title="loss")
    if val:
        ax_psnr.plot(*zip(*val), marker="o")
    noisy = [r["val_psnr_noisy"] for r in records if "val_psnr_noisy" in r]
    if noisy:
        ax_psnr.axhline(noisy[0], color="gray", linestyle="--", label="noisy input")
        ax_psnr.legend()
    ax_psnr.set(xlabel="step", ylabel="PSNR (dB)", title="validation PSNR")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
