"""Device and process checks, without launching anything."""

import pytest
import torch

from denoise_dist import config, runtime
from denoise_dist.errors import ConfigError
from denoise_dist.runtime import COMPILE_AUTO_MIN_STEPS
from tests.helpers import CONFIGS

LAUNCHED = {"LOCAL_RANK": "0", "WORLD_SIZE": "2"}


def test_the_simple_launcher_passes_use_cpu_in_the_environment():
    assert runtime.launcher_wants_cpu({"ACCELERATE_USE_CPU": "True"}, [])
    assert not runtime.launcher_wants_cpu({"ACCELERATE_USE_CPU": "False"}, [])


@pytest.mark.parametrize("config, wants_cpu", [("cpu_ddp", True), ("multi_gpu", False)])
def test_the_multi_process_launchers_config_file_is_read(config, wants_cpu):
    path = str(CONFIGS / f"{config}.yaml")
    for argv in (
        ["accelerate", "launch", "--config_file", path, "-m", "x"],
        ["accelerate", "launch", f"--config-file={path}", "-m", "x"],
    ):
        assert runtime.launcher_wants_cpu(LAUNCHED, argv) is wants_cpu


def test_without_a_launcher_or_a_readable_config_nothing_is_assumed(tmp_path):
    argv = ["accelerate", "launch", "--config_file", str(CONFIGS / "cpu_ddp.yaml")]
    assert not runtime.launcher_wants_cpu({}, argv)  # not a launched worker
    missing = ["accelerate", "launch", "--config_file", str(tmp_path / "gone.yaml")]
    assert not runtime.launcher_wants_cpu(LAUNCHED, missing)


def test_more_processes_than_gpus_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError) as err:
        runtime.check_gpu_count(cpu=False, environ={"LOCAL_WORLD_SIZE": "2"})
    assert str(err.value) == (
        "the launcher started 2 processes on this machine but it has 1 GPU; pass "
        "--num_processes 1 (one per GPU), or --cpu"
    )
    runtime.check_gpu_count(cpu=False, environ={"LOCAL_WORLD_SIZE": "1"})
    runtime.check_gpu_count(cpu=True, environ={"LOCAL_WORLD_SIZE": "2"})


def test_processes_that_did_not_form_a_group_are_refused():
    runtime.check_one_group(2, {"WORLD_SIZE": "2"})
    runtime.check_one_group(1, {})
    with pytest.raises(ConfigError, match="started 2 processes but they did not form one"):
        runtime.check_one_group(1, {"WORLD_SIZE": "2"})


@pytest.mark.parametrize("asked, device, steps, compiled", [
    (None, "cuda", COMPILE_AUTO_MIN_STEPS, True),    # long enough to pay for compiling
    (None, "cuda", COMPILE_AUTO_MIN_STEPS - 1, False),
    (None, "cpu", 10**6, False),                     # measured slower on a CPU
    (True, "cpu", 10, True),                         # --compile wins
    (False, "cuda", 10**6, False),                   # --no-compile wins
])  # fmt: skip
def test_compile_is_on_by_default_only_for_long_cuda_runs(asked, device, steps, compiled):
    assert runtime.compile_wanted(asked, torch.device(device), steps) is compiled


def test_compile_spellings_in_yaml_and_flags():
    from denoise_dist.cli import build_parser

    assert config.overlay(config.Config(), {"compile": True}, "yaml").train.compile is True
    assert config.Config().train.compile is None  # auto
    parser = build_parser()
    for flags, value in ((["--compile"], True), (["--no-compile"], False), ([], None)):
        args = parser.parse_args(["train", *flags])
        assert config.config_from_args(args).train.compile is value
