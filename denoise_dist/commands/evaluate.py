"""`denoise-dist evaluate RUN_OR_MODEL`: PSNR/SSIM over a grid of noise levels, for the
model and for classical denoisers, on the same fixed-seed noisy images.

What is scored: an MNIST-style model's test split; a folder-trained model's held-out
files, whole. The Gaussian blur's width is tuned on images that are never scored (the
validation split, or crops of the training files). The levels and their default grid
come from the noise table (`denoise_dist.noise.NOISES`).

Under `accelerate launch` each process scores a disjoint shard of the images and the
sums are reduced, so any number of processes reports the same numbers: the noisy images
do not depend on the sharding, and every process tunes the blur on the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from denoise_dist import classical, data, figures, noise
from denoise_dist.atomic import atomic_write, atomic_write_text
from denoise_dist.config import Config, from_dict
from denoise_dist.errors import ConfigError, DataError
from denoise_dist.export import load_model, read_meta, resolve_model_path
from denoise_dist.inference import denoise_batched
from denoise_dist.metrics import means, psnr, quality_sums
from denoise_dist.runtime import process_state

METHODS = ("model", "identity", "gaussian_blur", "median3x3")
NUM_HARDEST = 8
HARDEST_CROP = 128  # a folder's hardest images are shown as centre crops of this size
MAX_TUNING_CROPS = 2000
EVAL_FILE, PLOT_FILE, HARDEST_FILE = "eval.json", "psnr_vs_sigma.png", "hardest.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="RUN_OR_MODEL",
        help="A run folder (its best_model.safetensors) or a .safetensors file.",
    )
    parser.add_argument(
        "--noise",
        choices=tuple(noise.NOISES),
        help="Noise to evaluate on. Default: the one the model was trained on (a blind "
        "noise is evaluated as its fixed-level form at each level).",
    )
    parser.add_argument(
        "--levels",
        type=float,
        nargs="+",
        metavar="L",
        help="Values of the noise's level parameter (sigma; the amount for salt_pepper). "
        "Default: the noise's own grid, e.g. "
        f"{' '.join(map(str, noise.SIGMAS))} for sigma.",
    )
    parser.add_argument(
        "--sigmas", type=float, nargs="+", metavar="S", help="--levels, for noises swept by sigma."
    )
    parser.add_argument(
        "--amounts", type=float, nargs="+", metavar="P", help="--levels, for salt_pepper."
    )
    parser.add_argument(
        "--out", metavar="DIR", help="Output folder. Default: eval-<noise> beside the model."
    )
    parser.add_argument(
        "--data-dir",
        help="Data root (a folder model: its image folder). Default: $DENOISE_DIST_DATA, "
        "else the model's own, else ./data.",
    )
    parser.add_argument(
        "--max-images", type=int, metavar="N", help="Score only the first N images (quick looks)."
    )
    parser.add_argument("--batch-size", type=int, default=500, help="Images per forward pass.")
    parser.add_argument("--cpu", action="store_true", help="Use the CPU even with a GPU.")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks.")


def noise_levels(
    cfg: Config, name: str, given: list[float] | None, flag: str
) -> tuple[str, list[tuple[float, str, dict]]]:
    """(the level's name, [(level, noise, its params)] in increasing level)."""
    evaluated = noise.NOISES[name].eval_as or name
    spec = noise.NOISES[evaluated]
    level_name = "amount" if spec.level == "salt_pepper" else spec.level
    if flag == "--sigmas" and spec.level != "sigma":
        raise ConfigError(f"{name} has no sigma; use --amounts or --levels")
    if flag == "--amounts" and spec.level != "salt_pepper":
        raise ConfigError(f"--amounts is for salt_pepper, not {name}; use --sigmas or --levels")
    levels = sorted(given or spec.levels)
    if spec.level == "salt_pepper" and not all(0 <= v <= 1 for v in levels):
        raise ConfigError(f"{flag} must be in [0, 1]")
    if not all(v >= 0 for v in levels):
        raise ConfigError(f"{flag} must be >= 0")
    base = noise.params_of(evaluated, cfg.noise)
    return level_name, [(v, evaluated, {**base, spec.level: v}) for v in levels]


def default_out_dir(model_arg: str, noise_name: str) -> Path:
    given = Path(model_arg)
    return (given if given.is_dir() else given.parent) / f"eval-{noise_name}"


@dataclass
class EvalImages:
    """The scored images (float [n, 1, H, W] groups on the CPU, one per size) and the
    images the blur is tuned on."""

    groups: list[torch.Tensor]
    tuning: torch.Tensor
    split: str
    tuning_from: str

    @property
    def count(self) -> int:
        return sum(len(g) for g in self.groups)


def data_root(args: argparse.Namespace, cfg: Config) -> Path:
    """--data-dir; for a folder model its own folder; else $DENOISE_DIST_DATA, then the
    folder the model was trained from (if it is still there), then ./data."""
    if cfg.data.dataset == data.FOLDER:
        root = args.data_dir or cfg.data.data_dir
        if not root or not Path(root).is_dir():
            raise DataError(
                f"the model was trained on the image folder {cfg.data.data_dir}, which is not "
                f"here; pass --data-dir"
            )
        return Path(root)
    stored = cfg.data.data_dir if cfg.data.data_dir and Path(cfg.data.data_dir).is_dir() else None
    return data.resolve_data_root(args.data_dir, os.environ.get(data.DATA_ENV), stored)


def load_eval_images(cfg: Config, root: Path, max_images: int | None) -> EvalImages:
    if cfg.data.dataset == data.FOLDER:
        train_files, held_out = data.folder_files(root, cfg.data.val_size)
        scored = [p for _, p in data.read_folder_images(held_out[:max_images])]
        train = [p for _, p in data.read_folder_images(train_files, cfg.data.patch_size)]
        if not scored or not train:
            raise DataError(f"{root}: no readable held-out or training images")
        crops = data.fixed_crops(train, cfg.data.patch_size, data.VAL_CROPS_PER_IMAGE)
        return EvalImages(
            [data.to_float(p[None]) for p in scored],
            data.to_float(crops[:MAX_TUNING_CROPS]),
            f"held-out files of {root}",
            f"crops of the training files ({min(len(crops), MAX_TUNING_CROPS)})",
        )
    test = data.load_split(cfg.data.dataset, root, "test", cfg.data.download)
    train_split = data.load_split(cfg.data.dataset, root, "train", cfg.data.download)
    val_size = data.DEFAULT_VAL_SIZE if cfg.data.val_size is None else cfg.data.val_size
    val = data.split_train_val(train_split, val_size)[1]
    return EvalImages(
        [data.to_float(test[:max_images])],
        data.to_float(val),
        "test",
        f"validation split ({len(val)} images)",
    )


def noisy_groups(images: EvalImages, name: str, params: dict, seed: int) -> list[torch.Tensor]:
    """Each group's fixed-seed noisy version, keyed by its position in the whole set."""
    if len(images.groups) == 1:
        return [noise.fixed_noisy(images.groups[0], name, params, "test", seed)]
    return [
        noise.fixed_noisy(group, name, params, f"test/{i}", seed)
        for i, group in enumerate(images.groups)
    ]


def shard(groups: list[torch.Tensor], world: int, rank: int) -> tuple[list[torch.Tensor], slice]:
    """This rank's images (disjoint, covering across ranks) and their global indices."""
    if len(groups) == 1:
        part = data.eval_shard(len(groups[0]), world, rank)
        return [groups[0][part]], part
    part = data.eval_shard(len(groups), world, rank)
    return groups[part], part


def evaluate(args: argparse.Namespace) -> dict:
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError("--max-images must be >= 1")
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    model_path = resolve_model_path(args.model)
    meta = read_meta(model_path)
    cfg = from_dict(meta["config"]) if "config" in meta else Config()
    noise_name = args.noise or cfg.noise.noise
    given = [
        (f, v)
        for f, v in (
            ("--levels", args.levels),
            ("--sigmas", args.sigmas),
            ("--amounts", args.amounts),
        )
        if v
    ]
    if len(given) > 1:
        raise ConfigError(f"give the levels once ({' or '.join(f for f, _ in given)})")
    flag, values = given[0] if given else ("--levels", None)
    level_name, levels = noise_levels(cfg, noise_name, values, flag)
    out_dir = Path(args.out) if args.out else default_out_dir(args.model, noise_name)

    state = process_state(args.cpu)
    world, rank, device = state.num_processes, state.process_index, state.device
    root = data_root(args, cfg)
    with state.main_process_first():  # only one process may download
        images = load_eval_images(cfg, root, args.max_images)
    model = load_model(model_path, device)
    is_main = state.is_main_process
    trained = noise.NOISES[cfg.noise.noise].eval_as or cfg.noise.noise
    if is_main and (noise.NOISES[noise_name].eval_as or noise_name) != trained:
        warnings.warn(
            f"the model was trained on {cfg.noise.noise} noise, evaluating on {noise_name}",
            stacklevel=2,
        )

    sums = torch.zeros(len(levels), len(METHODS), 3, dtype=torch.float64, device=device)
    per_image = torch.zeros(images.count, dtype=torch.float64, device=device)
    tuning = images.tuning.to(device)
    widths = []
    for i, (_, name, params) in enumerate(levels):
        tuning_noisy = noise.fixed_noisy(images.tuning, name, params, "val", cfg.noise.eval_seed)
        width = classical.tune_blur_width(
            tuning_noisy.to(device), tuning, batch_size=args.batch_size
        )
        widths.append(width)
        noisy_all = noisy_groups(images, name, params, cfg.noise.eval_seed)
        clean_mine, indices = shard(images.groups, world, rank)
        noisy_mine, _ = shard(noisy_all, world, rank)
        scores = []
        for clean, noisy in zip(clean_mine, noisy_mine, strict=True):
            clean, noisy = clean.to(device), noisy.to(device)
            outputs = {
                "model": denoise_batched(model, noisy, args.batch_size),
                "identity": classical.identity(noisy),
                "gaussian_blur": classical.in_batches(
                    lambda x, w=width: classical.gaussian_blur(x, w), noisy, args.batch_size
                ),
                "median3x3": classical.in_batches(classical.median3x3, noisy, args.batch_size),
            }
            for j, method in enumerate(METHODS):
                sums[i, j] += quality_sums(outputs[method], clean)
            scores.append(psnr(outputs["model"], clean).double())
        if i == len(levels) - 1 and scores:  # the hardest images: at the highest level
            per_image[indices] = torch.cat(scores)
    if world > 1:
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(per_image)
    sums, per_image = sums.cpu(), per_image.cpu()

    report = {
        "model": str(model_path),
        "model_name": meta["model"],
        "step": meta.get("step"),
        "trained_noise": cfg.noise.noise,
        "noise": noise_name,
        "level": level_name,
        "dataset": cfg.data.dataset,
        "split": images.split,
        "num_images": images.count,
        "eval_seed": cfg.noise.eval_seed,
        "world_size": world,
        "blur_widths_from": images.tuning_from,
        "results": [
            result_row(level_name, level, width, sums[i])
            for i, ((level, _, _), width) in enumerate(zip(levels, widths, strict=True))
        ],
    }
    fixed = {k: v for k, v in levels[-1][2].items() if k != noise.NOISES[levels[-1][1]].level}
    if fixed:
        report["fixed_params"] = fixed
    if is_main:
        hardest = torch.argsort(per_image, stable=True)[:NUM_HARDEST].tolist()
        report["hardest"] = {
            level_name: levels[-1][0],
            "indices": hardest,
            "model_psnr": per_image[hardest].tolist(),
        }
        write_outputs(report, out_dir, model, images, noisy_all, hardest, args.batch_size)
        print_table(report, out_dir)
    state.wait_for_everyone()
    return report


def result_row(level_name: str, level: float, width: float, sums: torch.Tensor) -> dict:
    row: dict = {level_name: level, "blur_width": width}
    for j, method in enumerate(METHODS):
        psnr_mean, ssim_mean = means(sums[j])
        row[method] = {"psnr": psnr_mean, "ssim": ssim_mean}
    return row


def pick(groups: list[torch.Tensor], indices: list[int]) -> list[torch.Tensor]:
    """Images by global index, as [1, 1, H, W] each; a folder's as centre crops."""
    if len(groups) == 1:
        return [groups[0][i : i + 1] for i in indices]
    out = []
    for i in indices:
        image = groups[i]
        height, width = image.shape[-2:]
        top, left = max(0, (height - HARDEST_CROP) // 2), max(0, (width - HARDEST_CROP) // 2)
        out.append(image[..., top : top + HARDEST_CROP, left : left + HARDEST_CROP])
    return out


def write_outputs(
    report, out_dir: Path, model, images: EvalImages, noisy_groups_, hardest, batch_size: int
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / EVAL_FILE, json.dumps(report, indent=2))
    save_psnr_plot(report, out_dir / PLOT_FILE)
    device = next(model.parameters()).device
    clean = pick(images.groups, hardest)
    noisy = pick(noisy_groups_, hardest)
    denoised = [denoise_batched(model, x.to(device), batch_size).cpu() for x in noisy]
    level = report["level"]
    figures.save_sample_figure(
        figures.sample_grid(noisy, denoised, clean),
        out_dir / HARDEST_FILE,
        f"hardest {report['split']} images for {report['model_name']} at {level} "
        f"{report['hardest'][level]:g} ({report['noise']})",
    )


def save_psnr_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level = report["level"]
    xs = [row[level] for row in report["results"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method in METHODS:
        label = report["model_name"] if method == "model" else method
        ax.plot(xs, [row[method]["psnr"] for row in report["results"]], marker="o", label=label)
    ax.set(
        xlabel=level,
        ylabel="PSNR (dB)",
        title=f"{report['noise']} noise, {report['num_images']} {report['split']} images",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def print_table(report: dict, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    level, console = report["level"], Console()
    names = [report["model_name"] if m == "model" else m for m in METHODS]
    for metric, digits in (("psnr", 2), ("ssim", 3)):
        table = Table(
            title=f"{metric.upper()}: {report['model_name']} on {report['num_images']} "
            f"{report['dataset']} {report['split']} images, {report['noise']} noise"
        )
        for name in [level, *names, "blur width"]:
            table.add_column(name, justify="right")
        for row in report["results"]:
            table.add_row(
                f"{row[level]:g}",
                *[f"{row[m][metric]:.{digits}f}" for m in METHODS],
                f"{row['blur_width']:g}",
            )
        console.print(table)
    console.print(f"wrote {out_dir / EVAL_FILE}, {out_dir / PLOT_FILE}, {out_dir / HARDEST_FILE}")
