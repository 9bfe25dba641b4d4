"""The slurm/ templates on a real SLURM cluster (../shared/tools/slurm-local, 2 nodes on
this machine): submitted with sbatch as a user would, stopped with real Slurm signals,
requeued by Slurm or by the script itself, and resumed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, require, tiny_args

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

SLURM_TOOLS = REPO.parent / "shared" / "tools" / "slurm-local"
SLURM_DIR = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm-local"))
TEMPLATES = ["train_cpu", "train_gpu", "train_multinode", "sweep_array"]
ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}
STEPS = 200  # long enough to be signalled mid-training (the first log line is step 5)
# The rig has no GPUs: the GPU templates run one gloo process per node on its CPUs.
NO_GPU = {"DENOISE_DIST_NPROC": "1", "ACCELERATE_USE_CPU": "true"}


# --- the cluster ------------------------------------------------------------------------


def slurm(*cmd: str, check: bool = True) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    return result.stdout


def usable_nodes() -> int:
    result = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=60
    )
    states = [line.split()[1] for line in result.stdout.splitlines() if line.strip()]
    return sum(s in ("idle", "mix", "alloc", "comp") for s in states)  # "idle*": no answer


@pytest.fixture(scope="module")
def cluster():
    """Reuse a running 2-node cluster (.ci/run starts one), else start one for this module."""
    require(shutil.which("sbatch") is not None, "SLURM is not installed (no sbatch)")
    conf = SLURM_DIR / "etc" / "slurm.conf"
    if "SLURM_CONF" not in os.environ and conf.exists():
        os.environ["SLURM_CONF"] = str(conf)
    started = False
    if usable_nodes() < 2:
        start = subprocess.run(
            [str(SLURM_TOOLS / "start.sh")],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "SLURM_LOCAL_NODES": "2"},
        )
        require(
            start.returncode == 0,
            f"slurm-local could not start a 2-node cluster: {(start.stdout + start.stderr)[-600:]}",
        )
        os.environ.setdefault("SLURM_CONF", str(conf))
        started = True
    require(usable_nodes() >= 2, "the SLURM cluster has fewer than 2 usable nodes")
    yield
    if started:
        subprocess.run([str(SLURM_TOOLS / "stop.sh")], capture_output=True, timeout=120)


# --- jobs -------------------------------------------------------------------------------


def job_args(*extra: str) -> list[str]:
    """tiny_args without --output-dir: the templates take it from $DENOISE_DIST_OUTPUT."""
    args = tiny_args(
        Path("unused"),
        "--max-steps",
        str(STEPS),
        "--eval-every",
        "100",
        "--checkpoint-every",
        "100",
        *extra,
    )
    at = args.index("--output-dir")
    return args[:at] + args[at + 2 :]


def submit(
    template: str, run_dir: Path, *args: str, sbatch: tuple = (), env: dict | None = None
) -> str:
    """sbatch a template from the repository root, as docs/slurm.md says; returns the job id."""
    job_env = {
        **os.environ,
        "DENOISE_DIST_PYTHON": sys.executable,
        "DENOISE_DIST_OUTPUT": str(run_dir),
        **(env or {}),
    }
    job_env = {k: v for k, v in job_env.items() if v is not None}
    logs = run_dir.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # The templates ask for a real cluster's resources; ask for what this rig has.
    resources = ["--cpus-per-task=1", "--mem=1G", "--time=10"]
    if template in ("train_gpu", "train_multinode"):
        resources.append("--gpus-per-node=0")
    result = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--output={logs}/%j.out",
            *resources,
            *sbatch,
            f"slurm/{template}.sbatch",
            *args,
        ],
        cwd=REPO,
        env=job_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_records(job: str) -> list[dict]:
    """`scontrol show job` as dicts, one per array task."""
    text = slurm("scontrol", "show", "job", "-o", job)
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines() if line]


def job_log(run_dir: Path, job: str) -> str:
    path = run_dir.parent / "logs" / f"{job}.out"
    return path.read_text() if path.exists() else ""


def wait_until_ended(job: str, run_dir: Path, timeout: float = 300) -> dict:
    """Poll until the job has ended for good; returns its scontrol record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = job_records(job)
        if all(r["JobState"] in ENDED for r in records):
            return records[0]
        time.sleep(1)
    slurm("scancel", job, check=False)
    raise AssertionError(
        f"job {job} did not end within {timeout} s: "
        f"{job_records(job)}\n{job_log(run_dir, job)[-3000:]}"
    )


