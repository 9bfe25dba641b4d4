"""Train a denoiser: `accelerate launch -m denoise_dist.train [flags]`, or `denoise-dist train`.

The only module that orchestrates. Data flows config -> data -> noise -> model -> this
loop -> metrics / checkpoints / tracking. Every batch, noise draw and dropout mask is a
pure function of (seed, epoch, step) and of the row in the global batch, so a resumed
run, or one on a different number of processes, trains on exactly the same examples.

`TrainStep` is the seam: one call does one optimizer step (gather, noise, forward, loss,
backward, clip, update, EMA) and returns device tensors, with no host sync. Everything
around it (logging, evaluation, checkpoints, preemption) reads top to bottom in `train`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import secrets
import shutil
import signal
import sys
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from denoise_dist import checkpoint, data, figures, noise, rng, runtime
from denoise_dist.atomic import atomic_write_text
from denoise_dist.config import Config, add_config_flags, config_from_args, from_dict
from denoise_dist.errors import ConfigError, TrainingDiverged, one_line_warnings, run_command
from denoise_dist.export import BEST_MODEL, save_model
from denoise_dist.inference import denoise_batched
from denoise_dist.metrics import means, quality_sums
from denoise_dist.models import MODELS, build_model, model_kwargs
from denoise_dist.preempt import PREEMPTED_EXIT_CODE, StopRequest
from denoise_dist.trackers import RunInfo
from denoise_dist.tracking import Tracker, read_metrics, truncate_metrics

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
EMA_FILE = "ema.safetensors"
PROFILE_DIR = "profile"
PROFILE_STEPS = {"wait": 2, "warmup": 2, "active": 4}  # after the first steps' warm-up


class Preempted(Exception):
    """Raised after the preemption checkpoint is on disk; the CLI exits 75."""

    exit_code = PREEMPTED_EXIT_CODE


@dataclass
class RunState:
    """What a checkpoint restores besides model, optimizer and RNG state."""

    step: int = 0
    best_val_psnr: float = -math.inf
    run_id: str | None = None  # the trackers' run id, kept across resumes and requeues
    train_time_s: float = 0.0  # seconds spent in training steps, across resumes
    total_steps: int | None = None

    @classmethod
    def from_saved(cls, saved: dict) -> RunState:
        run_id = saved.get("run_id", saved.get("wandb_run_id"))  # the name before 0.2
        fields = {k: saved[k] for k in ("step", "best_val_psnr", "train_time_s") if k in saved}
        return cls(**fields, run_id=run_id, total_steps=saved.get("total_steps"))


# --- small helpers ----------------------------------------------------------------------


def lr_at(step: int, cfg: Config, total: int) -> float:
    o = cfg.optim
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
    decay = 0.5 * (1 + math.cos(math.pi * step / total)) if o.schedule == "cosine" else 1.0
    return o.lr * warm * decay


def total_steps(cfg: Config, steps_per_epoch: int) -> int:
    return cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))


def restarted(environ=None) -> bool:
    """True in a job that SLURM requeued or torchrun restarted: its run folder holds its
    own progress, which --overwrite must never delete."""
    env = os.environ if environ is None else environ
    return any(
        int(env.get(v, "0") or 0) > 0 for v in ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")
    )


def resolve_output_dir(cfg: Config, environ=None) -> None:
    """The default run folder: runs/default, or one folder per trial under a W&B sweep
    agent (which sets WANDB_SWEEP_ID and WANDB_RUN_ID), so trials never share one."""
    env = os.environ if environ is None else environ
    if cfg.train.output_dir is None:
        sweep, run = env.get("WANDB_SWEEP_ID"), env.get("WANDB_RUN_ID")
        cfg.train.output_dir = f"runs/sweep-{sweep}/{run}" if sweep and run else "runs/default"


def slurm_facts() -> dict:
    """The SLURM job id and restart count (SLURM sets the count only after a requeue)."""
    if "SLURM_JOB_ID" not in os.environ:
        return {}
    return {
        "slurm_job_id": os.environ["SLURM_JOB_ID"],
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
    }


def check_finite(losses: list[float], last_step: int, run_dir: Path) -> None:
    """Stop at the first NaN/Inf loss of a window, before anything is checkpointed."""
    first_step = last_step - len(losses) + 1
    for offset, loss in enumerate(losses):
        if not math.isfinite(loss):
            found = checkpoint.list_checkpoints(run_dir)
            raise TrainingDiverged(
                f"loss became {loss} at step {first_step + offset}; last good checkpoint: "
                f"{found[0] if found else 'none'}"
            )


def process_age_s() -> float | None:
    """Seconds since this process started (Linux), to account for imports and launch."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Phases:
    """Wall time per phase of a run, for `summary.json` and the closing line."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        age = process_age_s()
        if age is not None:
            self.seconds["start-up (launch, imports)"] = age

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def line(self) -> str:
        return "time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())


class EMA:
    """An exponential moving average of the weights, warmed up as in TensorFlow's: the
    decay at update t is min(decay, (1 + t) / (10 + t)), so early averages are not
    dominated by the random initial weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        averaged: list[torch.Tensor] = list(self.model.parameters())
        torch._foreach_lerp_(averaged, list(model.parameters()), 1 - decay)
        for kept, current in zip(self.model.buffers(), model.buffers(), strict=True):
            kept.copy_(current)  # buffers (none in our models) follow the live model

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


