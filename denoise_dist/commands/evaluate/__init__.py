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

Here: the driver and the loop over levels. Beside it: `options` (the arguments and their
checks), `inputs` (the images' noisy versions and each process's share; the images come
from the dataset's kind, `data.load_eval_images`), `baselines` (the compared denoisers,
their tuning, their jobs across processes), `scores`, and `report` (eval.json, figures,
tables).
"""

from __future__ import annotations

import argparse
import warnings

import torch

from denoise_dist import data, noise
from denoise_dist.commands.evaluate import baselines, report
from denoise_dist.commands.evaluate.inputs import image_at, noisy_groups
from denoise_dist.commands.evaluate.options import (
    Options,
    add_arguments,
    missing_extra_note,
    read_options,
)
from denoise_dist.commands.evaluate.scores import Scores, hardest_images
from denoise_dist.console import progress_bar
from denoise_dist.export import load_model
from denoise_dist.runtime import process_state

__all__ = ["add_arguments", "evaluate"]


def evaluate(args: argparse.Namespace) -> dict:
    options = read_options(args)
    state = process_state(args.cpu)
    images = data.load_eval_images(
        options.cfg.data, args.data_dir, args.max_images, state.main_process_first
    )
    model = load_model(options.model_path, state.device)
    if state.is_main_process:
        say_what_differs(options)
    results = score_levels(options, images, model, state)
    eval_json = report.build(options, images, results, state.num_processes)
    if state.is_main_process:
        report.write(eval_json, options, model, images, results)
        report.print_tables(eval_json, options.out_dir)
    state.wait_for_everyone()
    return eval_json


def say_what_differs(options: Options) -> None:
    """A model evaluated on another noise than its own, and baselines not installed."""
    trained = noise.NOISES[options.cfg.noise.noise].eval_as or options.cfg.noise.noise
    if (noise.NOISES[options.noise].eval_as or options.noise) != trained:
        warnings.warn(
            f"the model was trained on {options.cfg.noise.noise} noise, evaluating on "
            f"{options.noise}",
            stacklevel=3,
        )
    if options.not_installed:
        print(missing_extra_note(options.not_installed), flush=True)


def score_levels(options: Options, images: data.EvalImages, model, state) -> report.Results:
    world, rank, device = state.num_processes, state.process_index, state.device
    seed, count, last = options.cfg.noise.eval_seed, images.count, len(options.levels) - 1
    batch = options.batch_size
    classical_methods = options.classical_methods
    counts = {m: min(options.caps[m] or count, count) for m in classical_methods}
    pixels = [image_at(images, images.groups, k).numel() for k in range(count)]
    results = report.Results(Scores(len(options.levels), options.methods, count))
    scores, loads = results.scores, [0.0] * world  # loads: each process's classical work
    with classical_progress(state.is_main_process and bool(classical_methods)) as progress:
        for i, (level, name, params) in enumerate(options.levels):
            tuning = baselines.tune(options, images, name, params, device)
            noisy = noisy_groups(images, name, params, seed)
            width = tuning.blur_width
            baselines.score_batched_methods(scores, i, images, noisy, model, width, state, batch)
            if i == last:
                results.hardest = hardest_images(scores, i, world, device)
            shown = results.hardest if i == last else []
            jobs = baselines.level_jobs(counts, shown)
            own = baselines.this_process_jobs(jobs, pixels, loads, rank)
            caption = f"classical baselines, {options.level_name} {level:g} ({i + 1}/{last + 1})"
            failures, crops = baselines.run_classical_jobs(
                scores, i, own, images, noisy, tuning, progress, caption, set(shown)
            )
            results.failures += [{options.level_name: level, **f} for f in failures]
            results.shown.update(crops)
            results.tunings.append(tuning)
            results.noisy = noisy
    if world > 1:
        gather(results, world, device)
    level_name, methods = options.level_name, options.methods
    results.failures.sort(key=lambda f: (f[level_name], methods.index(f["method"]), f["image"]))
    return results


def gather(results: report.Results, world: int, device) -> None:
    """Every process's scores summed, and its failures and figure crops collected."""
    results.scores.reduce_all(device)
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, (results.failures, results.shown))
    results.failures = [f for failures, _ in gathered for f in failures]
    results.shown = {key: crop for _, shown in gathered for key, crop in shown.items()}


def classical_progress(enabled: bool):
    """The bar on stderr (the tables go to stdout) while the classical baselines run."""
    from rich.console import Console

    return progress_bar(Console(stderr=True), enabled=enabled, transient=True)