def wait_until_training(run_dir: Path, job: str, timeout: float = 180) -> None:
    """Wait for the first metrics line: the trainer is past its setup, mid-training."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and metrics.read_text().strip()):
        assert time.monotonic() < deadline, f"no training started:\n{job_log(run_dir, job)}"
        assert job_records(job)[0]["JobState"] not in ENDED, job_log(run_dir, job)
        time.sleep(0.2)


def final_weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_completed(record: dict, run_dir: Path, job: str) -> None:
    assert record["JobState"] == "COMPLETED", job_log(run_dir, job)
    assert (run_dir / "best_model.safetensors").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["step"] == STEPS


# --- uninterrupted reference runs, one per template, shared by the tests ----------------


@pytest.fixture(scope="module")
def cpu_reference(cluster, mnist_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("cpu_reference") / "run"
    # Without WANDB_MODE in its environment the job must default to offline.
    job = submit("train_cpu", run, *job_args(), env={"WANDB_MODE": None})
    return job, run, wait_until_ended(job, run)


@pytest.fixture(scope="module")
def multinode_reference(cluster, mnist_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("multinode_reference") / "run"
    job = submit("train_multinode", run, *job_args(), sbatch=("--nodes=2",), env=NO_GPU)
    return job, run, wait_until_ended(job, run)


# --- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_is_ready_to_requeue_and_never_downloads(template):
    text = (REPO / "slurm" / f"{template}.sbatch").read_text()
    for line in [
        "#SBATCH --signal=B:USR1@",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "--no-download",
        '"$@"',
        "start_training",
        "finish_training",
    ]:
        assert line in text, line
    assert "API_KEY" not in text and "WANDB_API" not in text
    assert subprocess.run(["bash", "-n", f"slurm/{template}.sbatch"], cwd=REPO).returncode == 0


def test_cpu_template_completes_and_leaves_the_run_folder(cpu_reference):
    job, run, record = cpu_reference
    assert_completed(record, run, job)
    assert record["Restarts"] == "0"
    for name in [
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "figures/samples.png",
        f"checkpoints/step_{STEPS:08d}/model.safetensors",
    ]:
        assert (run / name).is_file(), name
    log = job_log(run, job)
    assert f"[denoise-dist job {job} restart 0]" in log and "training finished" in log
    assert "WANDB_MODE=offline" in log
    assert json.loads((run / "summary.json").read_text())["slurm_job_id"] == job


def test_multinode_template_trains_on_both_nodes(multinode_reference):
    job, run, record = multinode_reference
    assert_completed(record, run, job)
    log = job_log(run, job)
    assert "machine rank 0 of 2" in log and "machine rank 1 of 2" in log
    assert "node node1:" in log and "node node2:" in log
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2


def preempt_and_finish(job: str, run) -> tuple[str, int]:
    """Send what `--signal=B:USR1@...` sends; the job must checkpoint, requeue once and
    complete. Returns its log and the step it was preempted at."""
    slurm("scancel", "--signal=USR1", "--batch", job)
    record = wait_until_ended(job, run)
    log = job_log(run, job)
    assert_completed(record, run, job)
    assert record["Restarts"] == "1"
    stopped_at = int(re.search(r"preempted at step (\d+)", log).group(1))
    assert stopped_at < STEPS
    return log, stopped_at


def test_usr1_checkpoints_requeues_and_resumes_exactly(cpu_reference, tmp_path):
    _, reference, _ = cpu_reference
    run = tmp_path / "run"
    # W&B on, in the template's default mode (offline): the restart continues its run.
    job = submit("train_cpu", run, *job_args("--report-to", "wandb"), env={"WANDB_MODE": None})
    wait_until_training(run, job)
    log, stopped_at = preempt_and_finish(job, run)
    assert "SIGUSR1: asking training to checkpoint" in log
    assert "requeueing (restart 1 of at most 3)" in log
    assert f"[denoise-dist job {job} restart 1]" in log  # SLURM_RESTART_COUNT=1
    assert f"resumed from {run}/checkpoints/step_{stopped_at:08d} at step {stopped_at}" in log
    assert_same_weights(run, reference)
    run_id = json.loads(
        (run / "checkpoints" / f"step_{STEPS:08d}" / "train_state.json").read_text()
    )["run_id"]
    starts = sorted(run.glob("wandb/offline-run-*"))  # one per start of the job
    assert len(starts) == 2 and all(p.name.endswith(f"-{run_id}") for p in starts), starts


@pytest.mark.parametrize(
    "template, nodes, per_node", [("train_multinode", 2, 1), ("train_gpu", 1, 2)]
)
def test_usr1_reaches_the_workers_under_accelerate_launch(
    multinode_reference, tmp_path, template, nodes, per_node
):
    """multinode: batch shell -> srun -> each node's accelerate launch -> its workers.
    gpu: batch shell -> the workers below accelerate launch (in sessions of their own).
    Both are 2 gloo processes, so both must end with the 2-node reference's weights."""
    _, reference, _ = multinode_reference
    run = tmp_path / "run"
    job = submit(
        template,
        run,
        *job_args(),
        sbatch=(f"--nodes={nodes}",),
        env={**NO_GPU, "DENOISE_DIST_NPROC": str(per_node)},
    )
    wait_until_training(run, job)
    log, stopped_at = preempt_and_finish(job, run)
    assert f"[denoise-dist job {job} restart 1]" in log
    assert f"at step {stopped_at}" in log.split("resumed from")[1].splitlines()[0]
    assert_same_weights(run, reference)


