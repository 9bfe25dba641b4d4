"""Export a trained model as one self-describing safetensors file, and load it back.

The file's metadata holds the model name and constructor arguments, so loading needs
nothing but the file: no pickle, no accelerate, no training config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from denoise_dist.atomic import atomic_write, atomic_write_text
from denoise_dist.errors import UserError
from denoise_dist.models import MODELS, build_model

BEST_MODEL = "best_model.safetensors"
META_KEY = "denoise_dist"


def save_model(model: nn.Module, path: Path, meta: dict) -> None:
    """Write weights + metadata atomically; a readable copy of the metadata goes beside it."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {META_KEY: json.dumps(meta, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=header))
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True))


def resolve_model_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / BEST_MODEL
    if not path.is_file():
        raise UserError(f"no model at {path} (expected a run folder or a .safetensors file)")
    return path


def read_meta(path: str | Path) -> dict:
    """The file's metadata, checked against its tensors before anything is allocated."""
    from safetensors import safe_open

    path = resolve_model_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            shapes = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise UserError(f"{path} is not a readable safetensors file: {e}") from None
    if META_KEY not in header:
        raise UserError(f"{path} was not written by denoise-dist (no model metadata)")
    try:
        return checked_meta(header[META_KEY], shapes)
    except UserError as e:
        raise UserError(f"{path} is not a valid model file: {e}") from None


def checked_meta(text: str, shapes: dict[str, list[int]]) -> dict:
    """Check the metadata with the config's own validation, then build the model on the
    meta device (shapes only, no memory) and compare its tensors with the file's: the file
    then bounds what loading allocates, whatever width its metadata names."""
    from denoise_dist.config import Config, overlay, validate

    try:
        meta = json.loads(text)
    except ValueError as e:
        raise UserError(f"its metadata is not JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model_kwargs"), dict):
        raise UserError("its metadata has no model_kwargs mapping")
    if not isinstance(meta.get("config", {}), dict):  # evaluate reads it; loading does not
        raise UserError("its metadata's config is not a mapping")
    name, kwargs = meta.get("model"), meta["model_kwargs"]
    if not isinstance(name, str) or name not in MODELS:
        raise UserError(f"it names model {name!r}, not one of {', '.join(MODELS)}")
    if set(kwargs) - set(MODELS[name].fields):
        unexpected = ", ".join(sorted(set(kwargs) - set(MODELS[name].fields)))
        raise UserError(f"{name} takes {', '.join(MODELS[name].fields)}, not {unexpected}")
    validate(overlay(Config(), {"model": name, **kwargs}, "model_kwargs"))
    with torch.device("meta"):
        expected = {k: list(v.shape) for k, v in build_model(name, **kwargs).state_dict().items()}
    problems = [f"{k} missing" for k in expected if k not in shapes]
    problems += [f"unexpected {k}" for k in shapes if k not in expected]
    problems += [
        f"{k} is {shapes[k]}, not {v}" for k, v in expected.items() if shapes.get(k, v) != v
    ]
    if problems:
        count = sum(math.prod(v) for v in expected.values())
        model = f"{name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
        raise UserError(
            f"its tensors do not fit {model} with {count:,} parameters: "
            f"{'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}"
        )
    return meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load an exported model (a run folder or its .safetensors file) in eval mode.

    The result maps a float tensor [N, 1, H, W] in [0, 1] to its denoised version."""
    from safetensors.torch import load_file

    path = resolve_model_path(path)
    meta = read_meta(path)
    model = build_model(meta["model"], **meta["model_kwargs"])
    model.load_state_dict(load_file(str(path), device="cpu"))
    return model.to(device).eval()
