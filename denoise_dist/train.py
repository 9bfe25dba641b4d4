"""Train a denoiser: `accelerate launch -m denoise_dist.train [flags]`.

The only module that orchestrates. Data flows config -> data -> noise -> model ->
this loop -> metrics / checkpoints / tracking. Every batch and every noise draw is a pure
function of (seed, epoch, step), so a resumed run, or one on a different number of
processes, trains on exactly the same examples.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.nn.functional as F

from denoise_dist import checkpoint, data, figures
from denoise_dist.atomic import atomic_write_text
from denoise_dist.config import Config, from_dict
from denoise_dist.errors import ConfigError, TrainingDiverged
from denoise_dist.evaluation import denoise_batched, means, quality_sums
from denoise_dist.export import BEST_MODEL, save_model
from denoise_dist.models import build_model, model_kwargs
from denoise_dist.noise import fixed_noisy, train_noise
from denoise_dist.preempt import PREEMPTED_EXIT_CODE, StopRequest
from denoise_dist.rng import seed_from
from denoise_dist.tracking import Tracker, describe_noise, read_metrics, truncate_metrics

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
NUM_SAMPLES = 8  # rows of the noisy | denoised | clean grid


class Preempted(Exception):
    """Raised after the preemption checkpoint is on disk; the CLI exits 75."""

    exit_code = PREEMPTED_EXIT_CODE


# --- small helpers ----------------------------------------------------------------------

def lr_at(step: int, cfg: Config, total: int) -> float:
    o = cfg.optim
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
    decay = 0.5 * (1 + math.cos(math.pi * step / total)) if o.schedule == "cosine" else 1.0
    return o.lr * warm * decay


def total_steps(cfg: Config, steps_per_epoch: int) -> int:
    return cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))


def make_accelerator(cfg: Config):
    from accelerate import Accelerator, InitProcessGroupKwargs

    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout))
    use_wandb = cfg.tracking.report_to == "wandb" and cfg.tracking.wandb_mode != "disabled"
    # The default "no" leaves the launcher's choice (an accelerate config's mixed_precision)
    # in force; fp16/bf16 on the command line override it.
    precision = None if cfg.train.mixed_precision == "no" else cfg.train.mixed_precision
    accelerator = Accelerator(cpu=cfg.train.cpu, mixed_precision=precision,
                              log_with="wandb" if use_wandb else None,
                              kwargs_handlers=[timeout])
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        # e.g. `accelerate launch --multi_gpu` on a machine without GPUs: each process
        # would silently train alone and all of them would write the same run folder.
        raise ConfigError(f"the launcher started {launched} processes but they did not form "
                          f"one process group (world size {accelerator.num_processes}); "
                          f"on a CPU-only machine pass --cpu")
    return accelerator


def precision_in_effect(accelerator) -> str:
    """What autocast really computes in: fp16 asked for on a CPU is silently fp32."""
    with accelerator.autocast():
        x = torch.ones(2, 2, device=accelerator.device)
        dtype = (x @ x).dtype
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def prepare_run_dir(cfg: Config, accelerator) -> Path | None:
    """Check the run folder on every rank (read-only, same answer everywhere); the main
    process alone writes. Returns the checkpoint to resume from, if any."""
    run_dir = Path(cfg.train.output_dir)
    saved_config = run_dir / CONFIG_FILE
    resume_from = None
    if cfg.train.overwrite:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and run_dir.exists():
            shutil.rmtree(run_dir)
    elif cfg.train.resume not in ("auto", "never"):
        resume_from = Path(cfg.train.resume)
        if not (resume_from / checkpoint.STATE_FILE).is_file():
            raise ConfigError(f"--resume {resume_from}: not a checkpoint folder")
        saved = from_dict(checkpoint.read_state(resume_from)["config"])
        checkpoint.check_compatible(saved, cfg, resume_from)
    elif saved_config.exists():
        if cfg.train.resume == "never":
            raise ConfigError(f"{run_dir} already holds a run; use --resume auto to continue "
                              f"it, --overwrite to replace it, or another --output-dir")
        saved = from_dict(json.loads(saved_config.read_text()))
        checkpoint.check_compatible(saved, cfg, run_dir)
        resume_from = checkpoint.latest_valid(run_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (run_dir / "figures").mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved_config, cfg.to_json())
    accelerator.wait_for_everyone()
    return resume_from


def load_data(cfg: Config, accelerator):
    """Train, validation and test images as uint8 tensors, moved to the device once."""
    root = data.resolve_data_root(cfg.data.data_dir)
    with accelerator.main_process_first():  # only one process may download
        train_images = data.load_split(cfg.data.dataset, root, "train", cfg.data.download)
        test_images = data.load_split(cfg.data.dataset, root, "test", cfg.data.download)
    train_images, val_images = data.split_train_val(train_images, cfg.data.val_size)
    device = accelerator.device
    return train_images.to(device), val_images.to(device), test_images.to(device)


class Evaluator:
    """Validation PSNR/SSIM on fixed-noise sets, sharded so each image counts once."""

    def __init__(self, cfg: Config, val_images: torch.Tensor, accelerator):
        self.accelerator = accelerator
        shard = data.eval_shard(len(val_images), accelerator.num_processes,
                                accelerator.process_index)
        clean = data.to_float(val_images)
        self.clean = clean[shard]
        sets = {"": fixed_noisy(clean, cfg.noise, "val")[shard]}
        for sigma in cfg.noise.eval_sigmas:
            gaussian = replace(cfg.noise, noise="gaussian", sigma=sigma)
            sets[f"@{sigma:g}"] = fixed_noisy(clean, gaussian, "val")[shard]
        self.noisy_sets = sets

    def _reduce(self, sums: torch.Tensor) -> tuple[float, float]:
        return means(self.accelerator.reduce(sums, "sum"))

    def noisy_baseline(self) -> dict:
        psnr, ssim = self._reduce(quality_sums(self.noisy_sets[""], self.clean))
        return {"val_psnr_noisy": psnr, "val_ssim_noisy": ssim}

    def __call__(self, model) -> dict:
        out = {}
        for suffix, noisy in self.noisy_sets.items():
            pred = denoise_batched(model, noisy, autocast=self.accelerator.autocast)
            psnr, ssim = self._reduce(quality_sums(pred, self.clean))
            out[f"val_psnr{suffix}"], out[f"val_ssim{suffix}"] = psnr, ssim
        return out


# --- the run ----------------------------------------------------------------------------

def train(cfg: Config) -> dict:
    os.umask(os.umask(0) | 0o002)  # the run folder is never world-writable, whatever the umask
    accelerator = make_accelerator(cfg)
    from rich.console import Console

    console = Console(quiet=not accelerator.is_main_process)
    run_dir = Path(cfg.train.output_dir)
    resume_from = prepare_run_dir(cfg, accelerator)
    train_images, val_images, test_images = load_data(cfg, accelerator)
    world, rank = accelerator.num_processes, accelerator.process_index
    sharding = data.Sharding(len(train_images), cfg.train.batch_size, world, rank,
                             cfg.optim.grad_accum)
    total = total_steps(cfg, sharding.steps_per_epoch)

    torch.manual_seed(cfg.train.seed)  # same init on every rank (DDP also broadcasts it)
    kwargs = model_kwargs(cfg.model.model, cfg.model.width, cfg.model.dropout)
    # NHWC conv weights: about 20% faster on this CPU (oneDNN), and what GPU tensor cores want.
    model = build_model(cfg.model.model, **kwargs).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr,
                                 weight_decay=cfg.optim.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)

    # train_time_s: seconds spent training (no evaluation or checkpointing), across resumes.
    state = {"step": 0, "best_val_psnr": -math.inf, "wandb_run_id": None, "train_time_s": 0.0}
    if resume_from is not None:
        state.update(checkpoint.load_checkpoint(accelerator, resume_from))
        console.print(f"resumed from {resume_from} at step {state['step']}")
    if accelerator.is_main_process:
        truncate_metrics(run_dir, state["step"])

    precision = precision_in_effect(accelerator)
    if accelerator.mixed_precision == "fp16" and precision != "fp16":
        warnings.warn(f"fp16 is not in effect on {accelerator.device.type}; training in "
                      f"{precision}. Use --mixed-precision bf16 on a CPU.")
    launch = {"distributed_type": str(accelerator.distributed_type.value), "world_size": world,
              "device": str(accelerator.device), "precision": precision,
              "global_batch": cfg.train.batch_size, "per_process_batch": sharding.micro_batch,
              **slurm_facts()}
    console.print(  # one line even in an 80-column log, so grep finds it whole
        f"distributed={launch['distributed_type']} world_size={world} device={launch['device']} "
        f"precision={precision} batch={cfg.train.batch_size} global / "
        f"{sharding.micro_batch} per process x {cfg.optim.grad_accum} accumulation",
        soft_wrap=True)
    if sharding.dropped_per_epoch:
        console.print(f"each epoch skips {sharding.dropped_per_epoch} of {len(train_images)} "
                      f"images (a different random set each epoch) to keep batches full")

    tracker = Tracker(accelerator, cfg, run_dir, state["wandb_run_id"], launch)
    state["wandb_run_id"] = tracker.wandb_run_id
    evaluator = Evaluator(cfg, val_images, accelerator)
    baseline = evaluator.noisy_baseline()
    samples = sample_images(cfg, test_images)
    stop = StopRequest().install()

    def save(step: int) -> None:
        state["step"] = step
        checkpoint.save_checkpoint(accelerator, run_dir, step,
                                   {**state, "config": cfg.to_dict()},
                                   cfg.train.keep_checkpoints)

    def evaluate(step: int) -> dict:
        metrics = evaluator(accelerator.unwrap_model(model))
        if accelerator.is_main_process and metrics["val_psnr"] > state["best_val_psnr"]:
            save_model(accelerator.unwrap_model(model), run_dir / BEST_MODEL,
                       {"model": cfg.model.model, "model_kwargs": kwargs, "step": step,
                        "val_psnr": metrics["val_psnr"], "config": cfg.to_dict()})
        state["best_val_psnr"] = max(state["best_val_psnr"], metrics["val_psnr"])
        tracker.log({**metrics, **baseline}, step)
        if accelerator.is_main_process:  # the same fixed test images at every evaluation
            noisy, clean = samples
            tracker.log_samples(noisy, denoise_batched(accelerator.unwrap_model(model), noisy,
                                                       autocast=accelerator.autocast),
                                clean, step)
        console.print(f"step {step}/{total}  val PSNR {metrics['val_psnr']:.2f} dB "
                      f"(noisy {baseline['val_psnr_noisy']:.2f})  "
                      f"SSIM {metrics['val_ssim']:.3f}")
        return metrics

    step, epoch, perm = state["step"], -1, None
    window_losses, window_start, last_metrics = [], time.perf_counter(), {}
    progress = ProgressBar(console, total, step)
    model.train()
    while step < total:
        epoch_now, step_in_epoch = divmod(step, sharding.steps_per_epoch)
        if epoch_now != epoch:
            epoch = epoch_now
            perm = data.epoch_permutation(len(train_images), cfg.train.seed, epoch,
                                          accelerator.device)
        clean = data.to_float(train_images[sharding.global_batch_indices(perm, step_in_epoch)])
        noisy = train_noise(clean, cfg.noise, cfg.train.seed, epoch, step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg, total)
        torch.manual_seed(seed_from("dropout", cfg.train.seed, step, rank))

        step_loss = torch.zeros((), device=accelerator.device)
        for micro in range(cfg.optim.grad_accum):
            part = sharding.rank_slice(micro)
            last = micro == cfg.optim.grad_accum - 1
            with nullcontext() if last else accelerator.no_sync(model):
                loss = F.mse_loss(model(noisy[part]).float(), clean[part])
                accelerator.backward(loss / cfg.optim.grad_accum)
            step_loss += loss.detach() / cfg.optim.grad_accum
        grad_norm = accelerator.clip_grad_norm_(
            model.parameters(), cfg.optim.grad_clip or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_losses.append(torch.stack([step_loss, grad_norm.float()]))

        done = step == total
        if step % cfg.train.log_every == 0 or step % cfg.train.checkpoint_every == 0 or done:
            # One sync per window: global mean loss per step, then look for NaN/Inf.
            losses = accelerator.reduce(torch.stack(window_losses), "mean").tolist()
            check_finite([loss for loss, _ in losses], step, run_dir)
            elapsed = time.perf_counter() - window_start
            state["train_time_s"] += elapsed
            record = {"epoch": epoch, "loss": losses[-1][0], "grad_norm": losses[-1][1],
                      "lr": lr_at(step - 1, cfg, total),
                      "images_per_s": len(losses) * cfg.train.batch_size / elapsed,
                      "train_time_s": state["train_time_s"]}
            tracker.log(record, step)
            progress.update(step, record["loss"])
            window_losses, window_start = [], time.perf_counter()
            if accelerator.reduce(torch.tensor(float(stop.requested),
                                               device=accelerator.device), "max").item():
                save(step)
                progress.close()
                received = signal.Signals(stop.signum).name if stop.signum else "stop signal"
                console.print(f"{received} received: checkpointed step {step}; exiting with "
                              f"code {PREEMPTED_EXIT_CODE}. Rerun the same command to resume.")
                tracker.finish(preempted=True)
                raise Preempted(f"preempted at step {step}")
        if step % cfg.train.eval_every == 0 or done:
            last_metrics = evaluate(step)
        if step % cfg.train.checkpoint_every == 0 or done:
            save(step)
        if not window_losses:  # keep evaluation and checkpoint time out of images/s
            window_start = time.perf_counter()
    progress.close()

    if not last_metrics:  # resumed a finished run: score it again, but log nothing twice
        console.print(f"the run in {run_dir} is already complete at step {step}")
        last_metrics = evaluator(accelerator.unwrap_model(model))
    summary = {"step": step, "best_val_psnr": state["best_val_psnr"], **baseline,
               **last_metrics, **launch}
    if accelerator.is_main_process:
        write_outputs(cfg, run_dir, accelerator.unwrap_model(model), samples, summary,
                      tracker, step, accelerator.autocast)
        print_summary(console, summary, run_dir)
    tracker.finish()
    accelerator.wait_for_everyone()
    return summary


def slurm_facts() -> dict:
    """The SLURM job id and restart count (SLURM sets the count only after a requeue)."""
    if "SLURM_JOB_ID" not in os.environ:
        return {}
    return {"slurm_job_id": os.environ["SLURM_JOB_ID"],
            "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}


def check_finite(losses: list[float], last_step: int, run_dir: Path) -> None:
    """Stop at the first NaN/Inf loss of a window, before anything is checkpointed."""
    first_step = last_step - len(losses) + 1
    for offset, loss in enumerate(losses):
        if not math.isfinite(loss):
            found = checkpoint.list_checkpoints(run_dir)
            raise TrainingDiverged(f"loss became {loss} at step {first_step + offset}; last "
                                   f"good checkpoint: {found[0] if found else 'none'}")


def sample_images(cfg: Config, test_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, clean): the first test images with fixed-seed noise, shown in every grid."""
    clean = data.to_float(test_images[:NUM_SAMPLES])
    return fixed_noisy(clean, cfg.noise, "test"), clean