def test_scontrol_requeue_restarts_without_a_second_requeue(cpu_reference, tmp_path):
    """Submitted with --overwrite, as a user may put it in a job script: the requeued
    start must resume the job's own progress, never delete it."""
    _, reference, _ = cpu_reference
    run = tmp_path / "run"
    job = submit("train_cpu", run, *job_args("--overwrite"))
    wait_until_training(run, job)
    slurm("scontrol", "requeue", job)  # Slurm sends SIGTERM and requeues by itself
    record = wait_until_ended(job, run)
    log = job_log(run, job)
    assert_completed(record, run, job)
    assert record["Restarts"] == "1"  # the script did not requeue on top of Slurm
    assert "after SIGTERM; not requeueing" in log
    assert f"[denoise-dist job {job} restart 1]" in log and "resumed from" in log
    assert "a restarted job: resuming" in log
    assert_same_weights(run, reference)


@pytest.mark.parametrize("environment, processes", [
    ({"SLURM_GPUS_ON_NODE": "4"}, "4"),  # --gres=gpu:4 sets only this one
    ({"SLURM_GPUS_ON_NODE": "2", "SLURM_GPUS_PER_NODE": "2"}, "2"),
    ({"SLURM_GPUS_PER_NODE": "a100:8"}, "8"),
    ({"SLURM_GPUS_ON_NODE": "0"}, "1"),
    ({}, "1"),
])  # fmt: skip
def test_gpu_templates_start_one_process_per_gpu_however_gpus_were_asked_for(
    environment, processes
):
    for template in ("train_gpu", "train_multinode"):
        assert "$(gpus_on_node)" in (REPO / "slurm" / f"{template}.sbatch").read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_GPUS")}
    result = subprocess.run(
        ["bash", "-c", "source slurm/common.sh && gpus_on_node"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**env, **environment},
    )
    assert result.stdout.strip() == processes, result.stderr


def test_plain_scancel_ends_the_job_for_good(cluster, mnist_root, tmp_path):
    run = tmp_path / "run"
    job = submit("train_cpu", run, *job_args())
    wait_until_training(run, job)
    slurm("scancel", job)
    record = wait_until_ended(job, run)  # CANCELLED only once the batch script has exited
    log = job_log(run, job)
    assert record["JobState"] == "CANCELLED" and record["Restarts"] == "0"
    # The trainer treats SIGTERM like any stop request (checkpoint, exit 75) if it has
    # time before SIGKILL; the script must still not requeue.
    assert "after SIGTERM; not requeueing" in log, log
    assert "requeueing (restart" not in log


