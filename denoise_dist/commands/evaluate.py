"""`denoise-dist evaluate RUN_OR_MODEL`: PSNR/SSIM over a grid of noise levels, for the
model and for classical denoisers, on the same fixed-seed noisy images.

What is scored: an MNIST-style model's test split; a folder-trained model's held-out
files, whole. The Gaussian blur's width is tuned on images that are never scored (the
validation split, or crops of the training files). The levels and their default grid
come from the noise table (`denoise_dist.noise.NOISES`).

With the `classical` extra, BM3D, NL-means, TV and wavelet shrinkage are scored too, one
image at a time: the slow ones on the first N images only (--max-baseline-images), and
each method's image count and the number of those images the model beats are reported.
Their noise sigma is the noise's measured standard deviation on the tuning images
("known"), or an estimate from each noisy image (--baseline-sigma estimated; the default
for a model trained on a blind noise); TV's weight is tuned like the blur's width. A
baseline that fails on an image is reported for that image, and the rest goes on.

Under `accelerate launch` each process scores a disjoint shard of the images (and of the
classical baselines' images, balanced by their size) and the per-image scores are
reduced, so any number of processes reports the same numbers: the noisy images do not
depend on the sharding, and every process tunes on the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from denoise_dist import classical, data, figures, noise
from denoise_dist.atomic import atomic_write, atomic_write_text
from denoise_dist.config import Config, from_dict
from denoise_dist.console import progress_bar
from denoise_dist.errors import ConfigError, DataError, UserError
from denoise_dist.export import load_model, read_meta, resolve_model_path
from denoise_dist.inference import denoise_batched
from denoise_dist.metrics import PerImageScores
from denoise_dist.runtime import process_state

BUILTIN_METHODS = ("model", "identity", "gaussian_blur", "median3x3")
BUILTIN_BASELINES = ("gaussian_blur", "median3x3")
BASELINE_GROUPS = {
    "all": (*BUILTIN_BASELINES, *classical.IMAGE_BASELINES),
    "builtin": BUILTIN_BASELINES,
    "classical": tuple(classical.IMAGE_BASELINES),
}
BASELINE_CHOICES = (*BASELINE_GROUPS, *BUILTIN_BASELINES, *classical.IMAGE_BASELINES)
SIGMA_KNOWN, SIGMA_ESTIMATED = "known", "estimated"
SIGMA_SOURCES = {
    SIGMA_KNOWN: "known: the standard deviation of (noisy - clean) on the tuning images",
    SIGMA_ESTIMATED: "estimated from each noisy image (skimage.restoration.estimate_sigma)",
}
SCORE_CHUNK = 256  # images scored per metric call
NUM_HARDEST = 8
HARDEST_CROP = 128  # a folder's hardest images are shown as centre crops of this size
MAX_TUNING_CROPS = 2000
MAX_PER_IMAGE = 100  # sets up to this size list every image's PSNR in eval.json
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
    parser.add_argument(
        "--baselines",
        nargs="+",
        choices=BASELINE_CHOICES,
        metavar="NAME",
        help="Classical denoisers to compare with, besides the noisy input: gaussian_blur, "
        "median3x3 (built in); bm3d, nl_means, tv, wavelet (the classical extra); or the "
        "groups builtin, classical, all. Default: all that are installed.",
    )
    parser.add_argument(
        "--max-baseline-images",
        nargs="+",
        metavar="[NAME=]N",
        help="Score a slow baseline on the first N scored images only: N for each capped "
        "one, NAME=N for one baseline. Default: "
        + " ".join(
            f"{b.name}={b.default_cap}"
            for b in classical.IMAGE_BASELINES.values()
            if b.default_cap is not None
        )
        + " (the others score every image).",
    )
    parser.add_argument(
        "--baseline-sigma",
        choices=tuple(SIGMA_SOURCES),
        help="The noise sigma the classical baselines are given: known (the noise's measured "
        "standard deviation on the tuning images) or estimated (from each noisy image). "
        "Default: known; estimated for a model trained on a blind noise.",
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
    names: list[str] | None = None  # a folder's files, relative to its root

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
        read = data.read_folder_images(held_out[:max_images])
        scored = [p for _, p in read]
        train = [p for _, p in data.read_folder_images(train_files, cfg.data.patch_size)]
        if not scored or not train:
            raise DataError(f"{root}: no readable held-out or training images")
        crops = data.fixed_crops(train, cfg.data.patch_size, data.VAL_CROPS_PER_IMAGE)
        return EvalImages(
            [data.to_float(p[None]) for p in scored],
            data.to_float(crops[:MAX_TUNING_CROPS]),
            f"held-out files of {root}",
            f"crops of the training files ({min(len(crops), MAX_TUNING_CROPS)})",
            [path.relative_to(root).as_posix() for path, _ in read],
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


def chosen_baselines(given: list[str] | None) -> tuple[list[str], list[str]]:
    """(the baselines to run, in table order; those of the classical extra left out
    because it is not installed). Named ones that are not installed are an error."""
    wanted = {n for name in (given or ["all"]) for n in BASELINE_GROUPS.get(name, (name,))}
    names = [n for n in BASELINE_GROUPS["all"] if n in wanted]
    missing = [
        n
        for n in names
        if n in classical.IMAGE_BASELINES and not classical.IMAGE_BASELINES[n].available()
    ]
    if missing and given:
        raise ConfigError(
            f"{', '.join(missing)} need{'s' if len(missing) == 1 else ''} the classical "
            f"extra: {classical.CLASSICAL_EXTRA}"
        )
    return [n for n in names if n not in missing], missing


def missing_extra_note(missing: list[str]) -> str:
    return (
        f"note: {', '.join(missing)} not installed; {classical.CLASSICAL_EXTRA} adds "
        "the field's classical baselines"
    )


def baseline_caps(given: list[str] | None) -> dict[str, int | None]:
    """The most images each classical baseline scores (None: all), from the defaults and
    --max-baseline-images N (every capped one) or NAME=N."""
    caps = {name: b.default_cap for name, b in classical.IMAGE_BASELINES.items()}
    for item in given or []:
        name, _, value = item.rpartition("=")
        if name and name not in caps:
            raise ConfigError(f"--max-baseline-images: {name} is not one of {', '.join(caps)}")
        try:
            count = int(value)
        except ValueError:
            raise ConfigError(f"--max-baseline-images: {item!r} is not N or NAME=N") from None
        if count < 1:
            raise ConfigError("--max-baseline-images must be >= 1")
        for other, cap in caps.items():
            if other == name or (not name and cap is not None):
                caps[other] = count
    return caps


def image_at(groups: list[torch.Tensor], index: int) -> torch.Tensor:
    """Image `index` of the whole set, [1, H, W]."""
    return groups[0][index] if len(groups) == 1 else groups[index][0]


def centre_crop(image: torch.Tensor, is_folder: bool) -> torch.Tensor:
    """What the hardest-images figure shows of an image: a folder's as a centre crop."""
    if not is_folder:
        return image
    height, width = image.shape[-2:]
    top, left = max(0, (height - HARDEST_CROP) // 2), max(0, (width - HARDEST_CROP) // 2)
    return image[..., top : top + HARDEST_CROP, left : left + HARDEST_CROP]


@dataclass(frozen=True)
class Work:
    """One classical baseline on one image: scored, or only shown in the figure."""

    method: str
    index: int
    scored: bool


def assign_work(work: list[Work], pixels: list[int], loads: list[float], rank: int) -> list[Work]:
    """This rank's share of `work`: the costliest first, each to the least loaded rank
    (every rank computes the same assignment; `loads` carries over between calls)."""
    cost = [pixels[w.index] * classical.IMAGE_BASELINES[w.method].cost for w in work]
    mine = []
    for k in sorted(range(len(work)), key=lambda k: -cost[k]):
        target = min(range(len(loads)), key=lambda r: loads[r])
        loads[target] += cost[k]
        if target == rank:
            mine.append(work[k])
    order = {name: i for i, name in enumerate(classical.IMAGE_BASELINES)}
    return sorted(mine, key=lambda w: (order[w.method], w.index))


def builtin_output(method: str, noisy, model, width: float, batch_size: int) -> torch.Tensor:
    if method == "model":
        return denoise_batched(model, noisy, batch_size)
    if method == "identity":
        return classical.identity(noisy)
    if method == "gaussian_blur":
        return classical.in_batches(lambda x: classical.gaussian_blur(x, width), noisy, batch_size)
    return classical.in_batches(classical.median3x3, noisy, batch_size)


class Scores(PerImageScores):
    """Per-image PSNR and SSIM of every method at every level, which images each method
    scored, and each method's seconds; summed across processes at the end."""

    def __init__(self, levels: int, methods: list[str], count: int):
        super().__init__([levels, len(methods)], count)
        self.methods = methods
        self.seconds = torch.zeros(len(methods), dtype=torch.float64)

    def add_method(self, level: int, method: str, indices, pred, clean) -> None:
        self.add((level, self.methods.index(method)), indices, pred, clean)

    def reduce_all(self, device) -> None:
        def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
            torch.distributed.all_reduce(t)
            return t

        self.reduce(all_reduce_sum, device)
        self.seconds = all_reduce_sum(self.seconds.to(device)).cpu()


def run_image_baselines(
    scores: Scores,
    level_index: int,
    work: list[Work],
    images: EvalImages,
    noisy_all: list[torch.Tensor],
    sigma: float | None,
    factors: dict[str, float],
    progress,
    caption: str,
    keep: set[int],
) -> tuple[list[dict], dict[tuple[str, int], torch.Tensor]]:
    """Run this rank's share; returns (failures, the figure's crops of the images in
    `keep`, by (method, index))."""
    failures, kept = [], {}
    pending: list[tuple[str, int, torch.Tensor]] = []
    is_folder = len(images.groups) > 1

    def flush():
        if pending:
            method, indices = pending[0][0], [k for _, k, _ in pending]
            pred = torch.stack([out for _, _, out in pending])
            clean = torch.stack([image_at(images.groups, k) for k in indices])
            scores.add_method(level_index, method, indices, pred, clean)
            pending.clear()

    task = progress.add_task(caption, total=len(work))
    for item in work:
        noisy = image_at(noisy_all, item.index)
        if pending and (
            pending[0][0] != item.method
            or pending[0][2].shape != noisy.shape
            or len(pending) >= SCORE_CHUNK
        ):
            flush()
        progress.update(task, description=f"{caption}: {item.method}")
        start = time.perf_counter()
        try:
            out = classical.apply_image_baseline(
                classical.IMAGE_BASELINES[item.method], noisy, sigma, factors[item.method]
            )
        except classical.BaselineFailed as e:
            if item.scored:
                failures.append({"method": item.method, "image": item.index, "error": str(e)})
            continue
        finally:
            scores.seconds[scores.methods.index(item.method)] += time.perf_counter() - start
            progress.advance(task)
        if item.scored:
            pending.append((item.method, item.index, out))
        if item.index in keep:
            kept[(item.method, item.index)] = centre_crop(out, is_folder)
    flush()
    progress.remove_task(task)
    return failures, kept


def evaluate(args: argparse.Namespace) -> dict:
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError("--max-images must be >= 1")
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    baselines, missing = chosen_baselines(args.baselines)
    caps = baseline_caps(args.max_baseline_images)
    model_path = resolve_model_path(args.model)
    meta = read_meta(model_path)
    try:
        cfg = from_dict(meta["config"]) if "config" in meta else Config()
    except ConfigError as e:  # load_model leaves the saved config to its readers
        raise UserError(f"{model_path} is not a valid model file: its config: {e}") from None
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
    trained_blind = noise.NOISES[cfg.noise.noise].eval_as is not None
    sigma_from = args.baseline_sigma or (SIGMA_ESTIMATED if trained_blind else SIGMA_KNOWN)

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
    if is_main and missing:
        print(missing_extra_note(missing), flush=True)

    methods = ["model", "identity", *baselines]
    image_methods = [m for m in baselines if m in classical.IMAGE_BASELINES]
    count = images.count
    counts = {m: min(caps[m] or count, count) for m in image_methods}
    pixels = [image_at(images.groups, k).numel() for k in range(count)]
    scores = Scores(len(levels), methods, count)
    loads = [0.0] * world
    tunings: list[dict] = []
    failures: list[dict] = []
    kept: dict[tuple[str, int], torch.Tensor] = {}
    hardest: list[int] = []
    tuning = images.tuning.to(device)
    last = len(levels) - 1
    with baseline_progress(is_main and bool(image_methods)) as progress:
        for i, (level, name, params) in enumerate(levels):
            tuning_noisy = noise.fixed_noisy(
                images.tuning, name, params, "val", cfg.noise.eval_seed
            )
            width = classical.tune_blur_width(
                tuning_noisy.to(device), tuning, batch_size=args.batch_size
            )
            sigma = (
                classical.noise_sigma(tuning_noisy, images.tuning)
                if sigma_from == SIGMA_KNOWN
                else None
            )
            factors = {
                m: classical.tune_factor(
                    classical.IMAGE_BASELINES[m], tuning_noisy, images.tuning, sigma
                )
                for m in image_methods
            }
            tunings.append({"blur_width": width, "sigma": sigma, "factors": factors})
            noisy_all = noisy_groups(images, name, params, cfg.noise.eval_seed)
            clean_mine, part = shard(images.groups, world, rank)
            noisy_mine, _ = shard(noisy_all, world, rank)
            start = part.start
            for clean, noisy in zip(clean_mine, noisy_mine, strict=True):
                indices = slice(start, start + len(clean))
                start += len(clean)
                clean, noisy = clean.to(device), noisy.to(device)
                for method in ("model", "identity", *BUILTIN_BASELINES):
                    if method in methods:
                        out = builtin_output(method, noisy, model, width, args.batch_size)
                        scores.add_method(i, method, indices, out, clean)
            if i == last:  # the hardest images: the model's worst at the highest level
                model_psnr = scores.values[i, 0, :, 0].to(device)
                if world > 1:
                    torch.distributed.all_reduce(model_psnr)
                hardest = torch.argsort(model_psnr.cpu(), stable=True)[:NUM_HARDEST].tolist()
            work = [Work(m, k, True) for m in image_methods for k in range(counts[m])]
            if i == last:
                work += [Work(m, k, False) for m in image_methods for k in hardest]
                work = [w for w in work if w.scored or w.index >= counts[w.method]]
            mine = assign_work(work, pixels, loads, rank)
            caption = f"classical baselines, {level_name} {level:g} ({i + 1}/{len(levels)})"
            level_failures, level_kept = run_image_baselines(
                scores,
                i,
                mine,
                images,
                noisy_all,
                sigma,
                factors,
                progress,
                caption,
                set(hardest) if i == last else set(),
            )
            failures += [{level_name: level, **f} for f in level_failures]
            kept.update(level_kept)
    if world > 1:
        scores.reduce_all(device)
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, (failures, kept))
        failures = [f for part_failures, _ in gathered for f in part_failures]
        kept = {key: v for _, part_kept in gathered for key, v in part_kept.items()}
    failures.sort(key=lambda f: (f[level_name], methods.index(f["method"]), f["image"]))

    report = {
        "model": str(model_path),
        "model_name": meta["model"],
        "step": meta.get("step"),
        "trained_noise": cfg.noise.noise,
        "noise": noise_name,
        "level": level_name,
        "dataset": cfg.data.dataset,
        "split": images.split,
        "num_images": count,
        "eval_seed": cfg.noise.eval_seed,
        "world_size": world,
        "blur_widths_from": images.tuning_from,
        "methods": methods,
        "results": [
            result_row(level_name, level, tunings[i], methods, scores, i, failures)
            for i, (level, _, _) in enumerate(levels)
        ],
    }
    if image_methods:
        report["baselines"] = {
            m: {
                "params": classical.IMAGE_BASELINES[m].params,
                "max_images": caps[m],
                "seconds": scores.seconds[methods.index(m)].item(),
            }
            for m in image_methods
        }
        report["baseline_sigma"] = SIGMA_SOURCES[sigma_from]
        report["baseline_params_tuned_on"] = images.tuning_from
    if missing:
        report["baselines_not_installed"] = missing
    report["failures"] = failures
    if count <= MAX_PER_IMAGE:
        add_per_image(report, scores, images.names)
    fixed = {k: v for k, v in levels[-1][2].items() if k != noise.NOISES[levels[-1][1]].level}
    if fixed:
        report["fixed_params"] = fixed
    if is_main:
        report["hardest"] = {
            level_name: levels[-1][0],
            "indices": hardest,
            "model_psnr": scores.values[last, 0, hardest, 0].tolist(),
        }
        write_outputs(report, out_dir, model, images, noisy_all, hardest, kept, args.batch_size)
        print_table(report, out_dir)
    state.wait_for_everyone()
    return report