def write_outputs(cfg: Config, run_dir: Path, model, samples, summary: dict, tracker,
                  step: int, autocast) -> None:
    """Final sample grid and curves as PNG and the summary as JSON; to W&B, the sample
    table and the best model (the grid went there with the last evaluation)."""
    noisy, clean = samples
    denoised = denoise_batched(model, noisy, autocast=autocast)
    caption = (f"{describe_noise(cfg.noise)}  step {step}  "
               f"val PSNR {summary['val_psnr']:.2f} dB")
    figures.save_sample_figure(figures.sample_grid(noisy, denoised, clean),
                               run_dir / "figures" / "samples.png", caption)
    figures.save_curves(read_metrics(run_dir), run_dir / "figures" / "curves.png")
    tracker.log_sample_table(noisy, denoised, clean, step)
    tracker.log_model(run_dir / BEST_MODEL)
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True))


class ProgressBar:
    """A rich progress bar on an interactive main process; silent elsewhere (logs get
    the per-evaluation lines instead)."""

    def __init__(self, console, total: int, start: int):
        self.bar = None
        if console.is_terminal and not console.quiet:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]train"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"),
                                TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                                console=console)
            self.task = self.bar.add_task("train", total=total, completed=start, loss="-")
            self.bar.start()

    def update(self, step: int, loss: float) -> None:
        if self.bar:
            self.bar.update(self.task, completed=step, loss=f"{loss:.5f}")

    def close(self) -> None:
        if self.bar:
            self.bar.stop()
            self.bar = None


def print_summary(console, summary: dict, run_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"denoise-dist run: {run_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("step", "val_psnr_noisy", "val_psnr", "best_val_psnr", "val_ssim_noisy",
                "val_ssim", "world_size", "precision"):
        value = summary.get(key)
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"model: {run_dir / BEST_MODEL}   figures: {run_dir / 'figures'}")


def main(argv: list[str] | None = None) -> int:
    from denoise_dist.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
