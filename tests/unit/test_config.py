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


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_defaults_are_valid_and_documented():
    cfg = validate(Config())
    assert cfg.noise.sigma == 0.5 and cfg.data.val_size == 5000
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ["--data-dir", "--dataset", "--output-dir", "--model", "--sigma", "--noise",
                 "--batch-size", "--lr", "--max-steps", "--epochs", "--eval-every",
                 "--checkpoint-every", "--seed", "--resume", "--report-to"]:
        assert flag in help_text


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
])
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
])
def test_bad_yaml_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse("--config", str(path))


def test_missing_yaml_file():
    with pytest.raises(ConfigError, match="cannot read config file"):
        parse("--config", "/nonexistent/run.yaml")


def test_json_round_trip_and_diff():
    cfg = parse("--sigma", "0.25", "--eval-sigmas", "0.1", "0.7")
    again = from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    other = overlay(Config(), {"sigma": 0.3, "max_steps": 7}, "test")
    assert diff(cfg, other, ignore=frozenset({"max_steps", "eval_sigmas"})) == [
        "sigma: 0.25 -> 0.3"]