def baseline_progress(enabled: bool):
    """The bar on stderr (the tables go to stdout) while the classical baselines run."""
    from rich.console import Console

    return progress_bar(Console(stderr=True), enabled=enabled, transient=True)


def result_row(
    level_name: str,
    level: float,
    tuned: dict,
    methods: list[str],
    scores: Scores,
    i: int,
    failures: list[dict],
) -> dict:
    row: dict = {level_name: level, "blur_width": tuned["blur_width"]}
    if tuned["factors"]:
        row["baseline_sigma"] = tuned["sigma"]  # None: estimated per image
        if "tv" in tuned["factors"]:
            row["tv_weight_factor"] = tuned["factors"]["tv"]
    model_psnr = scores.values[i, 0, :, 0]
    for j, method in enumerate(methods):
        scored = scores.scored[i, j] > 0
        n = int(scored.sum())
        psnrs, ssims = scores.values[i, j, scored, 0], scores.values[i, j, scored, 1]
        entry: dict = {
            "psnr": psnrs.mean().item() if n else None,
            "ssim": ssims.mean().item() if n else None,
            "images": n,
        }
        if method != "model":
            entry["model_wins"] = int((model_psnr[scored] > psnrs).sum())
            failed = [f for f in failures if f["method"] == method and f[level_name] == level]
            if failed:
                entry["failed"] = len(failed)
        row[method] = entry
    return row


