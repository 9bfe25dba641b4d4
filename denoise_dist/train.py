"""Train a denoiser: `accelerate launch -m denoise_dist.train [flags]`, or `denoise-dist train`.

The only module that orchestrates. Data flows config -> data -> noise -> model -> this
loop -> metrics / checkpoints / tracking. Every batch, noise draw and dropout mask is a
pure function of (seed, epoch, step) and of the row in the global batch, so a resumed
run, or one on a different number of processes, trains on exactly the same examples.

`step.TrainStep` is the seam: one call does one optimizer step (gather, noise, forward,
loss, backward, clip, update, EMA) and returns device tensors, with no host sync. `Run`
sets a run up and does what the loop asks at its log, evaluation and checkpoint steps;
the loop itself, in `train`, reads top to bottom.
"""

from __future__ import annotations

import argparse
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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from denoise_dist import checkpoint, data, figures, noise, runtime
from denoise_dist.atomic import atomic_write_text
from denoise_dist.config import Config, add_config_flags, config_from_args, from_dict
from denoise_dist.console import progress_bar
from denoise_dist.errors import (
    CheckpointError,
    ConfigError,
    TrainingDiverged,
    one_line_warnings,
    run_command,
)
from denoise_dist.export import BEST_MODEL, save_model
from denoise_dist.inference import denoise_batched
from denoise_dist.metrics import PerImageScores
from denoise_dist.models import build_model, model_kwargs
from denoise_dist.preempt import PREEMPTED_EXIT_CODE, StopRequest
from denoise_dist.step import EMA, graph_mode, lr_at, make_optimizer, make_train_step
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
    data_fingerprint: dict | None = None  # data.fingerprint of the data it trains on
    data_changes: list[str] = field(default_factory=list)  # what --allow-data-change let by

    @classmethod
    def from_saved(cls, saved: dict) -> RunState:
        run_id = saved.get("run_id", saved.get("wandb_run_id"))  # the name before 0.2
        kept = ("step", "best_val_psnr", "train_time_s", "data_fingerprint", "data_changes")
        fields = {k: saved[k] for k in kept if k in saved}
        return cls(**fields, run_id=run_id, total_steps=saved.get("total_steps"))


# --- small helpers ----------------------------------------------------------------------


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


def check_finite(
    losses: list[float], last_step: int, run_dir: Path, grad_norms: list[float] | None = None
) -> None:
    """Stop at the first NaN/Inf loss or gradient norm of a window, before anything is
    checkpointed. The loss of step N is computed before step N's update; its gradient norm
    is what that update applied, so a bad update is caught in the same window."""
    first_step = last_step - len(losses) + 1
    norms = grad_norms if grad_norms is not None else [0.0] * len(losses)
    for offset, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
        what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", norm)
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"{what} became {value} at step {first_step + offset}; last good "
                f"checkpoint: {last_checkpoint_name(run_dir)}"
            )


def compile_decision(cfg: Config, device: torch.device, total: int) -> bool:
    """Whether to compile: --compile / --no-compile, or runtime's default, except that
    torch.compile's CUDA-graph trees (on a GPU) cannot accumulate gradients: a second
    micro-batch would add into gradient memory that the graph has reused. Not tried on a
    GPU here; torch's own error names this case. By default such a run is not compiled."""
    graph_trees = device.type == "cuda" and not cfg.train.cuda_graph
    if graph_trees and cfg.optim.grad_accum > 1:
        if cfg.train.compile:
            raise ConfigError(
                f"--compile with --grad-accum {cfg.optim.grad_accum} on a GPU: torch.compile's "
                f"CUDA graphs cannot accumulate gradients; pass --no-compile or --grad-accum 1"
            )
        return False
    return runtime.compile_wanted(cfg.train.compile, device, total)


def last_checkpoint_name(run_dir: Path) -> str:
    found = checkpoint.list_checkpoints(run_dir)
    return str(found[0]) if found else "none"