# --- run folder and data ----------------------------------------------------------------


def prepare_run_dir(cfg: Config, accelerator, console) -> Path | None:
    """Check the run folder on every rank (read-only, same answer everywhere); the main
    process alone writes. Returns the checkpoint to resume from, if any."""
    run_dir = Path(cfg.train.output_dir)  # type: ignore[arg-type]
    saved_config = run_dir / CONFIG_FILE
    resume_from = None
    overwrite = cfg.train.overwrite
    if overwrite and restarted() and saved_config.exists():
        overwrite = False  # the first start already replaced the old run; this is ours
        console.print(f"a restarted job: resuming {run_dir} instead of --overwrite", soft_wrap=True)
    if overwrite:
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
            raise ConfigError(
                f"{run_dir} already holds a run; use --resume auto to continue it, "
                f"--overwrite to replace it, or another --output-dir"
            )
        # A folder whose run stopped before its first checkpoint (bad data, a typo) holds
        # nothing to resume or lose: start afresh with the corrected command.
        if checkpoint.list_checkpoints(run_dir):
            saved = from_dict(json.loads(saved_config.read_text()))
            checkpoint.check_compatible(saved, cfg, run_dir)
            resume_from = checkpoint.latest_valid(run_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (run_dir / "figures").mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved_config, cfg.to_json())
    accelerator.wait_for_everyone()
    return resume_from


class Evaluator:
    """Validation PSNR/SSIM on fixed-noise sets, sharded so each image counts once."""

    def __init__(self, cfg: Config, val_images: torch.Tensor, accelerator):
        self.accelerator = accelerator
        shard = data.eval_shard(
            len(val_images), accelerator.num_processes, accelerator.process_index
        )
        clean = data.to_float(val_images)
        self.clean = clean[shard]
        n = cfg.noise
        params = noise.params_of(n.noise, n)
        sets = {"": noise.fixed_noisy(clean, n.noise, params, "val", n.eval_seed)[shard]}
        for sigma in n.eval_sigmas:
            noisy = noise.fixed_noisy(clean, "gaussian", {"sigma": sigma}, "val", n.eval_seed)
            sets[f"@{sigma:g}"] = noisy[shard]
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


# --- the training step --------------------------------------------------------------------


class TrainStep:
    """One optimizer step as one call: `loss, grad_norm = step_fn(step)`.

    Gathers this rank's rows of the step's global batch, draws their noise, and runs
    forward, loss, backward (gradients synchronised on the last micro-batch only), clip,
    the optimizer and the EMA. Returns device tensors: nothing here waits for the device.
    With --compile the noise draw and the model run through torch.compile (the model
    through Accelerate's dynamo settings; CUDA graphs on a GPU)."""

    def __init__(
        self,
        cfg: Config,
        accelerator,
        model,
        optimizer,
        ema: EMA | None,
        train_set,
        sharding: data.Sharding,
        total: int,
    ):
        self.cfg, self.accelerator, self.model, self.optimizer = cfg, accelerator, model, optimizer
        self.ema, self.train_set, self.sharding, self.total = ema, train_set, sharding, total
        device = accelerator.device
        self.rows = [sharding.rows(m, device) for m in range(cfg.optim.grad_accum)]
        # The plain module under DDP and torch.compile, for the EMA (same parameters).
        self.module = accelerator.unwrap_model(model, keep_torch_compile=False)
        self.noise_name = cfg.noise.noise
        self.noise_params = noise.params_of(cfg.noise.noise, cfg.noise)
        self.takes_draw = MODELS[cfg.model.model].takes_draw
        self.add_noise = noise.add_noise
        if cfg.train.compile:
            self.add_noise = torch.compile(noise.add_noise, dynamic=False)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, accelerator, model = self.cfg, self.accelerator, self.model
        epoch = step // self.sharding.steps_per_epoch
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg, self.total)
        step_loss = torch.zeros((), device=accelerator.device)
        for micro, rows in enumerate(self.rows):
            clean = self.train_set.batch(step, rows, self.sharding)
            draw = noise.train_draw(cfg.train.seed, epoch, step, rows)
            noisy = self.add_noise(self.noise_name, clean, draw, self.noise_params)
            last = micro == len(self.rows) - 1
            with nullcontext() if last else accelerator.no_sync(model):
                if self.takes_draw:  # dropout masks keyed like the noise, on their own key
                    key = rng.key("dropout", cfg.train.seed, step, device=rows.device)
                    out = model(noisy, noise.Draw(key, rows))
                else:
                    out = model(noisy)
                loss = F.mse_loss(out.float(), clean)
                accelerator.backward(loss / len(self.rows))
            step_loss += loss.detach() / len(self.rows)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.module, step)
        return step_loss, grad_norm.float()


