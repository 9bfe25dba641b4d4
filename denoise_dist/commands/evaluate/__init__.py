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

The parts: `options` (the arguments and their checks), `inputs` (the scored images'
noisy versions and each process's share; the images themselves come from the dataset's
kind, `data.load_eval_images`), `baselines` (the compared denoisers, their tuning and
their jobs across processes), `levels` and `scores` (scoring every level), `report`
(eval.json, the figures and the tables).
"""

from __future__ import annotations

import argparse
import warnings

from denoise_dist import data, noise
from denoise_dist.commands.evaluate.levels import score_levels
from denoise_dist.commands.evaluate.options import (
    Options,
    add_arguments,
    missing_extra_note,
    read_options,
)
from denoise_dist.commands.evaluate.report import build_report, print_tables, write_outputs
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
    results = score_levels(options, images, model, state, args.batch_size)
    report = build_report(options, images, results, state.num_processes)
    if state.is_main_process:
        write_outputs(report, options.out_dir, model, images, results, args.batch_size)
        print_tables(report, options.out_dir)
    state.wait_for_everyone()
    return report


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
