"""--cuda-graph on the CPU: the capture-safe step runs eagerly (no CUDA, no capture),
trains exactly as the default step does, and resumes exactly; multi-process runs refuse
the flag in one line. The graphed path itself is in tests/gpu/test_cuda_graph.py."""

import json
import shutil

import pytest
from safetensors.torch import load_file

from tests.helpers import (
    CONFIGS,
    assert_same_weights,
    final_weights,
    launch,
    loss_curve,
    run_cli,
    startup_line,
    tiny_args,
)

pytestmark = pytest.mark.integration

FLAGS = ["--ema-decay", "0.9", "--schedule", "cosine", "--warmup-steps", "5", "--grad-clip", "0.5"]


def ema_at(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "ema.safetensors"))


def test_the_flag_trains_exactly_like_the_default_step_and_resumes_exactly(mnist_root, tmp_path):
    plain, graph, split = tmp_path / "plain", tmp_path / "graph", tmp_path / "split"
    assert run_cli("train", *tiny_args(plain, *FLAGS)).returncode == 0
    result = run_cli("train", *tiny_args(graph, *FLAGS, "--cuda-graph"))
    assert result.returncode == 0, result.stderr
    assert startup_line(result.stdout).endswith(
        "cuda_graph=no (capture-safe step run eagerly: no CUDA on cpu)"
    )
    summary = json.loads((graph / "summary.json").read_text())
    assert summary["cuda_graph"].startswith("no (capture-safe")
    assert_same_weights(final_weights(plain, 20), final_weights(graph, 20))
    assert_same_weights(ema_at(plain, 20), ema_at(graph, 20))
    assert loss_curve(plain) == loss_curve(graph)
    # The flagged run killed after its step-10 checkpoint, then run again: it resumes.
    shutil.copytree(graph, split)
    shutil.rmtree(split / "checkpoints" / "step_00000020")
    (split / "summary.json").unlink()
    resumed = run_cli("train", *tiny_args(split, *FLAGS, "--cuda-graph"))
    assert resumed.returncode == 0, resumed.stderr
    assert "step_00000010 at step 10" in resumed.stdout
    assert_same_weights(final_weights(graph, 20), final_weights(split, 20))
    assert_same_weights(ema_at(graph, 20), ema_at(split, 20))
    assert loss_curve(graph) == loss_curve(split)


def test_two_processes_refuse_the_flag_in_one_line(mnist_root, tmp_path):
    args = [a for a in tiny_args(tmp_path / "run", "--cuda-graph") if a != "--cpu"]
    result = launch(["--config_file", str(CONFIGS / "cpu_ddp.yaml")], "denoise_dist.train", args)
    assert result.returncode != 0
    # Each rank's one line (the launcher adds its own report of the failed ranks).
    ours = [line for line in result.stderr.splitlines() if line.startswith("denoise-dist:")]
    assert ours and all("--cuda-graph runs on one process only, not 2" in line for line in ours), (
        result.stderr[-3000:]
    )
    assert "ConfigError" not in result.stderr  # no traceback of ours
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
