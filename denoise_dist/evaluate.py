"""`denoise-dist evaluate RUN_OR_MODEL`: test-set PSNR/SSIM over a grid of noise levels,
for the model and for classical denoisers, on the same fixed-seed noisy images.

Under `accelerate launch` each process scores a disjoint shard of the test set and the
sums are reduced, so any number of processes reports the same numbers. The noisy images
are drawn on the CPU for the whole set before sharding, and the blur width is tuned on
the whole validation split by every process, so neither depends on the world size.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from denoise_dist import classical, data, figures
from denoise_dist.atomic import atomic_write, atomic_write_text
from denoise_dist.config import NOISES, Config, NoiseConfig, from_dict
from denoise_dist.errors import ConfigError
from denoise_dist.evaluation import denoise_batched, means, quality_sums
from denoise_dist.export import load_model, read_meta, resolve_model_path
from denoise_dist.metrics import psnr
from denoise_dist.noise import fixed_noisy

DEFAULT_SIGMAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_AMOUNTS = (0.1, 0.2, 0.3, 0.4, 0.5)  # salt_pepper has a fraction, not a sigma
METHODS = ("model", "identity", "gaussian_blur", "median3x3")
NUM_HARDEST = 8
EVAL_FILE, PLOT_FILE, HARDEST_FILE = "eval.json", "psnr_vs_sigma.png", "hardest.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN_OR_MODEL",
                        help="A run folder (its best_model.safetensors) or a .safetensors file.")
    parser.add_argument("--noise", choices=NOISES,
                        help="Noise to evaluate on. Default: the one the model was trained on "
                             "(gaussian_blind is evaluated as gaussian at each sigma).")
    parser.add_argument("--sigmas", type=float, nargs="+", metavar="S",
                        help="Gaussian sigmas (the read noise for poisson_gaussian). "
                             f"Default: {' '.join(map(str, DEFAULT_SIGMAS))}.")
    parser.add_argument("--amounts", type=float, nargs="+", metavar="P",
                        help="Fractions of flipped pixels for salt_pepper. "
                             f"Default: {' '.join(map(str, DEFAULT_AMOUNTS))}.")
    parser.add_argument("--out", metavar="DIR",
                        help="Output folder. Default: eval-<noise> beside the model.")
    parser.add_argument("--data-dir", help="Data root. Default: the model's, else "
                                           "$DENOISE_DIST_DATA, else ./data.")
    parser.add_argument("--max-images", type=int, metavar="N",
                        help="Evaluate only the first N test images (quick looks).")
    parser.add_argument("--batch-size", type=int, default=500, help="Images per forward pass.")
    parser.add_argument("--cpu", action="store_true", help="Use the CPU even with a GPU.")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks.")


def noise_levels(base: NoiseConfig, noise: str, sigmas, amounts) -> tuple[str, list]:
    """(name of the level, [(level, NoiseConfig)] in increasing level) for the chosen noise."""
    if noise == "salt_pepper":
        if sigmas:
            raise ConfigError("salt_pepper has no sigma; use --amounts")
        levels = sorted(amounts or DEFAULT_AMOUNTS)
        if not all(0 <= a <= 1 for a in levels):
            raise ConfigError("--amounts must be in [0, 1]")
        return "amount", [(a, replace(base, noise=noise, salt_pepper=a)) for a in levels]
    if amounts:
        raise ConfigError(f"--amounts is for salt_pepper, not {noise}; use --sigmas")
    levels = sorted(sigmas or DEFAULT_SIGMAS)
    if not all(s >= 0 for s in levels):
        raise ConfigError("--sigmas must be >= 0")
    per_level = "poisson_gaussian" if noise == "poisson_gaussian" else "gaussian"
    return "sigma", [(s, replace(base, noise=per_level, sigma=s)) for s in levels]


def default_out_dir(model_arg: str, noise: str) -> Path:
    given = Path(model_arg)
    return (given if given.is_dir() else given.parent) / f"eval-{noise}"


def process_state(cpu: bool):
    """Rank, world size and device under `accelerate launch` (one process otherwise).
    The only Accelerate use here: it sets up the process group the launcher asked for."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=cpu or parse_flag_from_env("ACCELERATE_USE_CPU"))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:  # as in train: each would evaluate alone
        raise ConfigError(f"the launcher started {launched} processes but they did not form "
                          f"one process group (world size {state.num_processes}); "
                          f"on a CPU-only machine pass --cpu")
    return state


