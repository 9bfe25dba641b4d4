"""Every accelerate_configs/*.yaml goes through Accelerate's own config loader and launch
checks (the code `accelerate launch --config_file` runs), and says what its name says."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

CONFIG_DIR = Path(__file__).resolve().parents[2] / "accelerate_configs"
EXPECTED = {
    "cpu",
    "cpu_ddp",
    "single_gpu",
    "single_gpu_bf16",
    "multi_gpu",
    "multi_gpu_fp16",
    "multi_gpu_bf16",
    "multi_node",
}
GPU_ONLY = sorted(EXPECTED - {"cpu", "cpu_ddp"})


def load(name: str) -> ClusterConfig:
    return load_config_from_file(str(CONFIG_DIR / f"{name}.yaml"))


def launch_args(name: str, *flags: str):
    """What `accelerate launch --config_file <name> [flags] train.py` resolves to."""
    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIG_DIR / f"{name}.yaml"), *flags, "train.py"]
    )
    return _validate_launch_command(args)[0]


def test_the_expected_files_and_nothing_else():
    assert {p.stem for p in CONFIG_DIR.glob("*.yaml")} == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loads_and_starts_with_a_comment_on_when_to_use_it(name):
    config = load(name)
    assert isinstance(config, ClusterConfig)
    first_line = (CONFIG_DIR / f"{name}.yaml").read_text().splitlines()[0]
    assert first_line.startswith("# ") and len(first_line) > 20
    expected_precision = next((p for p in ("fp16", "bf16") if name.endswith(p)), "no")
    assert config.mixed_precision == expected_precision


def test_cpu_is_one_process_on_the_cpu():
    config = load("cpu")
    assert config.distributed_type == DistributedType.NO
    assert config.use_cpu and config.num_processes == 1
    assert not launch_args("cpu").multi_gpu


def test_cpu_ddp_really_goes_through_the_multi_process_launcher():
    # distributed_type MULTI_CPU would take accelerate's single-process path (no mpirun).
    args = launch_args("cpu_ddp")
    assert args.multi_gpu and args.num_processes == 2 and args.num_machines == 1
    assert args.main_process_port == 0  # a free port: parallel jobs must not collide


@pytest.mark.parametrize("name", GPU_ONLY)
def test_gpu_configs_never_fall_back_to_the_cpu(name):
    assert load(name).use_cpu is False


@pytest.mark.parametrize("name", ["single_gpu", "single_gpu_bf16"])
def test_single_gpu_is_one_process_on_gpu_0(name):
    config = load(name)
    assert config.distributed_type == DistributedType.NO
    assert config.num_processes == 1 and config.gpu_ids == "0"
    assert not launch_args(name).multi_gpu


@pytest.mark.parametrize("name", ["multi_gpu", "multi_gpu_fp16", "multi_gpu_bf16"])
def test_multi_gpu_is_ddp_over_all_gpus_of_one_node(name):
    config = load(name)
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert config.num_machines == 1 and config.gpu_ids == "all"
    # The GPU count is the node's: accelerate refuses to guess it ...
    with pytest.raises(ValueError, match="num_processes"):
        launch_args(name)
    # ... and takes it from the command line.
    args = launch_args(name, "--num_processes", "4")
    assert args.multi_gpu and args.num_processes == 4
    assert args.mixed_precision == config.mixed_precision


def test_multi_node_is_a_template_for_the_per_node_launch():
    config = load("multi_node")
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert config.num_machines >= 2 and config.rdzv_backend == "static"
    assert config.main_process_ip and config.main_process_port
    args = launch_args(
        "multi_node",
        "--num_processes",
        "8",
        "--num_machines",
        "4",
        "--machine_rank",
        "3",
        "--main_process_ip",
        "10.0.0.1",
        "--main_process_port",
        "12345",
    )
    assert args.multi_gpu  # the per-node flags override the template's values
    assert (args.num_machines, args.machine_rank, args.main_process_ip, args.main_process_port) == (
        4,
        3,
        "10.0.0.1",
        12345,
    )


@pytest.mark.parametrize("name", ["multi_gpu", "multi_gpu_bf16", "multi_gpu_fp16"])
def test_one_node_configs_let_accelerate_pick_a_free_port(name):
    """Two jobs on one host must not both take the default port 29500."""
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_args(name, "--num_processes", "2")
    assert args.main_process_port == 0
    prepare_multi_gpu_env(args)  # what the launcher runs before torchrun
    assert args.main_process_port not in (0, 29500) and args.master_port == str(
        args.main_process_port
    )
