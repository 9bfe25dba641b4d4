"""`evaluate`'s command line: the arguments, their checks, and what they resolve to
(`Options`): the model, the noise levels, the baselines and where the report goes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from denoise_dist import classical, noise
from denoise_dist.commands import add_model_argument
from denoise_dist.config import Config, from_dict
from denoise_dist.errors import ConfigError, UserError
from denoise_dist.export import read_meta, resolve_model_path

BUILTIN_BASELINES = ("gaussian_blur", "median3x3")
SIGMA_KNOWN, SIGMA_ESTIMATED = "known", "estimated"
SIGMA_SOURCES = {
    SIGMA_KNOWN: "known: the standard deviation of (noisy - clean) on the tuning images",
    SIGMA_ESTIMATED: "estimated from each noisy image (skimage.restoration.estimate_sigma)",
}
BASELINE_GROUPS = {
    "all": (*BUILTIN_BASELINES, *classical.IMAGE_BASELINES),
    "builtin": BUILTIN_BASELINES,
    "classical": tuple(classical.IMAGE_BASELINES),
}
BASELINE_CHOICES = (*BASELINE_GROUPS, *BUILTIN_BASELINES, *classical.IMAGE_BASELINES)
LEVEL_FLAGS = ("--levels", "--sigmas", "--amounts")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, "RUN_OR_MODEL")
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


@dataclass(frozen=True)
class Options:
    """What the arguments resolve to, checked."""

    model_path: Path
    meta: dict  # the model file's metadata
    cfg: Config  # the config the model was trained with
    noise: str  # the noise evaluated on
    level_name: str  # its swept parameter: sigma, or amount
    levels: list[tuple[float, str, dict]]  # (level, the noise drawn, its params), increasing
    out_dir: Path
    baseline_sigma: str  # SIGMA_KNOWN or SIGMA_ESTIMATED
    baselines: list[str]  # the ones to run, in table order
    not_installed: list[str]  # those of the classical extra left out: it is not installed
    caps: dict[str, int | None]  # the most images each classical one scores (None: all)
    batch_size: int  # images per forward pass

    @property
    def methods(self) -> list[str]:
        return ["model", "identity", *self.baselines]

    @property
    def classical_methods(self) -> list[str]:
        return [m for m in self.baselines if m in classical.IMAGE_BASELINES]


def read_options(args: argparse.Namespace) -> Options:
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError("--max-images must be >= 1")
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    baselines, not_installed = chosen_baselines(args.baselines)
    caps = baseline_caps(args.max_baseline_images)
    model_path = resolve_model_path(args.model)
    meta = read_meta(model_path)
    try:
        cfg = from_dict(meta["config"]) if "config" in meta else Config()
    except ConfigError as e:  # load_model leaves the saved config to its readers
        raise UserError(f"{model_path} is not a valid model file: its config: {e}") from None
    noise_name = args.noise or cfg.noise.noise
    given = [(flag, getattr(args, flag[2:])) for flag in LEVEL_FLAGS]
    given = [(flag, values) for flag, values in given if values]
    if len(given) > 1:
        raise ConfigError(f"give the levels once ({' or '.join(f for f, _ in given)})")
    flag, values = given[0] if given else ("--levels", None)
    level_name, levels = noise_levels(cfg, noise_name, values, flag)
    trained_blind = noise.NOISES[cfg.noise.noise].eval_as is not None
    return Options(
        model_path,
        meta,
        cfg,
        noise_name,
        level_name,
        levels,
        Path(args.out) if args.out else default_out_dir(args.model, noise_name),
        args.baseline_sigma or (SIGMA_ESTIMATED if trained_blind else SIGMA_KNOWN),
        baselines,
        not_installed,
        caps,
        args.batch_size,
    )


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