def sum_over_processes(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def in_batches(fn, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    parts = [fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(parts) if parts else images[:0]


def evaluate(args: argparse.Namespace) -> dict:
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError("--max-images must be >= 1")
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    model_path = resolve_model_path(args.model)
    meta = read_meta(model_path)
    cfg = from_dict(meta["config"]) if "config" in meta else Config()
    noise = args.noise or cfg.noise.noise
    level_name, levels = noise_levels(cfg.noise, noise, args.sigmas, args.amounts)
    out_dir = Path(args.out) if args.out else default_out_dir(args.model, noise)

    state = process_state(args.cpu)
    world, rank, device = state.num_processes, state.process_index, state.device
    root = data.resolve_data_root(args.data_dir or cfg.data.data_dir)
    with state.main_process_first():  # only one process may download
        test = data.load_split(cfg.data.dataset, root, "test", cfg.data.download)
        train_images = data.load_split(cfg.data.dataset, root, "train", cfg.data.download)
    test_clean = data.to_float(test[:args.max_images])
    val_clean = data.to_float(data.split_train_val(train_images, cfg.data.val_size)[1])
    shard = data.eval_shard(len(test_clean), world, rank)
    clean = test_clean[shard].to(device)
    model = load_model(model_path, device)
    is_main = state.is_main_process
    if is_main and noise.replace("_blind", "") != cfg.noise.noise.replace("_blind", ""):
        warnings.warn(f"the model was trained on {cfg.noise.noise} noise, evaluating on {noise}")

    sums = torch.zeros(len(levels), len(METHODS), 3, dtype=torch.float64, device=device)
    widths = []
    for i, (level, noise_cfg) in enumerate(levels):
        width = classical.tune_blur_width(fixed_noisy(val_clean, noise_cfg, "val").to(device),
                                          val_clean.to(device), batch_size=args.batch_size)
        widths.append(width)
        noisy_all = fixed_noisy(test_clean, noise_cfg, "test")
        noisy = noisy_all[shard].to(device)
        outputs = {
            "model": denoise_batched(model, noisy, args.batch_size),
            "identity": classical.identity(noisy),
            "gaussian_blur": in_batches(lambda x: classical.gaussian_blur(x, width), noisy,
                                        args.batch_size),
            "median3x3": in_batches(classical.median3x3, noisy, args.batch_size),
        }
        for j, method in enumerate(METHODS):
            sums[i, j] = quality_sums(outputs[method], clean)
    # The hardest images: lowest model PSNR at the highest level.
    per_image = torch.zeros(len(test_clean), dtype=torch.float64, device=device)
    per_image[shard] = psnr(outputs["model"], clean).double()
    sums = sum_over_processes(sums, world).cpu()
    per_image = sum_over_processes(per_image, world).cpu()

    report = {
        "model": str(model_path), "model_name": meta["model"], "step": meta.get("step"),
        "trained_noise": cfg.noise.noise, "noise": noise, "level": level_name,
        "dataset": cfg.data.dataset, "split": "test", "num_images": len(test_clean),
        "eval_seed": cfg.noise.eval_seed, "world_size": world,
        "blur_widths_from": f"validation split ({len(val_clean)} images)",
        "results": [result_row(level_name, level, width, sums[i])
                    for i, ((level, _), width) in enumerate(zip(levels, widths))],
    }
    if noise == "poisson_gaussian":
        report["photons"] = cfg.noise.photons
    if is_main:
        hardest = torch.argsort(per_image, stable=True)[:NUM_HARDEST]
        report["hardest"] = {level_name: levels[-1][0], "indices": hardest.tolist(),
                             "model_psnr": per_image[hardest].tolist()}
        write_outputs(report, out_dir, model, test_clean[hardest],
                      noisy_all[hardest], args.batch_size)
        print_table(report, out_dir)
    state.wait_for_everyone()
    return report


def result_row(level_name: str, level: float, width: float, sums: torch.Tensor) -> dict:
    row = {level_name: level, "blur_width": width}
    for j, method in enumerate(METHODS):
        psnr_mean, ssim_mean = means(sums[j])
        row[method] = {"psnr": psnr_mean, "ssim": ssim_mean}
    return row


def write_outputs(report: dict, out_dir: Path, model, clean, noisy, batch_size: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / EVAL_FILE, json.dumps(report, indent=2))
    save_psnr_plot(report, out_dir / PLOT_FILE)
    denoised = denoise_batched(model, noisy.to(next(model.parameters()).device), batch_size)
    level = report["level"]
    figures.save_sample_figure(
        figures.sample_grid(noisy, denoised.cpu(), clean), out_dir / HARDEST_FILE,
        f"hardest test images for {report['model_name']} at {level} "
        f"{report['hardest'][level]:g} ({report['noise']})")


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
    ax.set(xlabel=level, ylabel="test PSNR (dB)",
           title=f"{report['noise']} noise, {report['num_images']} test images")
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
        table = Table(title=f"test {metric.upper()}: {report['model_name']} on "
                            f"{report['num_images']} {report['dataset']} images, "
                            f"{report['noise']} noise")
        for name in [level, *names, "blur width"]:
            table.add_column(name, justify="right")
        for row in report["results"]:
            table.add_row(f"{row[level]:g}", *[f"{row[m][metric]:.{digits}f}" for m in METHODS],
                          f"{row['blur_width']:g}")
        console.print(table)
    console.print(f"wrote {out_dir / EVAL_FILE}, {out_dir / PLOT_FILE}, {out_dir / HARDEST_FILE}")