def add_per_image(report: dict, scores: Scores, names: list[str] | None) -> None:
    """Each image's PSNR per method (None where the method did not score it), per level."""
    if names is not None:
        report["image_names"] = names
    for i, row in enumerate(report["results"]):
        row["per_image_psnr"] = {
            method: [
                value if scored else None
                for value, scored in zip(
                    scores.values[i, j, :, 0].tolist(), scores.scored[i, j].tolist(), strict=True
                )
            ]
            for j, method in enumerate(report["methods"])
        }


def write_outputs(
    report, out_dir: Path, model, images: EvalImages, noisy_all, hardest, kept, batch_size: int
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / EVAL_FILE, json.dumps(report, indent=2))
    save_psnr_plot(report, out_dir / PLOT_FILE)
    device = next(model.parameters()).device
    is_folder = len(images.groups) > 1
    width = report["results"][-1]["blur_width"]
    shown = [m for m in report["methods"] if m != "identity"]
    columns: list[list[torch.Tensor]] = [[] for _ in range(len(shown) + 2)]
    for k in hardest:
        noisy = image_at(noisy_all, k)[None].to(device)
        clean = centre_crop(image_at(images.groups, k), is_folder)
        columns[0].append(centre_crop(noisy[0].cpu(), is_folder))
        for c, method in enumerate(shown, start=1):
            if method in classical.IMAGE_BASELINES:
                # A baseline that failed on this image leaves a blank tile.
                out = kept.get((method, k), torch.ones_like(clean))
            else:
                out = builtin_output(method, noisy, model, width, batch_size)[0].cpu()
            columns[c].append(centre_crop(out, is_folder))
        columns[-1].append(clean)
    level = report["level"]
    labels = ["noisy", *(report["model_name"] if m == "model" else m for m in shown), "clean"]
    figures.save_sample_figure(
        figures.column_grid(columns),
        out_dir / HARDEST_FILE,
        f"hardest {report['split']} images for {report['model_name']} at {level} "
        f"{report['hardest'][level]:g} ({report['noise']})",
        labels,
    )


