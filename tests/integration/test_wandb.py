"""Real offline W&B runs through the CLI, read back from W&B's own `run-<id>.wandb` log:
config, scalars, grids, table, model artifact, resume, and runs where W&B fails."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import tiny_args

pytestmark = pytest.mark.integration

SECRET = "denoise-dist-test-key-0123456789abcdefgh"  # 40 characters, like a real key
MIN_PIXEL_STD = 20  # a black or blank grid has std ~0; a real one ~80 (uint8 scale)
GRID_SHAPE = (8 * 28 + 7 * 2, 3 * 28 + 2 * 2)  # 8 rows of noisy | denoised | clean


# --- reading a run-<id>.wandb file ------------------------------------------------------


def wandb_records(path: Path) -> list:
    """The protobuf Records of a .wandb file: a 7-byte header (':W&B', magic, version),
    then a LevelDB-style log of 32 KiB blocks of chunks (crc32, length, type, data);
    a record is one FULL chunk or FIRST, MIDDLE..., LAST."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left for a header: block padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += block - pos % block
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            records.append(Record.FromString(pending))
            pending = b""
    return records


def of_type(records, name: str) -> list:
    return [getattr(r, name) for r in records if r.WhichOneof("record_type") == name]


def config_of(records) -> dict:
    return {
        item.key: json.loads(item.value_json)
        for c in of_type(records, "config")
        for item in c.update
    }


def history_of(records) -> list[tuple[int, dict]]:
    """[(step, {key: value})], nested keys joined with '/' as W&B shows them."""
    rows = []
    for h in of_type(records, "history"):
        row = {
            item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in h.item
        }
        rows.append((h.step.num, row))
    return rows


def steps_with(history, key: str) -> list[int]:
    return [step for step, row in history if key in row]


def offline_logs(run_dir: Path) -> list[Path]:
    """This run's .wandb files, oldest first (one per start: a resume adds one)."""
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


# --- running --------------------------------------------------------------------------


