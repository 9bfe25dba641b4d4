"""Typed run configuration: dataclass defaults, overlaid by a YAML file, then by CLI flags.

Each pipeline stage owns a small dataclass. Field names are unique across sections, so
every field is also a flat CLI flag (`batch_size` -> `--batch-size`) and a flat YAML key.
A YAML file may use either flat keys or the section form (`optim: {lr: 0.001}`).
The choices of dataset, noise, model and tracker come from those stages' tables.
All checks live in `validate`; any problem raises `ConfigError` with a one-line message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from denoise_dist.data import DATASETS
from denoise_dist.errors import ConfigError
from denoise_dist.models import MODELS
from denoise_dist.noise import NOISES
from denoise_dist.recipes import RECIPES
from denoise_dist.trackers import SINKS

SCHEDULES = ("constant", "cosine")
LOSS_NAMES = ("mse", "psnr")  # step.LOSSES
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
REPORT_TO = ("none", "all", *SINKS)
WANDB_MODES = ("auto", "online", "offline", "disabled")
# Spellings that earlier versions and YAML's booleans produce, and what they mean now.
ALIASES = {"mixed_precision": {"no": "auto", False: "auto"}}
# A compiled step saves ~4 ms per batch-128 step on an H100 and compiling costs ~10 s.
COMPILE_AUTO_MIN_STEPS = 3000


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
    schedule: str = doc("Learning-rate schedule: constant or cosine.", default="constant")
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


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def _field_index() -> dict[str, tuple[str, dataclasses.Field, Any]]:
    """Flat field name -> (section, field, resolved type)."""
    index = {}
    for section, cls in _section_classes().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.name not in index, f"field name {f.name} is not unique"
            index[f.name] = (section, f, hints[f.name])
    return index


FIELDS = _field_index()


def _strip_optional(tp) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(name: str, value: Any, tp) -> Any:
    """Check a YAML/CLI value against the field type; ints are accepted for floats."""
    base, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be empty")
    if typing.get_origin(base) is tuple:
        item_type = typing.get_args(base)[0]
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(_coerce(name, v, item_type) for v in items)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name} must be a string, got {value!r}")
    raise AssertionError(f"unsupported field type {tp}")


def overlay(cfg: Config, values: dict, source: str) -> Config:
    """Apply flat or sectioned overrides; unknown keys are errors."""
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if FIELDS.get(sub_key, (None,))[0] != key:
                    raise ConfigError(f"unknown key {key}.{sub_key} in {source}")
                overlay(cfg, {sub_key: sub_value}, source)
            continue
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"unknown key {key!r} in {source}")
        section, _, tp = FIELDS[name]
        aliases = ALIASES.get(name, {})
        if isinstance(value, str | bool) and value in aliases:
            value = aliases[value]
        setattr(getattr(cfg, section), name, _coerce(name, value, tp))
    return cfg


def load_yaml(path: str) -> dict:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return values


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
    d, n, m, o, t, k = cfg.data, cfg.noise, cfg.model, cfg.optim, cfg.train, cfg.tracking
    _choice("dataset", d.dataset, DATASETS)
    _choice("noise", n.noise, NOISES)
    _choice("model", m.model, MODELS)
    _choice("schedule", o.schedule, SCHEDULES)
    _choice("loss", o.loss, LOSS_NAMES)
    _choice("mixed_precision", t.mixed_precision, PRECISIONS)
    _choice("wandb_mode", k.wandb_mode, WANDB_MODES)
    if t.recipe is not None:
        _choice("recipe", t.recipe, RECIPES)
    k.report_to = trackers(k.report_to)
    checks = [
        (d.val_size is None or d.val_size >= 1, "val_size must be at least 1"),
        (d.patch_size >= 8, f"patch_size must be >= 8, got {d.patch_size}"),
        (
            not DATASETS[d.dataset].needs_data_dir or d.data_dir,
            f"dataset {d.dataset} needs --data-dir (the image folder)",
        ),
        (
            not DATASETS[d.dataset].crops or MODELS[m.model].fully_convolutional,
            f"{m.model} takes 28x28 images only, so it cannot train on crops of a folder; "
            f"use {' or '.join(n for n, s in MODELS.items() if s.fully_convolutional)}",
        ),
        (n.sigma >= 0, f"sigma must be >= 0, got {n.sigma}"),
        (0 <= n.sigma_min <= n.sigma_max, "need 0 <= sigma_min <= sigma_max"),
        (0 <= n.salt_pepper <= 1, "salt_pepper must be in [0, 1]"),
        (n.photons > 0, "photons must be > 0"),
        (all(s >= 0 for s in n.eval_sigmas), "eval_sigmas must be >= 0"),
        (m.width >= 1, "width must be >= 1"),
        (1 <= m.depth <= 6, "depth must be in 1..6"),
        (3 <= m.layers <= 64, "layers must be in 3..64"),
        (0 <= m.dropout < 1, "dropout must be in [0, 1)"),
        (o.lr > 0, f"lr must be > 0, got {o.lr}"),
        (o.weight_decay >= 0, "weight_decay must be >= 0"),
        (o.warmup_steps >= 0, "warmup_steps must be >= 0"),
        (o.grad_clip >= 0, "grad_clip must be >= 0"),
        (o.grad_accum >= 1, "grad_accum must be >= 1"),
        (0 <= o.ema_decay < 1, f"ema_decay must be in [0, 1), got {o.ema_decay}"),
        (t.batch_size >= 1, f"batch_size must be >= 1, got {t.batch_size}"),
        (t.max_steps is None or t.max_steps >= 1, "max_steps must be >= 1"),
        (t.epochs > 0, "epochs must be > 0"),
        (t.eval_every >= 1, "eval_every must be >= 1"),
        (t.log_every >= 1, "log_every must be >= 1"),
        (t.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
        (t.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        (t.dist_timeout >= 1, "dist_timeout must be >= 1"),
        (t.output_dir != "", "output_dir must not be empty"),
        (
            not t.cuda_graph or not DATASETS[d.dataset].crops,
            "--cuda-graph supports MNIST-style datasets only, not folders (their crops are "
            "keyed on the host); drop --cuda-graph",
        ),
        (
            t.batch_size % o.grad_accum == 0,
            f"batch_size {t.batch_size} must divide by grad_accum {o.grad_accum}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return cfg


def from_dict(values: dict) -> Config:
    """Rebuild a config from its saved JSON (as written by Config.to_json)."""
    return validate(overlay(Config(), values, "saved config"))


# --- CLI -------------------------------------------------------------------------------


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field; defaults are suppressed so only explicit flags overlay."""
    parser.add_argument("--config", metavar="YAML", help="YAML file overlaid on the defaults.")
    for section, cls in _section_classes().items():
        group = parser.add_argument_group(section)
        for f in dataclasses.fields(cls):
            _, _, tp = FIELDS[f.name]
            base, _ = _strip_optional(tp)
            flag = "--" + f.name.replace("_", "-")
            help_text = f"{f.metadata['help']} (default: {f.default})"
            kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
            if base is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            elif typing.get_origin(base) is tuple:
                item_type = typing.get_args(base)[0]
                group.add_argument(flag, type=item_type, nargs="*", **kwargs)
            else:
                group.add_argument(flag, type=base, **kwargs)


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
