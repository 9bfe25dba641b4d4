import json

import pytest

from denoise_dist.cli import build_parser
from denoise_dist.config import (
    Config,
    ConfigError,
    config_from_args,
    diff,
    from_dict,
    overlay,
    validate,
)
from denoise_dist.trackers import SINKS


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_defaults_are_valid_and_every_field_is_a_documented_flag(capsys):
    cfg = validate(Config())
    assert cfg.noise.sigma == 0.5 and cfg.train.mixed_precision == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    for section in cfg.to_dict().values():
        for name in section:
            assert "--" + name.replace("_", "-") in help_text, name


def test_cli_overrides_yaml_overrides_defaults(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("sigma: 0.3\noptim:\n  lr: 0.01\nbatch_size: 64\n")
    cfg = parse("--config", str(yaml_file), "--batch-size", "16")
    assert cfg.noise.sigma == 0.3 and cfg.optim.lr == 0.01 and cfg.train.batch_size == 16


@pytest.mark.parametrize("argv, message", [
    (["--sigma", "-0.1"], "sigma must be >= 0"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--model", "resnet9000"], "model must be one of"),
    (["--noise", "pink"], "noise must be one of"),
    (["--batch-size", "30", "--grad-accum", "4"], "must divide by grad_accum"),
    (["--report-to", "mlflow"], "report_to must be one of"),
    (["--ema-decay", "1"], "ema_decay must be in"),
    (["--mixed-precision", "fp8"], "mixed_precision must be one of"),
    (["--dataset", "folder"], "dataset folder needs --data-dir"),
    (["--dataset", "folder", "--data-dir", "x", "--model", "seed_ae"],
     "seed_ae takes 28x28 images only"),
])  # fmt: skip
def test_invalid_values_are_one_line_errors(argv, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse(*argv)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("sigmaa: 0.3\n", "unknown key 'sigmaa'"),
    ("noise:\n  lr: 0.1\n", "unknown key noise.lr"),
    ("sigma: high\n", "sigma must be a number"),
    ("max_steps: 1.5\n", "max_steps must be an integer"),
    ("cpu: 3\n", "cpu must be true or false"),
    ("sigma: [0.1\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "must hold a mapping"),
])  # fmt: skip
def test_bad_yaml_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse("--config", str(path))


def test_missing_yaml_file():
    with pytest.raises(ConfigError, match="cannot read config file"):
        parse("--config", "/nonexistent/run.yaml")


@pytest.mark.parametrize("text, expected", [
    ("mixed_precision: no\n", "auto"),  # YAML reads `no` as false: the old default
    ("mixed_precision: 'no'\n", "auto"),
    ("mixed_precision: fp32\n", "fp32"),
    ("mixed_precision: bf16\n", "bf16"),
])  # fmt: skip
def test_precision_spellings(tmp_path, text, expected):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert parse("--config", str(path)).train.mixed_precision == expected
    assert parse("--mixed-precision", "no").train.mixed_precision == "auto"


@pytest.mark.parametrize("argv, trackers", [
    ([], ()),
    (["--report-to", "none"], ()),
    (["--report-to", "wandb"], ("wandb",)),
    (["--report-to", "tensorboard", "wandb"], ("tensorboard", "wandb")),
    (["--report-to", "all"], tuple(SINKS)),
])  # fmt: skip
def test_report_to_takes_a_list(argv, trackers):
    assert parse(*argv).tracking.report_to == trackers


def test_report_to_in_yaml_may_be_one_name_or_a_list(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("report_to: tensorboard\n")
    assert parse("--config", str(path)).tracking.report_to == ("tensorboard",)
    path.write_text("report_to: [wandb, tensorboard]\n")
    assert parse("--config", str(path)).tracking.report_to == ("wandb", "tensorboard")


def test_json_round_trip_and_diff():
    cfg = parse("--sigma", "0.25", "--eval-sigmas", "0.1", "0.7", "--report-to", "all")
    again = from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    other = overlay(Config(), {"sigma": 0.3, "max_steps": 7}, "test")
    assert diff(cfg, other, ignore=frozenset({"max_steps", "eval_sigmas", "report_to"})) == [
        "sigma: 0.25 -> 0.3"
    ]


def test_a_config_saved_by_the_previous_version_still_loads():
    saved = Config().to_dict()
    saved["train"]["mixed_precision"] = "no"
    saved["tracking"]["report_to"] = "wandb"
    saved["data"]["val_size"] = 5000
    cfg = from_dict(saved)
    assert cfg.train.mixed_precision == "auto" and cfg.tracking.report_to == ("wandb",)


def test_a_recipe_sets_values_that_yaml_and_flags_still_override(tmp_path):
    from denoise_dist.recipes import RECIPES

    name, recipe = next(iter(RECIPES.items()))
    cfg = parse("--recipe", name)
    flat = {k: v for section in cfg.to_dict().values() for k, v in section.items()}
    assert all(flat[k] == v for k, v in recipe.values.items()) and flat["recipe"] == name
    path = tmp_path / "r.yaml"
    path.write_text(f"recipe: {name}\nlr: 0.0001\n")
    from_file = parse("--config", str(path), "--batch-size", "8")
    assert from_file.train.recipe == name and from_file.optim.lr == 0.0001
    assert from_file.train.batch_size == 8 and from_file.train.max_steps == cfg.train.max_steps
    with pytest.raises(ConfigError, match="recipe must be one of"):
        parse("--recipe", "fast-please")


def test_every_recipe_is_a_valid_config():
    from denoise_dist.recipes import RECIPES

    for name, recipe in RECIPES.items():
        folder = ["--data-dir", "photos/"] if recipe.values.get("dataset") == "folder" else []
        validate(parse("--recipe", name, *folder))


def test_a_models_own_defaults_sit_under_recipes_yaml_and_flags(tmp_path):
    assert parse("--model", "dncnn").model.width == 64  # DnCNN's paper width, not unet's 32
    assert parse().model.width == 32 and parse("--model", "unet").model.width == 32
    assert parse("--model", "dncnn", "--width", "16").model.width == 16
    path = tmp_path / "m.yaml"
    path.write_text("model: dncnn\n")
    assert parse("--config", str(path)).model.width == 64
    path.write_text("model: dncnn\nwidth: 24\n")
    assert parse("--config", str(path)).model.width == 24
    assert parse("--config", str(path), "--model", "unet").model.width == 24
    with pytest.raises(ConfigError, match="model must be one of"):
        parse("--model", "dncn")