def check_weights_finite(accelerator, models: list[torch.nn.Module], step: int, run_dir: Path):
    """Refuse to checkpoint non-finite weights (model or EMA), on every rank together."""
    tensors = [t for m in models for t in m.state_dict().values() if t.is_floating_point()]
    bad = torch.stack([~torch.isfinite(t).all() for t in tensors]).sum().float()  # no sync yet
    if accelerator.reduce(bad.to(accelerator.device), "sum").item():
        raise TrainingDiverged(
            f"the weights became non-finite at step {step}; not checkpointed. Last good "
            f"checkpoint: {last_checkpoint_name(run_dir)}"
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
    checkpoint.agree_on_resume(accelerator, resume_from)
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
        self.count = len(val_images)
        self.shard = data.eval_shard(
            self.count, accelerator.num_processes, accelerator.process_index
        )
        clean = data.to_float(val_images)
        self.clean = clean[self.shard]
        n = cfg.noise
        params = noise.params_of(n.noise, n)
        sets = {"": noise.fixed_noisy(clean, n.noise, params, "val", n.eval_seed)[self.shard]}
        for sigma in n.eval_sigmas:
            noisy = noise.fixed_noisy(clean, "gaussian", {"sigma": sigma}, "val", n.eval_seed)
            sets[f"@{sigma:g}"] = noisy[self.shard]
        self.noisy_sets = sets

    def _score(self, outputs: list[torch.Tensor]) -> list[tuple[float, float]]:
        """Mean (PSNR, SSIM) over the whole set of each of this shard's outputs."""
        scores = PerImageScores([len(outputs)], self.count)
        for i, pred in enumerate(outputs):
            scores.add((i,), self.shard, pred, self.clean)
        scores.reduce(lambda t: self.accelerator.reduce(t, "sum"), self.accelerator.device)
        return [scores.means((i,)) for i in range(len(outputs))]  # type: ignore[misc]

    def noisy_baseline(self) -> dict:
        ((psnr, ssim),) = self._score([self.noisy_sets[""]])
        return {"val_psnr_noisy": psnr, "val_ssim_noisy": ssim}

    def __call__(self, model) -> dict:
        outputs = [
            denoise_batched(model, noisy, autocast=self.accelerator.autocast)
            for noisy in self.noisy_sets.values()
        ]
        out = {}
        for suffix, (psnr, ssim) in zip(self.noisy_sets, self._score(outputs), strict=True):
            out[f"val_psnr{suffix}"], out[f"val_ssim{suffix}"] = psnr, ssim
        return out


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


class Run:
    """One training run: set up in data-flow order (devices, run folder, data, model,
    resume, trackers, evaluation sets), then what the loop in `train` calls at its log,
    evaluation and checkpoint steps."""

    def __init__(self, cfg: Config):
        self.cfg, self.phases = cfg, Phases()
        resolve_output_dir(cfg)
        if cfg.train.deterministic:
            # cuBLAS reads this when it starts, so it must be set before the first CUDA call.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        with self.phases("accelerator"):
            self.accelerator = accelerator = runtime.make_accelerator(
                cfg.train.cpu,
                cfg.train.mixed_precision,
                cfg.train.dist_timeout,
                cfg.train.cuda_graph,
            )
        from rich.console import Console

        self.console = Console(quiet=not accelerator.is_main_process)
        self.run_dir = Path(cfg.train.output_dir)  # type: ignore[arg-type]
        resume_from = prepare_run_dir(cfg, accelerator, self.console)
        self.device = accelerator.device
        with self.phases("data"):
            self.splits = data.load(
                cfg.data, cfg.train.seed, self.device, accelerator.main_process_first
            )
            self.data_root = data.resolve_data_root(cfg.data.data_dir)
            self.fingerprint = data.fingerprint(cfg.data.dataset, self.data_root)
        self.sharding = data.Sharding(
            self.splits.train.num_examples,
            cfg.train.batch_size,
            accelerator.num_processes,
            accelerator.process_index,
            cfg.optim.grad_accum,
        )
        self.total = total_steps(cfg, self.sharding.steps_per_epoch)
        self.compiled = compile_decision(cfg, self.device, self.total)
        with self.phases("model"):
            self.build_model()
        self.state = self.resume(resume_from) if resume_from is not None else RunState()
        self.state.total_steps = self.total
        self.state.data_fingerprint = self.fingerprint
        self.state.run_id = (
            self.state.run_id or os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
        )
        if accelerator.is_main_process:
            truncate_metrics(self.run_dir, self.state.step)
        self.launch = self.announce()
        with self.phases("trackers"):
            self.noise_params = noise.params_of(cfg.noise.noise, cfg.noise)
            name = (
                cfg.tracking.run_name or f"{cfg.model.model}-{cfg.noise.noise}-{self.state.run_id}"
            )
            info = RunInfo(
                self.run_dir,
                self.state.run_id,
                name,
                cfg.tracking.wandb_project,
                cfg.to_dict(),
                self.launch,
                resumed=resume_from is not None,
            )
            self.tracker = Tracker(
                info,
                cfg.tracking,
                accelerator.is_main_process,
                noise.describe(cfg.noise.noise, self.noise_params),
            )
        with self.phases("evaluation"):
            self.evaluator = Evaluator(cfg, self.splits.val, accelerator)
            self.baseline = self.evaluator.noisy_baseline()
            clean = data.to_float(self.splits.samples)
            noisy = noise.fixed_noisy(
                clean, cfg.noise.noise, self.noise_params, "test", cfg.noise.eval_seed
            )
            self.samples = (noisy, clean)
        self.stop = StopRequest().install()

    def build_model(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)  # same init on every rank (DDP also broadcasts it)
        self.model_kwargs = model_kwargs(cfg.model.model, cfg.model)
        # NHWC conv weights: about 20% faster on a CPU (oneDNN), and what tensor cores want.
        model = build_model(cfg.model.model, **self.model_kwargs)
        model = model.to(memory_format=torch.channels_last)
        self.ema = EMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
        if self.ema is not None:
            self.ema.model.to(self.device)
        optimizer = make_optimizer(cfg, model, self.device)
        if cfg.train.deterministic:
            # DDP re-buckets the gradients after its first iteration, which a resumed run
            # repeats; with 3+ ranks the all-reduce then sums in another order. With
            # find_unused_parameters it keeps its first buckets (and checks for unused
            # parameters, which costs little): resume is bit-exact on any number of ranks.
            from accelerate import DistributedDataParallelKwargs

            self.accelerator.ddp_handler = DistributedDataParallelKwargs(
                find_unused_parameters=True
            )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if self.compiled:
            self.model = runtime.compile_model(
                self.model, self.device, cudagraphs=not cfg.train.cuda_graph
            )
        # Evaluated and exported without DDP or torch.compile (evaluation shapes differ).
        self.module = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def resume(self, folder: Path) -> RunState:
        with self.phases("checkpoints"):
            state = RunState.from_saved(checkpoint.load_checkpoint(self.accelerator, folder))
            if self.ema is not None:
                saved = checkpoint.load_tensors(folder / EMA_FILE, self.device)
                self.ema.load_state_dict(saved if saved is not None else self.module.state_dict())
        saved_config = from_dict(checkpoint.read_state(folder)["config"])
        checkpoint.check_length(saved_config, state.total_steps, self.cfg, self.total, folder)
        # A checkpoint written before fingerprints existed has none: nothing to compare.
        saved_data = state.data_fingerprint or self.fingerprint
        changed = data.fingerprint_changes(saved_data, self.fingerprint, self.data_root)
        if changed and not self.cfg.train.allow_data_change:
            raise CheckpointError(
                f"the data changed since {folder}: {changed}. Resume on the data it was trained "
                f"on, or pass --allow-data-change to continue (no longer an exact resume)"
            )
        if changed:
            state.data_changes.append(f"at step {state.step}: {changed}")
        note = f" (not an exact resume: data changed: {changed})" if changed else ""
        self.console.print(f"resumed from {folder} at step {state.step}{note}", soft_wrap=True)
        return state

    def announce(self) -> dict:
        """The launch facts: checked, printed as one line, and given to the trackers."""
        accelerator, cfg, device = self.accelerator, self.cfg, self.device
        precision = runtime.precision_in_effect(accelerator)
        if precision == "bf16" and device.type == "cpu" and not runtime.cpu_has_native_bf16():
            warnings.warn(
                "this CPU computes bf16 by emulation (no AVX512-BF16 or AMX), which is slower "
                "than fp32 here; --mixed-precision fp32 trains faster",
                stacklevel=3,
            )
        if accelerator.mixed_precision == "fp16" and precision != "fp16":
            warnings.warn(
                f"fp16 is not in effect on {device.type}; training in {precision}. Use "
                f"--mixed-precision bf16 on a CPU.",
                stacklevel=3,
            )
        launch = {
            "distributed_type": str(accelerator.distributed_type.value),
            "world_size": accelerator.num_processes,
            "device": str(device),
            "precision": precision,
            "compiled": self.compiled,
            "cuda_graph": graph_mode(cfg, device),
            "global_batch": cfg.train.batch_size,
            "per_process_batch": self.sharding.micro_batch,
            **slurm_facts(),
        }
        self.console.print(  # one line even in an 80-column log, so grep finds it whole
            f"distributed={launch['distributed_type']} world_size={launch['world_size']} "
            f"device={device} precision={precision} compiled={'yes' if self.compiled else 'no'} "
            f"batch={cfg.train.batch_size} global / "
            f"{self.sharding.micro_batch} per process x {cfg.optim.grad_accum} accumulation"
            + (f" cuda_graph={launch['cuda_graph']}" if cfg.train.cuda_graph else ""),
            soft_wrap=True,
        )
        self.console.print(self.splits.description, soft_wrap=True)
        if self.sharding.dropped_per_epoch and not data.DATASETS[cfg.data.dataset].crops:
            self.console.print(
                f"each epoch skips {self.sharding.dropped_per_epoch} of "
                f"{self.splits.train.num_examples} images (a different random set each "
                f"epoch) to keep batches full"
            )
        return launch

    def scored_model(self) -> torch.nn.Module:
        """What is evaluated and exported: the EMA weights when there are any."""
        return self.ema.model if self.ema is not None else self.module

    def log_window(self, window: list[torch.Tensor], step: int, elapsed: float) -> float:
        """One sync per window: the global mean loss per step, checked for NaN/Inf, then
        logged. Returns the last step's loss."""
        losses = self.accelerator.reduce(torch.stack(window), "mean").tolist()
        # fp16's loss scaler skips the update of a step whose gradients overflowed: there
        # a non-finite gradient norm is expected, and the weights are checked before saving.
        norms = [g for _, g in losses] if self.accelerator.scaler is None else None
        check_finite([loss for loss, _ in losses], step, self.run_dir, norms)
        self.phases.seconds["training"] += elapsed
        self.state.train_time_s += elapsed
        record = {
            "epoch": (step - 1) // self.sharding.steps_per_epoch,
            "loss": losses[-1][0],
            "grad_norm": losses[-1][1],
            "lr": lr_at(step - 1, self.cfg, self.total),
            "images_per_s": len(losses) * self.cfg.train.batch_size / elapsed,
            "train_time_s": self.state.train_time_s,
        }
        self.tracker.log(record, step)
        return record["loss"]

    def stop_if_asked(self, step: int) -> None:
        """If any rank was signalled (SLURM's warning, a preemption): checkpoint together
        and raise Preempted (exit 75)."""
        asked = torch.tensor(float(self.stop.requested), device=self.device)
        if not self.accelerator.reduce(asked, "sum").item():
            return
        self.save(step)
        received = signal.Signals(self.stop.signum).name if self.stop.signum else "a stop signal"
        self.console.print(
            f"{received} received: checkpointed step {step}; exiting with code "
            f"{PREEMPTED_EXIT_CODE}. Rerun the same command to resume."
        )
        self.tracker.finish(preempted=True)
        raise Preempted(f"preempted at step {step}")

    def evaluate(self, step: int) -> dict:
        accelerator, cfg = self.accelerator, self.cfg
        with self.phases("evaluation"):
            metrics = self.evaluator(self.scored_model())
            if accelerator.is_main_process and metrics["val_psnr"] > self.state.best_val_psnr:
                meta = {
                    "model": cfg.model.model,
                    "model_kwargs": self.model_kwargs,
                    "step": step,
                    "val_psnr": metrics["val_psnr"],
                    "ema": self.ema is not None,
                    "config": cfg.to_dict(),
                }
                save_model(self.scored_model(), self.run_dir / BEST_MODEL, meta)
            self.state.best_val_psnr = max(self.state.best_val_psnr, metrics["val_psnr"])
            self.tracker.log({**metrics, **self.baseline}, step)
            if accelerator.is_main_process:  # the same fixed images at every evaluation
                noisy, clean = self.samples
                denoised = denoise_batched(
                    self.scored_model(), noisy, autocast=accelerator.autocast
                )
                self.tracker.log_samples(noisy, denoised, clean, step)
        self.console.print(
            f"step {step}/{self.total}  val PSNR {metrics['val_psnr']:.2f} dB "
            f"(noisy {self.baseline['val_psnr_noisy']:.2f})  SSIM {metrics['val_ssim']:.3f}"
        )
        return metrics

    def save(self, step: int) -> None:
        models = [self.module] + ([self.ema.model] if self.ema is not None else [])
        check_weights_finite(self.accelerator, models, step, self.run_dir)
        self.state.step = step
        extra = {EMA_FILE: self.ema.state_dict()} if self.ema is not None else None
        with self.phases("checkpoints"):
            checkpoint.save_checkpoint(
                self.accelerator,
                self.run_dir,
                step,
                {**asdict(self.state), "config": self.cfg.to_dict()},
                self.cfg.train.keep_checkpoints,
                extra,
            )

    def finish(self, step: int, last_metrics: dict) -> dict:
        """Final figures, the trackers' closing records, summary.json, the summary table."""
        if not last_metrics:  # resumed a finished run: score it again, but log nothing twice
            self.console.print(f"the run in {self.run_dir} is already complete at step {step}")
            last_metrics = self.evaluator(self.scored_model())
        summary = {
            "step": step,
            "best_val_psnr": self.state.best_val_psnr,
            **self.baseline,
            **last_metrics,
            **self.launch,
            "run_id": self.state.run_id,
            # Across resumes (timings_s is this process's); a finished run keeps it.
            "train_time_s": round(self.state.train_time_s, 3),
            "data_changes": self.state.data_changes,  # [] for an exact run
        }
        if self.accelerator.is_main_process:
            with self.phases("figures and summary"):
                self.write_outputs(step, summary["val_psnr"])
                self.tracker.finish()
            summary["timings_s"] = {k: round(v, 3) for k, v in self.phases.seconds.items()}
            text = json.dumps(summary, indent=2, sort_keys=True)
            atomic_write_text(self.run_dir / SUMMARY_FILE, text)
            print_summary(self.console, summary, self.run_dir)
            self.console.print(self.phases.line(), soft_wrap=True)
        self.accelerator.wait_for_everyone()
        return summary

    def write_outputs(self, step: int, val_psnr: float) -> None:
        """Final sample grid and curves as PNG; to the trackers, the samples with their
        PSNR and the best model (the grid went there with the last evaluation)."""
        noisy, clean = self.samples
        denoised = denoise_batched(self.scored_model(), noisy, autocast=self.accelerator.autocast)
        caption = (
            f"{noise.describe(self.cfg.noise.noise, self.noise_params)}  step {step}  "
            f"val PSNR {val_psnr:.2f} dB"
        )
        figures_dir = self.run_dir / "figures"
        grid = figures.sample_grid(noisy, denoised, clean)
        figures.save_sample_figure(grid, figures_dir / "samples.png", caption)
        figures.save_curves(read_metrics(self.run_dir), figures_dir / "curves.png")
        self.tracker.log_final(noisy, denoised, clean, step, self.run_dir / BEST_MODEL)


def train(cfg: Config) -> dict:
    """Train as `cfg` says; returns the summary (also in <run>/summary.json)."""
    os.umask(os.umask(0) | 0o002)  # the run folder is never world-writable, whatever the umask
    run = Run(cfg)
    t = cfg.train
    train_step = make_train_step(
        cfg,
        run.accelerator,
        run.model,
        run.optimizer,
        run.ema,
        run.splits.train,
        run.sharding,
        run.total,
        run.compiled,
    )
    step, last_metrics = run.state.step, {}
    window: list[torch.Tensor] = []
    window_start = time.perf_counter()
    progress = ProgressBar(run.console, run.total, step)
    run.model.train()
    with maybe_profile(t.profile, run.run_dir, run.accelerator.process_index) as profile_step:
        while step < run.total:
            loss, grad_norm = train_step(step)
            profile_step()
            step += 1
            window.append(torch.stack([loss, grad_norm]))
            done = step == run.total
            if step % t.log_every == 0 or step % t.checkpoint_every == 0 or done:
                last_loss = run.log_window(window, step, time.perf_counter() - window_start)
                progress.update(step, last_loss)
                window = []
                try:
                    run.stop_if_asked(step)
                except Preempted:
                    progress.close()
                    raise
            if step % t.eval_every == 0 or done:
                last_metrics = run.evaluate(step)
            if step % t.checkpoint_every == 0 or done:
                run.save(step)
            if not window:  # keep evaluation and checkpoint time out of images/s
                window_start = time.perf_counter()
    progress.close()
    return run.finish(step, last_metrics)


class ProgressBar:
    """The training bar on an interactive main process; silent elsewhere (logs get the
    per-evaluation lines instead)."""

    def __init__(self, console, total: int, start: int):
        enabled = console.is_terminal and not console.quiet
        self.bar = progress_bar(console, "loss", enabled=enabled)
        self.task = self.bar.add_task("[bold]train", total=total, completed=start, loss="-")
        self.bar.start()

    def update(self, step: int, loss: float) -> None:
        self.bar.update(self.task, completed=step, loss=f"{loss:.5f}")

    def close(self) -> None:
        self.bar.stop()


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
