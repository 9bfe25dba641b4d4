"""The denoisers `evaluate` compares the model with, and how each level sets them: the
built-in ones run batched on every image; the classical ones (`classical.IMAGE_BASELINES`)
one image at a time, capped, as jobs balanced across the processes by their cost."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from denoise_dist import classical, data, noise
from denoise_dist.commands.evaluate.inputs import centre_crop, image_at, process_share
from denoise_dist.commands.evaluate.options import BUILTIN_BASELINES, SIGMA_KNOWN, Options
from denoise_dist.commands.evaluate.scores import Scores
from denoise_dist.inference import denoise_batched

BUILTIN_METHODS = ("model", "identity", *BUILTIN_BASELINES)  # batched, on every image
SCORE_CHUNK = 256  # images scored per metric call


@dataclass(frozen=True)
class Tuning:
    """What the baselines are set to at one level, chosen on the tuning images."""

    blur_width: float
    sigma: float | None  # the classical ones' noise sigma; None: estimated per image
    factors: dict[str, float]  # each classical one's tuned factor


def tune(options: Options, images: data.EvalImages, name: str, params: dict, device) -> Tuning:
    clean = images.tuning
    noisy = noise.fixed_noisy(clean, name, params, "val", options.cfg.noise.eval_seed)
    width = classical.tune_blur_width(
        noisy.to(device), clean.to(device), batch_size=options.batch_size
    )
    known = options.baseline_sigma == SIGMA_KNOWN
    sigma = classical.noise_sigma(noisy, clean) if known else None
    factors = {
        m: classical.tune_factor(classical.IMAGE_BASELINES[m], noisy, clean, sigma)
        for m in options.classical_methods
    }
    return Tuning(width, sigma, factors)


def builtin_output(method: str, noisy, model, width: float, batch_size: int) -> torch.Tensor:
    if method == "model":
        return denoise_batched(model, noisy, batch_size)
    if method == "identity":
        return classical.identity(noisy)
    if method == "gaussian_blur":
        return classical.in_batches(lambda x: classical.gaussian_blur(x, width), noisy, batch_size)
    return classical.in_batches(classical.median3x3, noisy, batch_size)


@dataclass(frozen=True)
class ClassicalJob:
    """One classical denoiser on one image: scored, or only shown in the figure."""

    method: str
    index: int
    scored: bool


def level_jobs(counts: dict[str, int], shown: list[int]) -> list[ClassicalJob]:
    """Each classical method on its first `counts[method]` images, scored, and on the
    images in `shown` beyond those, for the figure only."""
    jobs = [ClassicalJob(m, k, True) for m, n in counts.items() for k in range(n)]
    return jobs + [ClassicalJob(m, k, False) for m in counts for k in shown if k >= counts[m]]


def this_process_jobs(
    jobs: list[ClassicalJob], pixels: list[int], loads: list[float], rank: int
) -> list[ClassicalJob]:
    """This process's share of `jobs`: the costliest first, each to the least loaded
    process (every process computes the same assignment; `loads` carries over between
    levels)."""
    cost = [pixels[job.index] * classical.IMAGE_BASELINES[job.method].cost for job in jobs]
    own = []
    for k in sorted(range(len(jobs)), key=lambda k: -cost[k]):
        target = min(range(len(loads)), key=lambda r: loads[r])
        loads[target] += cost[k]
        if target == rank:
            own.append(jobs[k])
    order = {name: i for i, name in enumerate(classical.IMAGE_BASELINES)}
    return sorted(own, key=lambda job: (order[job.method], job.index))


def run_classical_jobs(
    scores: Scores, level: int, jobs: list[ClassicalJob], images: data.EvalImages,
    noisy: list[torch.Tensor], tuning: Tuning, progress, caption: str, shown: set[int],
) -> tuple[list[dict], dict[tuple[str, int], torch.Tensor]]:  # fmt: skip
    """Run this process's jobs of one level; returns (the failures, the figure's crops of
    the images in `shown`, by (method, index))."""
    failures, kept = [], {}
    pending: list[tuple[str, int, torch.Tensor]] = []

    def score_pending():
        if pending:
            method, indices = pending[0][0], [k for _, k, _ in pending]
            pred = torch.stack([out for _, _, out in pending])
            clean = torch.stack([image_at(images, images.groups, k) for k in indices])
            scores.add_method(level, method, indices, pred, clean)
            pending.clear()

    task = progress.add_task(caption, total=len(jobs))
    for job in jobs:
        image = image_at(images, noisy, job.index)
        if pending and (
            pending[0][0] != job.method
            or pending[0][2].shape != image.shape
            or len(pending) >= SCORE_CHUNK
        ):
            score_pending()
        progress.update(task, description=f"{caption}: {job.method}")
        start = time.perf_counter()
        baseline, factor = classical.IMAGE_BASELINES[job.method], tuning.factors[job.method]
        try:
            out = classical.apply_image_baseline(baseline, image, tuning.sigma, factor)
        except classical.BaselineFailed as e:
            if job.scored:
                failures.append({"method": job.method, "image": job.index, "error": str(e)})
            continue
        finally:
            scores.add_seconds(job.method, time.perf_counter() - start)
            progress.advance(task)
        if job.scored:
            pending.append((job.method, job.index, out))
        if job.index in shown:
            kept[(job.method, job.index)] = centre_crop(out)
    score_pending()
    progress.remove_task(task)
    return failures, kept


def score_batched_methods(
    scores: Scores, level: int, images: data.EvalImages, noisy: list[torch.Tensor], model,
    width: float, state, batch_size: int,
) -> None:  # fmt: skip
    """The model, identity and the built-in baselines on this process's images."""
    for indices, group, rows in process_share(images, state.num_processes, state.process_index):
        clean = images.groups[group][rows].to(state.device)
        noisy_rows = noisy[group][rows].to(state.device)
        for method in BUILTIN_METHODS:
            if method in scores.methods:
                out = builtin_output(method, noisy_rows, model, width, batch_size)
                scores.add_method(level, method, indices, out, clean)