def method_label(report: dict, method: str, row: dict | None = None) -> str:
    name = report["model_name"] if method == "model" else method
    rows = [row] if row else report["results"]
    counts = {r[method]["images"] for r in rows}
    if counts != {report["num_images"]}:
        name += f" ({'/'.join(str(c) for c in sorted(counts))} images)"
    return name


def save_psnr_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level = report["level"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in report["methods"]:
        points = [
            (row[level], row[method]["psnr"])
            for row in report["results"]
            if row[method]["psnr"] is not None
        ]
        capped = any(r[method]["images"] < report["num_images"] for r in report["results"])
        ax.plot(
            *zip(*points, strict=True),
            marker="o",
            linestyle="--" if capped else "-",
            linewidth=2.5 if method == "model" else 1.2,
            label=method_label(report, method),
        )
    ax.set(
        xlabel=level,
        ylabel="PSNR (dB)",
        title=f"{report['noise']} noise, {report['num_images']} {report['split']} images",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def image_counts(report: dict, method: str) -> str:
    """How many images `method` scored: one number, or low-high where failures vary it."""
    counts = sorted({row[method]["images"] for row in report["results"]})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def print_table(report: dict, out_dir: Path) -> None:
    """One row per method, one column per level (seven levels fit 80 columns)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    level, console = report["level"], Console()
    methods, n = report["methods"], report["num_images"]

    def new_table(title: str) -> Table:
        # The title on its own line: a table's title wraps to the table's width.
        console.print(title, highlight=False)
        return Table(box=box.SIMPLE_HEAD, pad_edge=False)

    rows = report["results"]
    for metric, digits in (("psnr", 2), ("ssim", 3)):
        table = new_table(
            f"{metric.upper()}: {report['model_name']} on {n} "
            f"{report['dataset']} {report['split']} images, {report['noise']} noise"
        )
        table.add_column(level, no_wrap=True)
        table.add_column("n", justify="right")
        for row in rows:
            table.add_column(f"{row[level]:g}", justify="right")
        for m in methods:
            name = report["model_name"] if m == "model" else m
            cells = ["-" if r[m][metric] is None else f"{r[m][metric]:.{digits}f}" for r in rows]
            table.add_row(name, image_counts(report, m), *cells)
        console.print(table)
    table = new_table(f"images on which {report['model_name']} has the higher PSNR (of n)")
    table.add_column(level, no_wrap=True)
    for row in rows:
        table.add_column(f"{row[level]:g}", justify="right")
    for m in methods[1:]:
        table.add_row(m, *[f"{r[m]['model_wins']}/{r[m]['images']}" for r in rows])
    console.print(table)
    widths = ", ".join(f"{r['blur_width']:g}" for r in rows)
    console.print(f"gaussian_blur width, tuned on the {report['blur_widths_from']}: {widths}")
    if "baselines" in report:
        sigmas = ", ".join(
            "per image" if r["baseline_sigma"] is None else f"{r['baseline_sigma']:.3f}"
            for r in rows
        )
        seconds = ", ".join(f"{m} {b['seconds']:.1f} s" for m, b in report["baselines"].items())
        console.print(f"classical baselines' sigma ({report['baseline_sigma']}): {sigmas}")
        console.print(f"their time, all processes: {seconds}", highlight=False)
    for failure in report["failures"][:10]:
        console.print(
            f"{failure['method']} failed on image {failure['image']} at {level} "
            f"{failure[level]:g}: {failure['error']}",
            highlight=False,
            markup=False,
        )
    if len(report["failures"]) > 10:
        console.print(f"... {len(report['failures']) - 10} more failures in {EVAL_FILE}")
    console.print(f"wrote {out_dir / EVAL_FILE}, {out_dir / PLOT_FILE}, {out_dir / HARDEST_FILE}")
