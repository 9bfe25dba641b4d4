"""Real short trainings on the real MNIST, through the CLI, as a user runs them."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from denoise_dist import load_model
from denoise_dist.cli import main as cli_main
from denoise_dist.models import MODELS
from denoise_dist.noise import NOISES
from denoise_dist.tracking import read_metrics
from tests.helpers import (
    CONFIGS,
    assert_same_weights,
    final_weights,
    launch,
    loss_curve,
    require,
    run_cli,
    startup_line,
    tiny_args,
)
from tests.integration.test_folder import folder_args

pytestmark = pytest.mark.integration


def losses(run):
    return [(r["step"], r["loss"]) for r in read_metrics(run) if "loss" in r]


def test_short_training_beats_the_noisy_input_and_leaves_a_full_run_folder(mnist_root, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", *tiny_args(run, "--max-steps", "40"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_psnr"] > summary["val_psnr_noisy"] + 3
    for name in ["config.json", "metrics.jsonl", "best_model.safetensors", "best_model.json",
                 "figures/samples.png", "figures/curves.png"]:  # fmt: skip
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["model"]["model"] == "unet"
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [5, 10, 15, 20, 25, 30, 35, 40]
    # Where the time went: every phase, and they add up to about the whole run.
    timings = summary["timings_s"]
    assert {"data", "model", "training", "evaluation", "checkpoints"} <= set(timings)
    assert all(seconds >= 0 for seconds in timings.values())
    assert result.stdout.strip().splitlines()[-1].startswith("time: ")
    model = load_model(run)
    assert not model.training
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == x.shape


@pytest.mark.parametrize("model", ["unet", "dncnn"])
def test_resume_is_exact(mnist_root, tmp_path, model):
    full, split = tmp_path / "full", tmp_path / "split"
    assert run_cli("train", *tiny_args(full, "--model", model)).returncode == 0
    first = run_cli("train", *tiny_args(split, "--model", model, "--max-steps", "10"))
    assert first.returncode == 0, first.stderr
    second = run_cli("train", *tiny_args(split, "--model", model))  # --resume auto: default
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout
    assert_same_weights(final_weights(full, 20), final_weights(split, 20))
    assert losses(full) == losses(split)  # same curve, and no step logged twice


def test_ema_is_checkpointed_evaluated_and_exported_and_resume_stays_exact(mnist_root, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    flags = ["--ema-decay", "0.9", "--schedule", "cosine"]
    assert run_cli("train", *tiny_args(full, *flags)).returncode == 0
    # The same run killed after its step-10 checkpoint: copy it, drop what came later.
    shutil.copytree(full, split)
    shutil.rmtree(split / "checkpoints" / "step_00000020")
    (split / "summary.json").unlink()
    resumed = run_cli("train", *tiny_args(split, *flags))
    assert resumed.returncode == 0, resumed.stderr
    assert "step_00000010 at step 10" in resumed.stdout
    ema = load_file(str(full / "checkpoints" / "step_00000020" / "ema.safetensors"))
    assert_same_weights(ema, load_file(str(split / "checkpoints" / "step_00000020" /
                                           "ema.safetensors")))  # fmt: skip
    assert_same_weights(final_weights(full, 20), final_weights(split, 20))
    # What is evaluated and exported is the average, not the live weights.
    live = final_weights(full, 20)
    assert any(not torch.equal(live[k], ema[k]) for k in ema)
    meta = json.loads((full / "best_model.json").read_text())
    assert meta["ema"] is True
    exported = load_file(str(full / "best_model.safetensors"))
    reference = (
        ema
        if meta["step"] == 20
        else load_file(str(full / "checkpoints" / f"step_{meta['step']:08d}" / "ema.safetensors"))
    )
    assert_same_weights(exported, reference)


def test_rerunning_a_finished_run_does_not_train_again(mnist_root, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", *tiny_args(run, "--max-steps", "10")).returncode == 0
    before = (run / "metrics.jsonl").read_text()
    trained_s = json.loads((run / "summary.json").read_text())["train_time_s"]
    again = run_cli("train", *tiny_args(run, "--max-steps", "10"))
    assert again.returncode == 0, again.stderr
    assert "already complete at step 10" in again.stdout
    assert (run / "metrics.jsonl").read_text() == before  # nothing trained or logged twice
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_time_s"] == trained_s > 0  # the training time survives the rerun
    assert "training" not in summary["timings_s"]  # this process trained nothing


def test_a_cosine_run_cannot_change_its_length_but_a_constant_one_extends_exactly(
    mnist_root, tmp_path
):
    cosine = tmp_path / "cosine"
    assert run_cli("train", *tiny_args(cosine, "--schedule", "cosine")).returncode == 0
    longer = run_cli("train", *tiny_args(cosine, "--schedule", "cosine", "--max-steps", "30"))
    assert longer.returncode == 1
    assert "--max-steps now asks for 30" in longer.stderr
    assert len(longer.stderr.strip().splitlines()) == 1
    assert (cosine / "checkpoints" / "step_00000020").is_dir()  # nothing lost
    # A constant schedule: 10 steps extended to 20 is the 20-step run.
    short, straight = tmp_path / "short", tmp_path / "straight"
    assert run_cli("train", *tiny_args(short, "--max-steps", "10")).returncode == 0
    assert run_cli("train", *tiny_args(short)).returncode == 0
    assert run_cli("train", *tiny_args(straight)).returncode == 0
    assert_same_weights(final_weights(short, 20), final_weights(straight, 20))


def test_overwrite_in_a_restarted_job_resumes_instead_of_deleting(mnist_root, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", *tiny_args(run, "--max-steps", "10")).returncode == 0
    # The same command again, as SLURM's requeue of it runs it (restart count 1).
    requeued = run_cli("train", *tiny_args(run, "--overwrite"), env={"SLURM_RESTART_COUNT": "1"})
    assert requeued.returncode == 0, requeued.stderr
    assert "resuming" in requeued.stdout and "resumed from" in requeued.stdout
    assert [s for s, _ in losses(run)] == [5, 10, 15, 20]  # steps 1-10 were kept
    fresh = run_cli("train", *tiny_args(run, "--overwrite", "--max-steps", "5"))
    assert fresh.returncode == 0 and "resumed" not in fresh.stdout  # a first start replaces
    assert [s for s, _ in losses(run)] == [5]


def test_fp32_from_the_command_line_wins_over_the_launchers_bf16(mnist_root, tmp_path):
    result = launch(
        ["--config_file", str(CONFIGS / "cpu.yaml"), "--mixed_precision", "bf16"],
        "denoise_dist.train",
        tiny_args(tmp_path / "run", "--max-steps", "2", "--mixed-precision", "fp32"),
    )
    assert result.returncode == 0, result.stderr
    assert "precision=fp32" in startup_line(result.stdout)


@pytest.mark.parametrize("flags, message", [
    (["--sigma", "-1"], "sigma must be >= 0"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--model", "nope"], "model must be one of"),
])  # fmt: skip
def test_bad_config_is_one_line_and_exit_2(tmp_path, flags, message):
    result = run_cli("train", "--output-dir", str(tmp_path / "r"), *flags)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("train", "--output-dir", str(tmp_path / "r"), "--sigma", "-1", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_missing_data_is_a_clear_error(tmp_path):
    result = run_cli("train", *tiny_args(tmp_path / "r", "--data-dir", str(tmp_path / "none"),
                                         "--no-download"))  # fmt: skip
    assert result.returncode == 2
    assert "put train-images-idx3-ubyte" in result.stderr and "Traceback" not in result.stderr


def test_a_folder_holding_another_run_is_refused(mnist_root, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", *tiny_args(run, "--max-steps", "5")).returncode == 0
    changed = run_cli("train", *tiny_args(run, "--sigma", "0.3"))
    assert changed.returncode != 0
    assert "sigma: 0.5 -> 0.3" in changed.stderr
    never = run_cli("train", *tiny_args(run, "--resume", "never"))
    assert never.returncode == 2 and "already holds a run" in never.stderr
    assert (run / "checkpoints" / "step_00000005").is_dir()  # nothing lost
    replaced = run_cli("train", *tiny_args(run, "--sigma", "0.3", "--max-steps", "5",
                                           "--overwrite"))  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((run / "config.json").read_text())["noise"]["sigma"] == 0.3


def test_python_dash_m_entry_point_and_profile(mnist_root, tmp_path):
    run = tmp_path / "r"
    result = run_cli(*tiny_args(run, "--max-steps", "10", "--profile"), module="denoise_dist.train")
    assert result.returncode == 0, result.stderr
    assert "world_size=1" in result.stdout
    [trace] = (run / "profile").glob("rank0*.pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert any(n.startswith("ProfilerStep#") for n in names)
    assert any("conv" in n for n in names)


def test_every_registered_model_and_noise_trains_evaluates_and_exports(
    mnist_root, tmp_path, fresh_accelerate, capsys
):  # in-process, to keep it quick
    """A new entry in the model or noise table is covered the day it is added."""
    cases = [("unet", noise) for noise in NOISES] + [(m, "gaussian") for m in MODELS if m != "unet"]
    for model, noise in cases:
        run = tmp_path / f"{model}-{noise}"
        flags = tiny_args(run, "--model", model, "--noise", noise, "--max-steps", "2",
                          "--eval-every", "2", "--val-size", "64")  # fmt: skip
        assert cli_main(["train", *flags]) == 0, (model, noise)
        fresh_accelerate()
        evaluate_args = ["evaluate", str(run), "--max-images", "16", "--cpu"]
        assert cli_main([*evaluate_args, "--baselines", "builtin"]) == 0
        fresh_accelerate()
        evaluated = NOISES[noise].eval_as or noise
        report = json.loads((run / f"eval-{noise}" / "eval.json").read_text())
        assert report["noise"] == noise and len(report["results"]) == len(NOISES[evaluated].levels)
        exported = load_model(run)
        assert exported(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    capsys.readouterr()


FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def test_fashion_mnist_by_name_from_gzipped_idx(tmp_path):
    require(FASHION.is_dir(), "Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
    raw = tmp_path / "data" / "FashionMNIST" / "raw"  # torchvision's layout
    raw.mkdir(parents=True)
    for gz in FASHION.glob("*-ubyte.gz"):
        (raw / gz.name).symlink_to(gz)
    run = tmp_path / "run"
    result = run_cli(
        "train",
        *tiny_args(
            run,
            "--dataset",
            "fashion_mnist",
            "--max-steps",
            "30",
            "--data-dir",
            str(tmp_path / "data"),
            "--no-download",
        ),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_psnr"] > summary["val_psnr_noisy"] + 3


def test_the_compiled_step_follows_the_eager_loss_curve_on_the_cpu(mnist_root, tmp_path):
    """--compile against eager, the reference: same batches and noise; inductor's kernels
    round differently (seen after 30 steps: 6e-5 relative on the loss, 0.001 dB)."""
    flags = ["--lr", "1e-3", "--max-steps", "30", "--eval-every", "30", "--checkpoint-every", "30"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert run_cli("train", *tiny_args(eager, *flags)).returncode == 0
    result = run_cli("train", *tiny_args(compiled, *flags, "--compile"), timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads((compiled / "summary.json").read_text())["compiled"] is True
    curves = [[(r["step"], r["loss"]) for r in read_metrics(run) if "loss" in r]
              for run in (eager, compiled)]  # fmt: skip
    assert [s for s, _ in curves[0]] == [s for s, _ in curves[1]] == [5, 10, 15, 20, 25, 30]
    for (_, loss), (_, loss_compiled) in zip(*curves, strict=True):
        assert loss_compiled == pytest.approx(loss, rel=1e-3)
    psnr = [json.loads((r / "summary.json").read_text())["val_psnr"] for r in (eager, compiled)]
    assert psnr[1] == pytest.approx(psnr[0], abs=0.01)


def test_a_resume_on_changed_data_is_refused_unless_allowed_and_then_recorded(
    photo_folder, tmp_path
):
    folder, run = tmp_path / "photos", tmp_path / "run"
    shutil.copytree(photo_folder, folder)
    first = run_cli("train", *folder_args(run, folder, "--max-steps", "10"))
    assert first.returncode == 0, first.stderr
    shutil.copy(next(folder.glob("*.png")), folder / "more" / "added.png")

    refused = run_cli("train", *folder_args(run, folder))
    assert refused.returncode == 1
    errors = [line for line in refused.stderr.splitlines() if not line.startswith("warning")]
    change = f"1 file added under {folder}: more/added.png"
    assert len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"the data changed since {run / 'checkpoints' / 'step_00000010'}: {change}" in errors[0]
    assert "--allow-data-change" in errors[0]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000010"]  # nothing lost

    allowed = run_cli("train", *folder_args(run, folder, "--allow-data-change"))
    assert allowed.returncode == 0, allowed.stderr
    assert f"at step 10 (not an exact resume: data changed: {change})" in allowed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 20 and summary["data_changes"] == [f"at step 10: {change}"]

    # Unchanged since the last checkpoint: resumes without the flag, and the record stays.
    again = run_cli("train", *folder_args(run, folder))
    assert again.returncode == 0, again.stderr
    assert "at step 20\n" in again.stdout and "not an exact resume" not in again.stdout
    assert "already complete at step 20" in again.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data_changes"] == [f"at step 10: {change}"]


# A resume on another number of processes: rounding differs (two half-batch gradients
# summed instead of one batch), and Adam turns rounding in a near-zero gradient into a
# visible step: on weights whose sqrt(v) is below Adam's eps (1e-8), a 1e-7 change in the
# gradient moves the update by a fraction of lr. Seen at lr 1e-3: 3e-8 (1 -> 2 processes)
# and 2.9e-5 (2 -> 1, on 250 of 44k weights from step 17) at most on one weight, 1.2e-5
# relative on the whole weight vector. A resume that loses Adam's state or replays a step
# is 1.5e-2 or more off, relative. So: the loss curve to 1e-5, the weights to 1e-4.
ACROSS = ["--lr", "1e-3", "--val-size", "64"]
WEIGHTS_RTOL = 1e-4


def train_on(processes: int, run_dir, *flags):
    args = tiny_args(run_dir, *ACROSS, *flags)
    if processes == 1:
        return run_cli("train", *args)
    no_cpu = [a for a in args if a != "--cpu"]  # the config says where to run
    return launch(["--config_file", str(CONFIGS / "cpu_ddp.yaml")], "denoise_dist.train", no_cpu)


@pytest.fixture(scope="module")
def straight_run(mnist_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    result = train_on(1, run)
    assert result.returncode == 0, result.stderr
    return run


@pytest.mark.parametrize("first, then", [(1, 2), (2, 1)])
def test_a_run_resumed_on_another_number_of_processes_continues_the_same_run(
    straight_run, tmp_path, first, then
):
    run = tmp_path / "run"
    started = train_on(first, run, "--max-steps", "10")
    assert started.returncode == 0, started.stderr
    resumed = train_on(then, run)
    assert resumed.returncode == 0, resumed.stderr
    assert f"world_size={then} " in startup_line(resumed.stdout)
    assert "resumed from" in resumed.stdout and "at step 10" in resumed.stdout
    curve, expected = loss_curve(run), loss_curve(straight_run)
    assert [s for s, *_ in curve] == [s for s, *_ in expected] == [5, 10, 15, 20]
    for (_, loss, grad), (_, loss_ref, grad_ref) in zip(curve, expected, strict=True):
        assert loss == pytest.approx(loss_ref, rel=1e-5)
        assert grad == pytest.approx(grad_ref, rel=1e-5)
    weights, reference = (
        torch.cat([w.flatten() for _, w in sorted(final_weights(r, 20).items())])
        for r in (run, straight_run)
    )
    assert (weights - reference).norm() <= WEIGHTS_RTOL * reference.norm()
    assert json.loads((run / "summary.json").read_text())["world_size"] == then