def make_optimizer(cfg: Config, model, device: torch.device) -> torch.optim.Optimizer:
    # The fused CUDA kernel is one launch per step instead of one per tensor group.
    fused = True if device.type == "cuda" else None
    return torch.optim.Adam(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=fused
    )


@contextmanager
def maybe_profile(enabled: bool, run_dir: Path, rank: int):
    """A torch.profiler trace of a few steps into <run>/profile/ (TensorBoard's profiler
    plugin and Perfetto read it); yields the per-step callback, or a no-op."""
    if not enabled:
        yield lambda: None
        return
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    handler = tensorboard_trace_handler(str(run_dir / PROFILE_DIR), worker_name=f"rank{rank}")
    with profile(
        activities=activities,
        schedule=schedule(**PROFILE_STEPS, repeat=1),
        on_trace_ready=handler,
        record_shapes=True,
    ) as profiler:
        yield profiler.step


# --- the run ----------------------------------------------------------------------------


def train(cfg: Config) -> dict:
    os.umask(os.umask(0) | 0o002)  # the run folder is never world-writable, whatever the umask
    phases = Phases()
    resolve_output_dir(cfg)
    if cfg.train.deterministic:
        # cuBLAS reads this when it starts, so it must be set before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    with phases("accelerator"):
        accelerator = runtime.make_accelerator(
            cfg.train.cpu, cfg.train.mixed_precision, cfg.train.dist_timeout, cfg.train.compile
        )
    from rich.console import Console

    console = Console(quiet=not accelerator.is_main_process)
    run_dir = Path(cfg.train.output_dir)  # type: ignore[arg-type]
    resume_from = prepare_run_dir(cfg, accelerator, console)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    with phases("data"):
        root = data.resolve_data_root(cfg.data.data_dir)
        splits = data.load(
            cfg.data.dataset,
            root,
            cfg.data.val_size,
            cfg.data.patch_size,
            cfg.data.download,
            cfg.train.seed,
            device,
            accelerator.main_process_first,
        )
    sharding = data.Sharding(
        splits.train.num_examples, cfg.train.batch_size, world, rank, cfg.optim.grad_accum
    )
    total = total_steps(cfg, sharding.steps_per_epoch)

    with phases("model"):
        torch.manual_seed(cfg.train.seed)  # same init on every rank (DDP also broadcasts it)
        kwargs = model_kwargs(cfg.model.model, cfg.model)
        # NHWC conv weights: about 20% faster on a CPU (oneDNN), and what tensor cores want.
        model = build_model(cfg.model.model, **kwargs).to(memory_format=torch.channels_last)
        ema = EMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
        if ema is not None:
            ema.model.to(device)
        optimizer = make_optimizer(cfg, model, device)
        model, optimizer = accelerator.prepare(model, optimizer)
        # Evaluated and exported without DDP or torch.compile (eval shapes differ).
        module = accelerator.unwrap_model(model, keep_torch_compile=False)

    state = RunState()
    if resume_from is not None:
        with phases("checkpoints"):
            state = RunState.from_saved(checkpoint.load_checkpoint(accelerator, resume_from))
            if ema is not None:
                saved_ema = checkpoint.load_tensors(resume_from / EMA_FILE, device)
                ema.load_state_dict(saved_ema if saved_ema is not None else model.state_dict())
        checkpoint.check_length(
            from_dict(checkpoint.read_state(resume_from)["config"]),
            state.total_steps,
            cfg,
            total,
            resume_from,
        )
        console.print(f"resumed from {resume_from} at step {state.step}", soft_wrap=True)
    state.total_steps = total
    state.run_id = state.run_id or os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
    if accelerator.is_main_process:
        truncate_metrics(run_dir, state.step)

    precision = runtime.precision_in_effect(accelerator)
    if accelerator.mixed_precision == "fp16" and precision != "fp16":
        warnings.warn(
            f"fp16 is not in effect on {device.type}; training in {precision}. Use "
            f"--mixed-precision bf16 on a CPU.",
            stacklevel=2,
        )
    launch = {
        "distributed_type": str(accelerator.distributed_type.value),
        "world_size": world,
        "device": str(device),
        "precision": precision,
        "compiled": cfg.train.compile,
        "global_batch": cfg.train.batch_size,
        "per_process_batch": sharding.micro_batch,
        **slurm_facts(),
    }
    console.print(  # one line even in an 80-column log, so grep finds it whole
        f"distributed={launch['distributed_type']} world_size={world} device={device} "
        f"precision={precision} batch={cfg.train.batch_size} global / "
        f"{sharding.micro_batch} per process x {cfg.optim.grad_accum} accumulation",
        soft_wrap=True,
    )
    console.print(splits.description, soft_wrap=True)
    if sharding.dropped_per_epoch and cfg.data.dataset != data.FOLDER:
        console.print(
            f"each epoch skips {sharding.dropped_per_epoch} of {splits.train.num_examples} "
            f"images (a different random set each epoch) to keep batches full"
        )

    with phases("trackers"):
        name = cfg.tracking.run_name or f"{cfg.model.model}-{cfg.noise.noise}-{state.run_id}"
        info = RunInfo(
            run_dir,
            state.run_id,
            name,
            cfg.tracking.wandb_project,
            cfg.to_dict(),
            launch,
            resumed=resume_from is not None,
        )
        params = noise.params_of(cfg.noise.noise, cfg.noise)
        tracker = Tracker(
            info, cfg.tracking, accelerator.is_main_process, noise.describe(cfg.noise.noise, params)
        )
    with phases("evaluation"):
        evaluator = Evaluator(cfg, splits.val, accelerator)
        baseline = evaluator.noisy_baseline()
        clean_samples = data.to_float(splits.samples)
        samples = (
            noise.fixed_noisy(clean_samples, cfg.noise.noise, params, "test", cfg.noise.eval_seed),
            clean_samples,
        )
    train_step = TrainStep(cfg, accelerator, model, optimizer, ema, splits.train, sharding, total)
    stop = StopRequest().install()

    def scored_model():
        """What is evaluated and exported: the EMA weights when there are any."""
        return ema.model if ema is not None else module

    def save(step: int) -> None:
        state.step = step
        extra = {EMA_FILE: ema.state_dict()} if ema is not None else None
        with phases("checkpoints"):
            checkpoint.save_checkpoint(
                accelerator,
                run_dir,
                step,
                {**asdict(state), "config": cfg.to_dict()},
                cfg.train.keep_checkpoints,
                extra,
            )

    def evaluate(step: int) -> dict:
        with phases("evaluation"):
            metrics = evaluator(scored_model())
            if accelerator.is_main_process and metrics["val_psnr"] > state.best_val_psnr:
                save_model(
                    scored_model(),
                    run_dir / BEST_MODEL,
                    {
                        "model": cfg.model.model,
                        "model_kwargs": kwargs,
                        "step": step,
                        "val_psnr": metrics["val_psnr"],
                        "ema": ema is not None,
                        "config": cfg.to_dict(),
                    },
                )
            state.best_val_psnr = max(state.best_val_psnr, metrics["val_psnr"])
            tracker.log({**metrics, **baseline}, step)
            if accelerator.is_main_process:  # the same fixed images at every evaluation
                noisy, clean = samples
                denoised = denoise_batched(scored_model(), noisy, autocast=accelerator.autocast)
                tracker.log_samples(noisy, denoised, clean, step)
        console.print(
            f"step {step}/{total}  val PSNR {metrics['val_psnr']:.2f} dB "
            f"(noisy {baseline['val_psnr_noisy']:.2f})  SSIM {metrics['val_ssim']:.3f}"
        )
        return metrics

    step, last_metrics = state.step, {}
    window: list[torch.Tensor] = []
    window_start = time.perf_counter()
    progress = ProgressBar(console, total, step)
    model.train()
    with maybe_profile(cfg.train.profile, run_dir, rank) as profile_step:
        while step < total:
            loss, grad_norm = train_step(step)
            profile_step()
            step += 1
            window.append(torch.stack([loss, grad_norm]))

            done = step == total
            if step % cfg.train.log_every == 0 or step % cfg.train.checkpoint_every == 0 or done:
                # One sync per window: global mean loss per step, then look for NaN/Inf.
                losses = accelerator.reduce(torch.stack(window), "mean").tolist()
                check_finite([loss for loss, _ in losses], step, run_dir)
                elapsed = time.perf_counter() - window_start
                phases.seconds["training"] += elapsed
                state.train_time_s += elapsed
                record = {
                    "epoch": (step - 1) // sharding.steps_per_epoch,
                    "loss": losses[-1][0],
                    "grad_norm": losses[-1][1],
                    "lr": lr_at(step - 1, cfg, total),
                    "images_per_s": len(losses) * cfg.train.batch_size / elapsed,
                    "train_time_s": state.train_time_s,
                }
                tracker.log(record, step)
                progress.update(step, record["loss"])
                window = []
                stop_now = torch.tensor(float(stop.requested), device=device)
                if accelerator.reduce(stop_now, "sum").item():  # any rank was signalled
                    save(step)
                    progress.close()
                    received = signal.Signals(stop.signum).name if stop.signum else "a stop signal"
                    console.print(
                        f"{received} received: checkpointed step {step}; exiting with code "
                        f"{PREEMPTED_EXIT_CODE}. Rerun the same command to resume."
                    )
                    tracker.finish(preempted=True)
                    raise Preempted(f"preempted at step {step}")
            if step % cfg.train.eval_every == 0 or done:
                last_metrics = evaluate(step)
            if step % cfg.train.checkpoint_every == 0 or done:
                save(step)
            if not window:  # keep evaluation and checkpoint time out of images/s
                window_start = time.perf_counter()
    progress.close()

    if not last_metrics:  # resumed a finished run: score it again, but log nothing twice
        console.print(f"the run in {run_dir} is already complete at step {step}")
        last_metrics = evaluator(scored_model())
    summary = {
        "step": step,
        "best_val_psnr": state.best_val_psnr,
        **baseline,
        **last_metrics,
        **launch,
        "run_id": state.run_id,
    }
    if accelerator.is_main_process:
        with phases("figures and summary"):
            write_outputs(
                cfg,
                run_dir,
                scored_model(),
                samples,
                summary,
                tracker,
                step,
                accelerator.autocast,
                params,
            )
            tracker.finish()
        summary["timings_s"] = {k: round(v, 3) for k, v in phases.seconds.items()}
        atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True))
        print_summary(console, summary, run_dir)
        console.print(phases.line(), soft_wrap=True)
    accelerator.wait_for_everyone()
    return summary


