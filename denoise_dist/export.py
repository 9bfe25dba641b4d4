"""Export a trained model as one self-describing safetensors file, and load it back.

The file's metadata holds the model name and constructor arguments, so loading needs
nothing but the file: no pickle, no accelerate, no training config.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from denoise_dist.atomic import atomic_write, atomic_write_text
from denoise_dist.errors import UserError
from denoise_dist.models import build_model

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
    from safetensors import safe_open

    path = resolve_model_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise UserError(f"{path} is not a readable safetensors file: {e}") from None
    if META_KEY not in header:
        raise UserError(f"{path} was not written by denoise-dist (no model metadata)")
    return json.loads(header[META_KEY])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load an exported model (a run folder or its .safetensors file) in eval mode.

    The result maps a float tensor [N, 1, H, W] in [0, 1] to its denoised version."""
    from safetensors.torch import load_file

    path = resolve_model_path(path)
    meta = read_meta(path)
    model = build_model(meta["model"], **meta["model_kwargs"])
    model.load_state_dict(load_file(str(path), device="cpu"))
    return model.to(device).eval()