def train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m denoise_dist train ...` with no stdin, so W&B can never prompt for a key;
    W&B's own cache and settings go under the test's folder."""
    return subprocess.run(
        [sys.executable, "-m", "denoise_dist", "train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def wandb_env(tmp_path, monkeypatch) -> dict:
    monkeypatch.delenv("WANDB_DATA_DIR", raising=False)  # the run folder is the default
    return {
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": SECRET,
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
    }


def offline(run_dir: Path, *extra: str) -> list[str]:
    return tiny_args(run_dir, "--report-to", "wandb", "--wandb-mode", "offline", *extra)


def assert_not_blank(png: Path) -> None:
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert pixels.std() > MIN_PIXEL_STD, f"{png} looks blank (std {pixels.std():.1f})"


# --- tests ----------------------------------------------------------------------------


def test_offline_run_holds_config_scalars_grids_table_and_model(mnist_root, tmp_path, wandb_env):
    run = tmp_path / "run"
    result = train(*offline(run, "--eval-sigmas", "0.3"), env=wandb_env)
    assert result.returncode == 0, result.stderr
    [log] = offline_logs(run)
    records = wandb_records(log)
    run_id = json.loads((run / "checkpoints" / "step_00000020" / "train_state.json").read_text())[
        "run_id"
    ]
    assert log.name == f"run-{run_id}.wandb"
    assert f"wandb sync {run / 'wandb'}/offline-run-*-{run_id}" in result.stdout
    [run_record] = of_type(records, "run")
    assert run_record.display_name == f"unet-gaussian-{run_id}"  # not "default"

    config = config_of(records)
    assert config["model"]["model"] == "unet" and config["model"]["width"] == 8
    assert config["train"]["batch_size"] == 32
    assert config["launch"]["world_size"] == 1
    assert config["launch"]["precision"] == "fp32"
    assert config["launch"]["device"] == "cpu"

    history = history_of(records)
    steps = [step for step, _ in history]
    assert steps == sorted(set(steps)) == [5, 10, 15, 20]  # one row per step, increasing
    for key in ["train/loss", "train/lr", "train/grad_norm", "train/images_per_s"]:
        assert steps_with(history, key) == [5, 10, 15, 20], key
    for key in [
        "val/psnr",
        "val/ssim",
        "val/psnr_noisy",
        "val/psnr_sigma_0p3",
        "val/ssim_sigma_0p3",
    ]:
        assert steps_with(history, key) == [10, 20], key
    rows = dict(history)
    assert rows[20]["val/psnr"] > rows[20]["val/psnr_noisy"]
    assert rows[20]["val/psnr"] == json.loads((run / "summary.json").read_text())["val_psnr"]

    # A reconstruction grid at every evaluation, uint8 so it is not black.
    assert steps_with(history, "samples/_type") == [10, 20]
    for step in (10, 20):
        image = {k.split("/", 1)[1]: v for k, v in rows[step].items() if k.startswith("samples/")}
        assert image["_type"] == "image-file"
        assert (image["height"], image["width"]) == GRID_SHAPE
        assert "sigma=0.5" in image["caption"] and f"step {step}" in image["caption"]
        assert "dB" in image["caption"]
        assert_not_blank(log.parent / "files" / image["path"])
        assert_not_blank(run / "figures" / "samples" / f"step_{step:08d}.png")

    # The table: each sample image with its PSNR before and after. Its full form (with
    # the images) is a run_table artifact whose files wait in the run folder.
    assert rows[20]["sample_table/_type"] == "table-file"
    [table_artifact] = [a for a in of_type(records, "artifact") if a.type == "run_table"]
    staged = {c.path: Path(c.local_path) for c in table_artifact.manifest.contents}
    assert all(path.is_relative_to(run / "wandb") for path in staged.values())
    table = json.loads(staged["sample_table.table.json"].read_text())
    assert table["columns"] == [
        "index",
        "noisy",
        "denoised",
        "clean",
        "psnr_noisy",
        "psnr_denoised",
        "psnr_gain",
    ]
    assert [row[0] for row in table["data"]] == list(range(8))
    for _, noisy, denoised, clean, before, after, gain in table["data"]:
        assert gain == pytest.approx(after - before)
        for cell in (noisy, denoised, clean):
            assert cell["_type"] == "image-file" and (cell["height"], cell["width"]) == (28, 28)
        assert_not_blank(staged[noisy["path"]])
        assert_not_blank(staged[clean["path"]])

    # The best model, as a model artifact whose files wait in the run folder.
    [model] = [a for a in of_type(records, "artifact") if a.type == "model"]
    assert model.name == f"model-{run_id}"
    assert set(model.aliases) == {"best", "latest"}
    contents = {c.path: c for c in model.manifest.contents}
    assert set(contents) == {"best_model.safetensors", "best_model.json"}
    for name, entry in contents.items():
        staged = Path(entry.local_path)
        assert staged.is_relative_to(run / "wandb")
        assert staged.read_bytes() == (run / name).read_bytes()
    assert json.loads(model.metadata)["step"] == 20

    [exit_record] = of_type(records, "exit")
    assert exit_record.exit_code == 0

    # The API key never lands in the run folder.
    leaked = [p for p in run.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_a_resumed_run_continues_the_same_wandb_run_without_repeating_steps(
    mnist_root, tmp_path, wandb_env
):
    run = tmp_path / "run"
    first = train(*offline(run), env=wandb_env)
    assert first.returncode == 0, first.stderr
    # As if the job was killed after W&B saw steps 11..20 but before checkpoint 20.
    for path in sorted((run / "checkpoints" / "step_00000020").iterdir()):
        path.unlink()
    (run / "checkpoints" / "step_00000020").rmdir()
    second = train(*offline(run, "--max-steps", "30"), env=wandb_env)
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout and "at step 10" in second.stdout

    logs = offline_logs(run)
    assert len(logs) == 2
    run_ids = {r.run_id for log in logs for r in of_type(wandb_records(log), "run")}
    saved_id = json.loads((run / "checkpoints" / "step_00000030" / "train_state.json").read_text())[
        "run_id"
    ]
    assert run_ids == {saved_id}
    before, after = (history_of(wandb_records(log)) for log in logs)
    assert [s for s, _ in before] == [5, 10, 15, 20]
    assert [s for s, _ in after] == [25, 30]  # 11..20 were replayed but not sent again
    assert steps_with(after, "val/psnr") == [30]
    assert [e.exit_code for log in logs for e in of_type(wandb_records(log), "exit")] == [0, 0]
    # metrics.jsonl holds every step exactly once.
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [5, 10, 15, 20, 25, 30]


def test_report_to_none_writes_no_wandb_folder_but_the_same_pngs(mnist_root, tmp_path, wandb_env):
    run = tmp_path / "run"
    result = train(*tiny_args(run, "--report-to", "none"), env=wandb_env)
    assert result.returncode == 0, result.stderr
    assert not (run / "wandb").exists()
    assert "wandb sync" not in result.stdout
    for png in [
        "samples/step_00000010.png",
        "samples/step_00000020.png",
        "samples.png",
        "curves.png",
    ]:
        assert_not_blank(run / "figures" / png)


def test_a_wandb_init_failure_warns_once_and_training_goes_on(mnist_root, tmp_path, wandb_env):
    run = tmp_path / "run"
    run.mkdir()
    (run / "wandb").write_text("a file where W&B wants its folder")  # wandb.init raises
    result = train(*offline(run), env=wandb_env)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "W&B" in line]
    assert len(warnings) == 1, result.stderr
    assert "W&B init failed" in warnings[0] and "continuing without W&B" in warnings[0]
    assert json.loads((run / "summary.json").read_text())["step"] == 20
    assert [
        r["step"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ] == [5, 10, 15, 20]
    assert_not_blank(run / "figures" / "samples" / "step_00000020.png")


@pytest.fixture
def unresponsive_host():
    """A local W&B 'server' that accepts connections and never answers: an online init
    times out, as it does behind a firewall that drops packets."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_an_online_init_that_times_out_continues_offline(
    mnist_root, tmp_path, wandb_env, unresponsive_host
):
    run = tmp_path / "run"
    env = {**wandb_env, "WANDB_BASE_URL": unresponsive_host, "WANDB_INIT_TIMEOUT": "5"}
    result = train(*tiny_args(run, "--report-to", "wandb", "--wandb-mode", "online"), env=env)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "W&B init failed" in line]
    assert len(warnings) == 1, result.stderr
    assert "online:" in warnings[0] and "logging offline" in warnings[0]
    [log] = offline_logs(run)
    records = wandb_records(log)
    assert steps_with(history_of(records), "train/loss") == [5, 10, 15, 20]
    assert [e.exit_code for e in of_type(records, "exit")] == [0]
    leaked = [p for p in run.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_log_one_wandb_run_from_the_main_process(mnist_root, tmp_path, wandb_env):
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
            "-m",
            "denoise_dist.train",
            *offline(run, "--max-steps", "10"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **wandb_env},
    )
    assert result.returncode == 0, result.stderr
    [log] = offline_logs(run)  # one W&B run, not one per process
    records = wandb_records(log)
    assert config_of(records)["launch"]["world_size"] == 2
    assert steps_with(history_of(records), "train/loss") == [5, 10]
    assert [e.exit_code for e in of_type(records, "exit")] == [0]


def test_a_preempted_run_is_marked_and_the_requeued_job_continues_it(
    mnist_root, tmp_path, wandb_env
):
    run = tmp_path / "run"
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "denoise_dist",
            "train",
            *offline(run, "--max-steps", "100000", "--eval-every", "100000"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **wandb_env},
    )
    try:
        while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
            assert job.poll() is None, job.communicate()[1]
            time.sleep(0.2)
        job.send_signal(signal.SIGTERM)  # what SLURM sends before preempting the job
        out, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 75, err
    [first] = offline_logs(run)
    records = wandb_records(first)
    [exit_record] = of_type(records, "exit")
    assert exit_record.exit_code == 75
    stopped = max(step for step, _ in history_of(records))
    assert (run / "checkpoints" / f"step_{stopped:08d}").is_dir()

    requeued = train(*offline(run, "--max-steps", str(stopped + 10)), env=wandb_env)
    assert requeued.returncode == 0, requeued.stderr
    first, second = offline_logs(run)
    assert {r.run_id for r in of_type(wandb_records(second), "run")} == {
        r.run_id for r in of_type(records, "run")
    }
    assert [s for s, _ in history_of(wandb_records(second))] == [stopped + 5, stopped + 10]


def test_sweep_trials_take_the_agents_run_id_and_a_run_folder_each(mnist_root, tmp_path, wandb_env):
    """What `wandb agent` does for each trial: set WANDB_SWEEP_ID and WANDB_RUN_ID and run
    the sweep's command, here from the same folder with no --output-dir."""
    flags = [f for f in offline(tmp_path / "unused", "--max-steps", "10")]
    at = flags.index("--output-dir")
    del flags[at : at + 2]
    for trial in ("trial0001", "trial0002"):
        env = {**wandb_env, "WANDB_SWEEP_ID": "sweep42", "WANDB_RUN_ID": trial}
        result = subprocess.run(
            [sys.executable, "-m", "denoise_dist", "train", *flags],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        assert result.returncode == 0, result.stderr
        run = tmp_path / "runs" / "sweep-sweep42" / trial
        state = json.loads((run / "checkpoints" / "step_00000010" / "train_state.json").read_text())
        assert state["run_id"] == trial
        [log] = offline_logs(run)
        assert log.name == f"run-{trial}.wandb"
        records = wandb_records(log)
        assert {r.run_id for r in of_type(records, "run")} == {trial}
        [model] = [a for a in of_type(records, "artifact") if a.type == "model"]
        assert model.name == f"model-{trial}"
        # The printed sync command names this trial's folder.
        [line] = [x for x in result.stdout.splitlines() if "wandb sync" in x]
        pattern = line.split("wandb sync ", 1)[1]  # relative to where the agent runs
        assert list(tmp_path.glob(pattern)) == [log.parent]