def test_array_template_trains_one_model_per_noise_level(cluster, mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    job = submit(
        "sweep_array",
        sweep,
        *job_args("--max-steps", "10", "--eval-every", "10"),
        sbatch=("--array=0-1",),
        env={"DENOISE_DIST_SWEEP_VALUES": "0.3 0.6"},
    )
    wait_until_ended(job, sweep)
    records = job_records(job)
    assert sorted(r["ArrayTaskId"] for r in records) == ["0", "1"]
    assert all(r["JobState"] == "COMPLETED" for r in records), records
    for sigma in (0.3, 0.6):
        run = sweep / f"sigma_{sigma}"
        assert json.loads((run / "config.json").read_text())["noise"]["sigma"] == sigma
        assert (run / "best_model.safetensors").is_file()


# --- rendezvous and CPU binding of the multi-node launch --------------------------------


def ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


@pytest.mark.parametrize("job_id", [1, 12767, 12768, 19999, 20000, 40960, 123456789])
def test_the_multinode_rendezvous_port_is_below_the_ephemeral_range(job_id):
    """An outgoing connection on a node may hold any port of the ephemeral range."""
    assert "MAIN_PORT=$(rendezvous_port)" in (REPO / "slurm" / "train_multinode.sbatch").read_text()
    result = subprocess.run(
        ["bash", "-c", f"source slurm/common.sh && rendezvous_port {job_id}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    port = int(result.stdout)
    assert 1024 <= port < ephemeral_ports()[0]


AFFINITY_DIR = Path("/tmp/slurm-local-affinity")


@pytest.fixture(scope="module")
def affinity_cluster():
    """A second one-node cluster beside the first, whose tasks are bound to their CPUs
    (task/affinity, as on most real clusters): what a task may use is what it was given."""
    require(shutil.which("sbatch") is not None, "SLURM is not installed (no sbatch)")
    env = {
        **os.environ,
        "SLURM_LOCAL_DIR": str(AFFINITY_DIR),
        "SLURM_LOCAL_TASK_PLUGIN": "task/affinity",
        "SLURM_LOCAL_CTLD_PORT": "6837",
        "SLURM_LOCAL_SLURMD_PORT": "6838",
        "SLURM_LOCAL_LINK_ETC": "0",
        "SLURM_LOCAL_CPUS": "2",
    }
    start = subprocess.run(
        [str(SLURM_TOOLS / "start.sh")], capture_output=True, text=True, timeout=300, env=env
    )
    require(start.returncode == 0, f"slurm-local (task/affinity): {start.stdout[-600:]}")
    yield {"SLURM_CONF": str(AFFINITY_DIR / "etc" / "slurm.conf")}
    subprocess.run([str(SLURM_TOOLS / "stop.sh")], capture_output=True, timeout=120, env=env)


def test_multinode_launch_gets_the_jobs_cpus_and_its_own_accelerate_config(
    affinity_cluster, tmp_path
):
    """The template's srun step, with a stand-in for python that prints what the
    launcher would get: the CPUs it may run on, and its command line."""
    fake_python = tmp_path / "python"
    fake_python.write_text(
        '#!/bin/bash\necho "usable_cpus=$(nproc) job_cpus=$SLURM_CPUS_PER_TASK launch: $*"\n'
    )
    fake_python.chmod(0o755)
    log = tmp_path / "job.out"
    env = {**os.environ, **affinity_cluster, "DENOISE_DIST_PYTHON": str(fake_python)}
    env["DENOISE_DIST_OUTPUT"] = str(tmp_path / "run")
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--wait",
            f"--output={log}",
            "--nodes=1",
            "--cpus-per-task=2",
            "--gpus-per-node=0",
            "--mem=100M",
            "--time=2",
            "slurm/train_multinode.sbatch",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = log.read_text() if log.exists() else ""
    assert job.returncode == 0, job.stderr + text
    assert "usable_cpus=2 job_cpus=2 " in text, text
    config = REPO / "accelerate_configs" / "multi_node.yaml"
    assert f"accelerate.commands.launch --config_file {config} " in text, text
    port = int(re.search(r"--main_process_port (\d+)", text).group(1))
    assert port < ephemeral_ports()[0]
