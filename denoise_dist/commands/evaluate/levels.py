"""Scoring every level: the baselines tuned on the tuning images, the model and the
built-in methods on this process's share of the images, the classical jobs, and the
results gathered from every process (`Results`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from denoise_dist import data
from denoise_dist.commands.evaluate.baselines import (
    Tuning,
    level_jobs,
    run_classical_jobs,
    score_batched_methods,
    this_process_jobs,
    tune,
)
from denoise_dist.commands.evaluate.inputs import image_at, noisy_groups
from denoise_dist.commands.evaluate.options import Options
from denoise_dist.commands.evaluate.scores import Scores, hardest_images
from denoise_dist.console import progress_bar


@dataclass
class Results:
    """What scoring every level leaves, gathered from every process."""

    scores: Scores
    tunings: list[Tuning] = field(default_factory=list)  # each level's
    failures: list[dict] = field(default_factory=list)  # a classical method's, on one image
    shown: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # figure crops
    hardest: list[int] = field(default_factory=list)  # the model's worst, at the last level
    noisy: list[torch.Tensor] = field(default_factory=list)  # the last level's noisy groups


def score_levels(
    options: Options, images: data.EvalImages, model, state, batch_size: int
) -> Results:
    world, rank, device = state.num_processes, state.process_index, state.device
    methods, classical_methods = options.methods, options.classical_methods
    seed, count, last = options.cfg.noise.eval_seed, images.count, len(options.levels) - 1
    counts = {m: min(options.caps[m] or count, count) for m in classical_methods}
    pixels = [image_at(images, images.groups, k).numel() for k in range(count)]
    results = Results(Scores(len(options.levels), methods, count))
    loads = [0.0] * world  # each process's classical work so far
    with classical_progress(state.is_main_process and bool(classical_methods)) as progress:
        for i, level in enumerate(options.levels):
            tuning = tune(
                images, level, seed, options.baseline_sigma, classical_methods, device, batch_size
            )
            results.tunings.append(tuning)
            results.noisy = noisy_groups(images, level[1], level[2], seed)
            score_batched_methods(
                results.scores,
                i,
                images,
                results.noisy,
                model,
                tuning.blur_width,
                state,
                batch_size,
            )
            if i == last:
                results.hardest = hardest_images(results.scores, i, world, device)
            shown = results.hardest if i == last else []
            jobs = this_process_jobs(level_jobs(counts, shown), pixels, loads, rank)
            caption = f"classical baselines, {options.level_name} {level[0]:g} ({i + 1}/{last + 1})"
            failures, crops = run_classical_jobs(
                results.scores,
                i,
                jobs,
                images,
                results.noisy,
                tuning,
                progress,
                caption,
                set(shown),
            )
            results.failures += [{options.level_name: level[0], **f} for f in failures]
            results.shown.update(crops)
    if world > 1:
        gather(results, world, device)
    results.failures.sort(
        key=lambda f: (f[options.level_name], methods.index(f["method"]), f["image"])
    )
    return results


def gather(results: Results, world: int, device) -> None:
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
