"""Model files that are not valid ones end `denoise`, `evaluate` and `load_model` with one
line naming the file and what is wrong, before any weight is allocated."""

import json

import pytest
import torch
from safetensors.torch import save_file

from denoise_dist import load_model
from denoise_dist.cli import main as cli_main
from denoise_dist.errors import UserError
from denoise_dist.export import META_KEY, save_model
from denoise_dist.models import build_model
from tests.helpers import run_cli

GOOD = {"model": "unet", "model_kwargs": {"width": 4, "depth": 2}}


def weights() -> dict[str, torch.Tensor]:
    return dict(build_model("unet", width=4, depth=2).state_dict())


def without_first(tensors: dict) -> dict:
    return dict(list(tensors.items())[1:])


def with_first_reshaped(tensors: dict) -> dict:
    name = next(iter(tensors))
    return {**tensors, name: torch.zeros(5, 1, 3, 3)}


# (file name, metadata text, tensors, what the message must say)
BAD_FILES = [
    ("not_json", "{model: unet", weights, "its metadata is not JSON"),
    ("unknown_model", json.dumps({**GOOD, "model": "vit"}), weights, "names model 'vit'"),
    (
        "unexpected_argument",
        json.dumps({**GOOD, "model_kwargs": {"width": 4, "depth": 2, "heads": 8}}),
        weights,
        "unet takes width, depth, not heads",
    ),
    (
        "huge_width",
        json.dumps({**GOOD, "model_kwargs": {"width": 200_000, "depth": 2}}),
        weights,
        "do not fit unet(width=200000, depth=2) with 27,520,010,200,001 parameters",
    ),
    (
        "depth_out_of_range",
        json.dumps({**GOOD, "model_kwargs": {"width": 4, "depth": 99}}),
        weights,
        "depth must be in 1..6",
    ),
    ("missing_tensor", json.dumps(GOOD), lambda: without_first(weights()), "missing"),
    ("wrong_shape", json.dumps(GOOD), lambda: with_first_reshaped(weights()), "[5, 1, 3, 3], not"),
    ("no_kwargs", json.dumps({"model": "unet"}), weights, "no model_kwargs mapping"),
    ("config_not_a_mapping", json.dumps({**GOOD, "config": [1]}), weights, "config is not a"),
]


def write_bad_file(folder, name, meta_text, tensors):
    path = folder / f"{name}.safetensors"
    save_file(tensors(), str(path), metadata={META_KEY: meta_text})
    return path


@pytest.mark.parametrize("name, meta_text, tensors, message", BAD_FILES)
@pytest.mark.parametrize("command", ["denoise", "evaluate", "load_model"])
def test_a_bad_model_file_is_one_line_naming_it(
    tmp_path, capsys, fresh_accelerate, command, name, meta_text, tensors, message
):
    path = write_bad_file(tmp_path, name, meta_text, tensors)
    if command == "load_model":
        with pytest.raises(UserError) as raised:
            load_model(path)
        error = str(raised.value)
    else:
        extra = ["x.png", "--out", str(tmp_path / "out")] if command == "denoise" else []
        assert cli_main([command, str(path), *extra, "--cpu"]) == 1
        error = capsys.readouterr().err
        assert len(error.strip().splitlines()) == 1, error
        assert error.startswith(f"denoise-dist: error: {path} is not a valid model file: ")
    assert str(path) in error and message in error, error
    assert "internal error" not in error and "Traceback" not in error


def test_evaluate_names_a_model_file_whose_saved_config_is_not_valid(tmp_path, capsys):
    meta = json.dumps({**GOOD, "config": {"train": {"batch_size": -1}}})
    path = write_bad_file(tmp_path, "bad_config", meta, weights)
    assert cli_main(["evaluate", str(path), "--cpu"]) == 1
    error = capsys.readouterr().err
    assert error == (
        f"denoise-dist: error: {path} is not a valid model file: its config: "
        "batch_size must be >= 1, got -1\n"
    )


def test_through_the_real_process(tmp_path):
    path = write_bad_file(tmp_path, *BAD_FILES[3][:3])
    for command in (
        ["denoise", str(path), "x.png", "--out", str(tmp_path)],
        ["evaluate", str(path)],
    ):
        result = run_cli(*command)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and "do not fit unet(width=200000" in result.stderr


def test_a_valid_file_still_loads(tmp_path):
    model = build_model("unet", width=4, depth=2).eval()
    save_model(model, tmp_path / "m.safetensors", GOOD)
    x = torch.rand(1, 1, 28, 28)
    assert torch.equal(load_model(tmp_path / "m.safetensors")(x), model(x))
