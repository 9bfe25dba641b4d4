"""Typed run configuration: dataclass defaults, overlaid by a YAML file, then by CLI flags
(`config_overlay`: every field is a flat YAML key and a flag). Each pipeline stage owns a
section; the choices of dataset, noise, model, loss, schedule, precision and tracker come
from those stages' tables. All checks live in `validate`; any problem raises
`ConfigError` with a one-line message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from denoise_dist.config_overlay import Sections, load_yaml
from denoise_dist.data import DATASETS
from denoise_dist.errors import ConfigError
from denoise_dist.models import MODELS
from denoise_dist.noise import NOISES
from denoise_dist.optim import LOSSES, SCHEDULES
from denoise_dist.recipes import RECIPES
from denoise_dist.runtime import COMPILE_AUTO_MIN_STEPS, PRECISION_TO_ACCELERATE
from denoise_dist.trackers import SINKS

REPORT_TO = ("none", "all", *SINKS)
WANDB_MODES = ("auto", "online", "offline", "disabled")
# Spellings that earlier versions and YAML's booleans produce, and what they mean now.
ALIASES = {"mixed_precision": {"no": "auto", False: "auto"}}


def doc(text: str, **kw) -> Any:
    """A dataclass field whose help text is also its CLI help."""
    return field(metadata={"help": text}, **kw)


@dataclass
class DataConfig:
    dataset: str = doc(
        "Dataset: " + "; ".join(f"{name}: {kind.summary}" for name, kind in DATASETS.items()) + ".",
        default="mnist",
    )
    data_dir: str | None = doc(
        "Data root (for folder: the image folder). Default: $DENOISE_DIST_DATA, else ./data.",
        default=None,
    )
    val_size: int | None = doc(
        "Held out for validation: images (MNIST-style), or files (folder). "
        "Default: 5000 images, or a fifth of the files.",
        default=None,
    )
    patch_size: int = doc("Side of the random training crops (folder).", default=64)
    augment: bool = doc(
        "Flip and rotate each training crop (folder) by one of the 8 symmetries of a square.",
        default=False,
    )
    download: bool = doc("Download the dataset if it is missing (needs network).", default=True)


@dataclass
class NoiseConfig:
    noise: str = doc(f"Noise model: {', '.join(NOISES)}.", default="gaussian")
    sigma: float = doc(
        "Gaussian std on the [0,1] pixel scale (also the read noise of poisson_gaussian).",
        default=0.5,
    )
    # A blind model is weakest at the ends of its range: train a little beyond the range
    # it must serve (docs/benchmarks.md: [0.05, 0.8] for 0.1-0.7).
    sigma_min: float = doc("Lowest per-image sigma for gaussian_blind.", default=0.1)
    sigma_max: float = doc("Highest per-image sigma for gaussian_blind.", default=0.7)
    salt_pepper: float = doc("Fraction of pixels flipped to 0 or 1 by salt_pepper.", default=0.2)
    photons: float = doc("Photon count at full brightness for poisson_gaussian.", default=20.0)
    eval_sigmas: tuple[float, ...] = doc(
        "Extra sigmas to report validation PSNR/SSIM at (Gaussian noise).", default=()
    )
    eval_seed: int = doc(
        "Seed of the fixed noisy evaluation sets (same for every run).", default=1234
    )


@dataclass
class ModelConfig:
    model: str = doc(
        "Model: " + "; ".join(f"{name}: {spec.summary}" for name, spec in MODELS.items()) + ".",
        default="unet",
    )
    width: int = doc(
        "Channels of the first level (unet, conv_ae), or of every layer (dncnn, whose "
        "default is 64).",
        default=32,
    )
    depth: int = doc("Resolution levels of unet (each halves the size).", default=2)
    layers: int = doc("Convolution layers of dncnn.", default=17)
    dropout: float = doc("Dropout on seed_ae's linear code.", default=0.2)


@dataclass
class OptimConfig:
    lr: float = doc("Adam learning rate (not scaled with the world size).", default=2e-3)
    weight_decay: float = doc("Adam weight decay.", default=0.0)
    schedule: str = doc(f"Learning-rate schedule: {' or '.join(SCHEDULES)}.", default="constant")
    warmup_steps: int = doc("Linear warmup steps.", default=0)
    grad_clip: float = doc("Clip the gradient norm to this (0 disables).", default=1.0)
    grad_accum: int = doc("Micro-batches accumulated per optimizer step.", default=1)
    loss: str = doc(
        "What training minimises: mse, or psnr (minus the mean per-image PSNR, which "
        "weighs every image alike; it helps blind models at low noise).",
        default="mse",
    )
    ema_decay: float = doc(
        "Keep an exponential moving average of the weights with this decay (0: off); "
        "the average is what is evaluated and exported.",
        default=0.0,
    )


@dataclass
class TrainConfig:
    recipe: str | None = doc(
        "A named preset applied before the YAML file and flags: "
        + "; ".join(f"{name}: {r.summary}" for name, r in RECIPES.items())
        + ".",
        default=None,
    )
    batch_size: int = doc("Global batch per optimizer step, split across processes.", default=128)
    max_steps: int | None = doc("Optimizer steps to train; overrides --epochs.", default=None)
    epochs: float = doc("Epochs to train when --max-steps is not set.", default=1.0)
    eval_every: int = doc(
        "Evaluate on the validation set every N steps (and at the end).", default=250
    )
    log_every: int = doc("Write a metrics.jsonl line every N steps.", default=25)
    seed: int = doc("Seed for init, data order and noise.", default=0)
    mixed_precision: str = doc(
        "auto (the launcher's choice, from an accelerate config; else fp32), fp32, fp16 or bf16.",
        default="auto",
    )
    compile: bool | None = doc(
        "torch.compile the training step (CUDA graphs on a GPU): --compile, --no-compile, "
        "or by default on for a CUDA run of at least "
        f"{COMPILE_AUTO_MIN_STEPS} steps, where compiling (about 10 s) pays for itself.",
        default=None,
    )
    cuda_graph: bool = doc(
        "Experimental, never yet run on a GPU: capture the whole training step as one CUDA "
        "graph and replay it (one process only). On a CPU the same capture-safe step runs "
        "eagerly.",
        default=False,
    )
    deterministic: bool = doc(
        "Deterministic algorithms (cuDNN, cuBLAS): bit-exact resume on a GPU, a little slower.",
        default=False,
    )
    cpu: bool = doc("Use the CPU even when a GPU is present.", default=False)
    output_dir: str | None = doc(
        "Run folder. Default: runs/default, or runs/sweep-<id>/<run id> under a W&B sweep agent.",
        default=None,
    )
    resume: str = doc(
        "auto (newest valid checkpoint in the run folder), never, or a checkpoint path.",
        default="auto",
    )
    allow_data_change: bool = doc(
        "Resume even if the training data differ from the checkpoint's (files added, removed "
        "or changed); the run then records that it is no longer an exact resume.",
        default=False,
    )
    overwrite: bool = doc(
        "Delete an existing run folder's contents and start fresh (never in a requeued "
        "or restarted job: that resumes).",
        default=False,
    )
    checkpoint_every: int = doc("Checkpoint every N steps (and at the end).", default=250)
    keep_checkpoints: int = doc("How many recent checkpoints to keep.", default=2)
    dist_timeout: int = doc(
        "Seconds a process waits for the others (in a collective) before the job fails.",
        default=600,
    )
    profile: bool = doc(
        "Write a torch.profiler trace of a few steps to <run>/profile (TensorBoard, Perfetto).",
        default=False,
    )
    debug: bool = doc("Show full tracebacks.", default=False)


@dataclass
class TrackingConfig:
    report_to: tuple[str, ...] = doc(
        f"Trackers: {', '.join(SINKS)}, several, all or none. metrics.jsonl and figures "
        "are always written.",
        default=(),
    )
    wandb_mode: str = doc(
        "auto (online with an API key and network, else offline), online, offline or disabled.",
        default="auto",
    )
    wandb_project: str = doc("W&B project.", default="denoise-dist")
    wandb_entity: str | None = doc("W&B entity (team or user).", default=None)
    run_name: str | None = doc(
        "Run name shown by trackers. Default: <model>-<noise>-<run id>.", default=None
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


SECTIONS = Sections(Config, ALIASES)
FIELDS = SECTIONS.fields
overlay = SECTIONS.overlay
add_config_flags = SECTIONS.add_flags


def _choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def trackers(report_to: tuple[str, ...]) -> tuple[str, ...]:
    """The trackers a --report-to list names: `all` is every one, `none` (or nothing) none."""
    for name in report_to:
        _choice("report_to", name, REPORT_TO)
    if "all" in report_to:
        return tuple(SINKS)
    return tuple(dict.fromkeys(name for name in report_to if name != "none"))


def validate(cfg: Config) -> Config:
    """The one place where a config is checked. Raises ConfigError on the first problem."""
    _choice("dataset", cfg.data.dataset, DATASETS)
    _choice("noise", cfg.noise.noise, NOISES)
    _choice("model", cfg.model.model, MODELS)
    _choice("schedule", cfg.optim.schedule, SCHEDULES)
    _choice("loss", cfg.optim.loss, LOSSES)
    _choice("mixed_precision", cfg.train.mixed_precision, PRECISION_TO_ACCELERATE)
    _choice("wandb_mode", cfg.tracking.wandb_mode, WANDB_MODES)
    if cfg.train.recipe is not None:
        _choice("recipe", cfg.train.recipe, RECIPES)
    cfg.tracking.report_to = trackers(cfg.tracking.report_to)
    for ok, message in _value_checks(cfg):
        if not ok:
            raise ConfigError(message)
    return cfg


def _value_checks(cfg: Config) -> list[tuple[object, str]]:
    """Every check of a value (after the choices), with its message, in order."""
    data, noise, model, optim, train = cfg.data, cfg.noise, cfg.model, cfg.optim, cfg.train
    dataset = DATASETS[data.dataset]
    return [
        (data.val_size is None or data.val_size >= 1, "val_size must be at least 1"),
        (data.patch_size >= 8, f"patch_size must be >= 8, got {data.patch_size}"),
        (
            not dataset.needs_data_dir or data.data_dir,
            f"dataset {data.dataset} needs --data-dir (the image folder)",
        ),
        (
            not dataset.crops or MODELS[model.model].fully_convolutional,
            f"{model.model} takes 28x28 images only, so it cannot train on crops of a folder; "
            f"use {' or '.join(name for name, s in MODELS.items() if s.fully_convolutional)}",
        ),
        (noise.sigma >= 0, f"sigma must be >= 0, got {noise.sigma}"),
        (0 <= noise.sigma_min <= noise.sigma_max, "need 0 <= sigma_min <= sigma_max"),
        (0 <= noise.salt_pepper <= 1, "salt_pepper must be in [0, 1]"),
        (noise.photons > 0, "photons must be > 0"),
        (all(s >= 0 for s in noise.eval_sigmas), "eval_sigmas must be >= 0"),
        (model.width >= 1, "width must be >= 1"),
        (1 <= model.depth <= 6, "depth must be in 1..6"),
        (3 <= model.layers <= 64, "layers must be in 3..64"),
        (0 <= model.dropout < 1, "dropout must be in [0, 1)"),
        (optim.lr > 0, f"lr must be > 0, got {optim.lr}"),
        (optim.weight_decay >= 0, "weight_decay must be >= 0"),
        (optim.warmup_steps >= 0, "warmup_steps must be >= 0"),
        (optim.grad_clip >= 0, "grad_clip must be >= 0"),
        (optim.grad_accum >= 1, "grad_accum must be >= 1"),
        (0 <= optim.ema_decay < 1, f"ema_decay must be in [0, 1), got {optim.ema_decay}"),
        (train.batch_size >= 1, f"batch_size must be >= 1, got {train.batch_size}"),
        (train.max_steps is None or train.max_steps >= 1, "max_steps must be >= 1"),
        (train.epochs > 0, "epochs must be > 0"),
        (train.eval_every >= 1, "eval_every must be >= 1"),
        (train.log_every >= 1, "log_every must be >= 1"),
        (train.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
        (train.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        (train.dist_timeout >= 1, "dist_timeout must be >= 1"),
        (train.output_dir != "", "output_dir must not be empty"),
        (
            not train.cuda_graph or not dataset.crops,
            "--cuda-graph supports MNIST-style datasets only, not folders (their crops are "
            "keyed on the host); drop --cuda-graph",
        ),
        (
            train.batch_size % optim.grad_accum == 0,
            f"batch_size {train.batch_size} must divide by grad_accum {optim.grad_accum}",
        ),
    ]


def from_dict(values: dict) -> Config:
    """Rebuild a config from its saved JSON (as written by Config.to_json)."""
    return validate(overlay(Config(), values, "saved config"))


# --- CLI -------------------------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then the recipe (named by a flag or the YAML file), then the YAML file,
    then the flags."""
    path = getattr(args, "config", None)
    file_values = load_yaml(path) if path else {}
    flags = {k: v for k, v in vars(args).items() if k in FIELDS}
    recipe = flags.get("recipe") or overlay(Config(), file_values, str(path)).train.recipe
    layers = [(file_values, str(path)), (flags, "command line")]
    if recipe is not None:
        _choice("recipe", recipe, RECIPES)
        layers.insert(0, (RECIPES[recipe].values, f"recipe {recipe}"))
    # The model is known only once every layer is applied; its own defaults go under them.
    model = _overlay_all(Config(), layers).model.model
    _choice("model", model, MODELS)
    cfg = overlay(Config(), MODELS[model].defaults, f"model {model}")
    return validate(_overlay_all(cfg, layers))


def _overlay_all(cfg: Config, layers: list[tuple[dict, str]]) -> Config:
    for values, source in layers:
        overlay(cfg, values, source)
    return cfg


def diff(a: Config, b: Config, ignore: frozenset[str] = frozenset()) -> list[str]:
    """Human-readable `name: old -> new` for every differing field not in `ignore`."""
    flat_a = {k: v for s in a.to_dict().values() for k, v in s.items()}
    flat_b = {k: v for s in b.to_dict().values() for k, v in s.items()}
    return [
        f"{k}: {flat_a[k]!r} -> {flat_b[k]!r}"
        for k in flat_a
        if k not in ignore and flat_a[k] != flat_b[k]
    ]