def write_outputs(
    cfg: Config,
    run_dir: Path,
    model,
    samples,
    summary: dict,
    tracker: Tracker,
    step: int,
    autocast,
    params: dict,
) -> None:
    """Final sample grid and curves as PNG; to the trackers, the samples with their PSNR
    and the best model (the grid went there with the last evaluation)."""
    noisy, clean = samples
    denoised = denoise_batched(model, noisy, autocast=autocast)
    caption = (
        f"{noise.describe(cfg.noise.noise, params)}  step {step}  "
        f"val PSNR {summary['val_psnr']:.2f} dB"
    )
    figures.save_sample_figure(
        figures.sample_grid(noisy, denoised, clean), run_dir / "figures" / "samples.png", caption
    )
    figures.save_curves(read_metrics(run_dir), run_dir / "figures" / "curves.png")
    tracker.log_final(noisy, denoised, clean, step, run_dir / BEST_MODEL)


class ProgressBar:
    """A rich progress bar on an interactive main process; silent elsewhere (logs get
    the per-evaluation lines instead)."""

    def __init__(self, console, total: int, start: int):
        self.bar = None
        if console.is_terminal and not console.quiet:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]}"),
                TimeRemainingColumn(),
                console=console,
            )
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
    for key in (
        "step",
        "val_psnr_noisy",
        "val_psnr",
        "best_val_psnr",
        "val_ssim_noisy",
        "val_ssim",
        "world_size",
        "precision",
    ):
        value = summary.get(key)
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"model: {run_dir / BEST_MODEL}   figures: {run_dir / 'figures'}")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="denoise_dist.train", description=__doc__.splitlines()[0]
    )
    add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m denoise_dist.train` (what `accelerate launch -m` runs)."""
    one_line_warnings()
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_command(lambda: train(config_from_args(args)), getattr(args, "debug", False))


if __name__ == "__main__":
    sys.exit(main())
