"""What `evaluate` reports, from what scoring every level left (`Results`): eval.json,
the PSNR-vs-level plot, the hardest images and the tables on stdout."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from denoise_dist import classical, data, figures, noise
from denoise_dist.atomic import atomic_write, atomic_write_text
from denoise_dist.commands.evaluate.baselines import Tuning, builtin_output
from denoise_dist.commands.evaluate.inputs import centre_crop, image_at
from denoise_dist.commands.evaluate.options import SIGMA_SOURCES, Options
from denoise_dist.commands.evaluate.scores import Scores

MAX_PER_IMAGE = 100  # sets up to this size list every image's PSNR in eval.json
EVAL_FILE, PLOT_FILE, HARDEST_FILE = "eval.json", "psnr_vs_sigma.png", "hardest.png"


@dataclass
class Results:
    """What scoring every level leaves, gathered from every process."""

    scores: Scores
    tunings: list[Tuning] = field(default_factory=list)  # each level's
    failures: list[dict] = field(default_factory=list)  # a classical method's, on one image
    shown: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # figure crops
    hardest: list[int] = field(default_factory=list)  # the model's worst, at the last level
    noisy: list[torch.Tensor] = field(default_factory=list)  # the last level's noisy groups


def build(options: Options, images: data.EvalImages, results: Results, world: int) -> dict:
    cfg, scores, methods = options.cfg, results.scores, options.methods
    report = {
        "model": str(options.model_path),
        "model_name": options.meta["model"],
        "step": options.meta.get("step"),
        "trained_noise": cfg.noise.noise,
        "noise": options.noise,
        "level": options.level_name,
        "dataset": cfg.data.dataset,
        "split": images.split,
        "num_images": images.count,
        "eval_seed": cfg.noise.eval_seed,
        "world_size": world,
        "blur_widths_from": images.tuning_from,
        "methods": methods,
        "results": [result_row(options, results, i) for i in range(len(options.levels))],
    }
    if options.classical_methods:
        report["baselines"] = {
            m: {
                "params": classical.IMAGE_BASELINES[m].params,
                "max_images": options.caps[m],
                "seconds": scores.seconds[methods.index(m)].item(),
            }
            for m in options.classical_methods
        }
        report["baseline_sigma"] = SIGMA_SOURCES[options.baseline_sigma]
        report["baseline_params_tuned_on"] = images.tuning_from
    if options.not_installed:
        report["baselines_not_installed"] = options.not_installed
    report["failures"] = results.failures
    if images.count <= MAX_PER_IMAGE:
        add_per_image(report, scores, images.names)
    top, drawn, params = options.levels[-1]
    fixed = {k: v for k, v in params.items() if k != noise.NOISES[drawn].level}
    if fixed:
        report["fixed_params"] = fixed
    report["hardest"] = {
        options.level_name: top,
        "indices": results.hardest,
        "model_psnr": scores.of(len(options.levels) - 1, "model")[0][results.hardest].tolist(),
    }
    return report


def result_row(options: Options, results: Results, i: int) -> dict:
    """Level `i`: the baselines' settings, and each method's means, image count and the
    images the model beats it on."""
    level_name, level, scores = options.level_name, options.levels[i][0], results.scores
    tuning = results.tunings[i]
    row: dict = {level_name: level, "blur_width": tuning.blur_width}
    if tuning.factors:
        row["baseline_sigma"] = tuning.sigma  # None: estimated per image
        if "tv" in tuning.factors:
            row["tv_weight_factor"] = tuning.factors["tv"]
    model_psnr = scores.of(i, "model")[0]
    for method in options.methods:
        psnr, ssim, scored = scores.of(i, method)
        n = int(scored.sum())
        psnrs, ssims = psnr[scored], ssim[scored]
        entry: dict = {
            "psnr": psnrs.mean().item() if n else None,
            "ssim": ssims.mean().item() if n else None,
            "images": n,
        }
        if method != "model":
            entry["model_wins"] = int((model_psnr[scored] > psnrs).sum())
            failed = [
                f for f in results.failures if f["method"] == method and f[level_name] == level
            ]
            if failed:
                entry["failed"] = len(failed)
        row[method] = entry
    return row


def add_per_image(report: dict, scores: Scores, names: list[str] | None) -> None:
    """Each image's PSNR per method (None where the method did not score it), per level."""
    if names is not None:
        report["image_names"] = names
    for i, row in enumerate(report["results"]):
        row["per_image_psnr"] = {}
        for method in report["methods"]:
            psnr, _, scored = scores.of(i, method)
            row["per_image_psnr"][method] = [
                value if was_scored else None
                for value, was_scored in zip(psnr.tolist(), scored.tolist(), strict=True)
            ]


def write(report: dict, options: Options, model, images: data.EvalImages, results: Results) -> None:
    options.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(options.out_dir / EVAL_FILE, json.dumps(report, indent=2))
    save_psnr_plot(report, options.out_dir / PLOT_FILE)
    hardest = options.out_dir / HARDEST_FILE
    save_hardest_figure(report, hardest, model, images, results, options.batch_size)


def save_hardest_figure(
    report: dict, path: Path, model, images: data.EvalImages, results: Results, batch_size: int
) -> None:
    """The model's hardest images at the last level: noisy, each method's output, clean."""
    device = next(model.parameters()).device
    width = report["results"][-1]["blur_width"]
    shown = [m for m in report["methods"] if m != "identity"]
    columns: list[list[torch.Tensor]] = [[] for _ in range(len(shown) + 2)]
    for k in results.hardest:
        noisy = image_at(images, results.noisy, k)[None].to(device)
        clean = centre_crop(image_at(images, images.groups, k))
        columns[0].append(centre_crop(noisy[0].cpu()))
        for c, method in enumerate(shown, start=1):
            if method in classical.IMAGE_BASELINES:
                # A baseline that failed on this image leaves a blank tile.
                out = results.shown.get((method, k), torch.ones_like(clean))
            else:
                out = builtin_output(method, noisy, model, width, batch_size)[0].cpu()
            columns[c].append(centre_crop(out))
        columns[-1].append(clean)
    level = report["level"]
    labels = ["noisy", *(report["model_name"] if m == "model" else m for m in shown), "clean"]
    figures.save_sample_figure(
        figures.column_grid(columns),
        path,
        f"hardest {report['split']} images for {report['model_name']} at {level} "
        f"{report['hardest'][level]:g} ({report['noise']})",
        labels,
    )


def method_label(report: dict, method: str) -> str:
    name = report["model_name"] if method == "model" else method
    counts = {r[method]["images"] for r in report["results"]}
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


def print_tables(report: dict, out_dir: Path) -> None:
    """One row per method, one column per level (seven levels fit 80 columns); then the
    notes."""
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
    print_notes(report, out_dir, console)


def print_notes(report: dict, out_dir: Path, console) -> None:
    """The tuned parameters, the baselines' time, the first failures, the files written."""
    level, rows = report["level"], report["results"]
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
