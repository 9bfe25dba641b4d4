"""Where metrics go: metrics.jsonl in the run folder always, W&B when asked for.

Only the main process logs. wandb is imported lazily, only for `--report-to wandb`, and
driven through Accelerate's tracker (`log_with="wandb"`, `init_trackers`). A W&B failure
is one warning and the run goes on without W&B; it never fails or hangs a run.

W&B steps are optimizer steps and only ever increase. A resumed run restarts from its
checkpoint, which may be older than the last step W&B saw before the job was killed: the
steps it replays up to that point go to metrics.jsonl again but not to W&B, which already
holds them (a replay computes the same values).
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
import socket
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch

from denoise_dist import figures
from denoise_dist.atomic import atomic_write_text
from denoise_dist.config import Config, NoiseConfig
from denoise_dist.metrics import psnr
from denoise_dist.preempt import PREEMPTED_EXIT_CODE

METRICS = "metrics.jsonl"
HIGH_WATER = "metrics_high_water.json"  # highest step logged before a resume dropped it
WANDB_DIR = "wandb"
WANDB_INIT_TIMEOUT_S = 30
WANDB_FINISH_TIMEOUT_S = 120
REACHABLE_TIMEOUT_S = 3
TABLE_COLUMNS = ["index", "noisy", "denoised", "clean", "psnr_noisy", "psnr_denoised",
                 "psnr_gain"]


# --- metrics.jsonl ----------------------------------------------------------------------

def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # a line torn by a kill mid-write: drop it and everything after
    return records


def logged_high_water(run_dir: Path) -> int:
    """Highest step ever logged in this run folder, counting records a resume dropped."""
    path = Path(run_dir) / HIGH_WATER
    remembered = json.loads(path.read_text())["step"] if path.exists() else 0
    return max([remembered, *(r["step"] for r in read_metrics(run_dir))])


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Keep only records up to `last_step`, so a resumed run never logs a step twice.

    The highest dropped step is remembered first: W&B may hold it already, and must not
    be sent it (or anything lower) again. A fresh start (step 0) is a new W&B run."""
    run_dir = Path(run_dir)
    high = logged_high_water(run_dir)
    if last_step == 0:
        (run_dir / HIGH_WATER).unlink(missing_ok=True)
    elif high > last_step:
        atomic_write_text(run_dir / HIGH_WATER, json.dumps({"step": high}))
    kept = [r for r in read_metrics(run_dir) if r["step"] <= last_step]
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


# --- what the dashboard shows -----------------------------------------------------------

def wandb_key(name: str) -> str:
    """metrics.jsonl name -> W&B chart name, grouped in sections: `loss` -> `train/loss`,
    `val_psnr@0.3` -> `val/psnr_sigma_0p3` (W&B can sort and filter only names made of
    letters, digits and underscores)."""
    section, _, rest = name.partition("_")
    if section not in ("train", "val", "test") or not rest:
        section, rest = "train", name
    return f"{section}/{rest.replace('@', '_sigma_').replace('.', 'p')}"


def describe_noise(noise: NoiseConfig) -> str:
    """The training noise in a few words, for captions."""
    if noise.noise == "gaussian":
        return f"gaussian sigma={noise.sigma:g}"
    if noise.noise == "gaussian_blind":
        return f"gaussian sigma={noise.sigma_min:g}..{noise.sigma_max:g} (blind)"
    if noise.noise == "salt_pepper":
        return f"salt & pepper {noise.salt_pepper:g}"
    return f"poisson {noise.photons:g} photons + gaussian sigma={noise.sigma:g}"


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[1, H, W] float in [0, 1] -> [H, W] uint8 (wandb renders float images black)."""
    return (image[0].float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


# --- choosing the W&B mode --------------------------------------------------------------

def default_base_url() -> str:
    try:
        import wandb

        return wandb.Settings().base_url
    except ImportError:
        return "https://api.wandb.ai"


def has_credentials(host: str, environ) -> bool:
    """An API key or identity token in the environment, or a .netrc entry for `host`."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = Path(environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(requested: str, environ=None) -> str:
    """auto: $WANDB_MODE if set; else online with credentials and a reachable W&B host,
    offline otherwise (a 3 s probe, so a cluster node without network never waits)."""
    if requested != "auto":
        return requested
    env = os.environ if environ is None else environ
    aliases = {"online": "online", "run": "online", "offline": "offline",
               "dryrun": "offline", "disabled": "disabled"}
    if env.get("WANDB_MODE") in aliases:
        return aliases[env["WANDB_MODE"]]
    url = urlsplit(env.get("WANDB_BASE_URL") or default_base_url())
    host = url.hostname or ""
    if not has_credentials(host, env):
        return "offline"
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((host, port), timeout=REACHABLE_TIMEOUT_S).close()
        return "online"
    except (OSError, ValueError):
        return "offline"


def _teardown_wandb() -> None:
    try:
        import wandb

        wandb.teardown()
    except Exception:
        pass  # best effort: the next attempt reports its own failure


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


# --- the tracker ------------------------------------------------------------------------

class Tracker:
    """Logs scalars, sample grids, a sample table and the best model from the main
    process; a no-op elsewhere. The first W&B failure warns once and drops W&B."""

    def __init__(self, accelerator, cfg: Config, run_dir: Path, wandb_run_id: str | None,
                 launch_facts: dict):
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.is_main = accelerator.is_main_process
        self.wandb_run_id = wandb_run_id or secrets.token_hex(4)
        self.noise_label = describe_noise(cfg.noise)
        self.run = None  # the wandb Run, while W&B is in use
        self.mode = None
        # A resumed W&B run may already hold steps up to here: send only later ones.
        self.sent_up_to = 0
        if self.is_main and cfg.tracking.report_to == "wandb":
            if wandb_run_id is not None:
                self.sent_up_to = logged_high_water(self.run_dir)
            self._init_wandb(cfg, launch_facts)

    # W&B plumbing

    def _init_wandb(self, cfg: Config, launch_facts: dict) -> None:
        mode = resolve_wandb_mode(cfg.tracking.wandb_mode)
        if mode == "disabled":
            return
        failures = []
        for attempt in dict.fromkeys([mode, "offline"]):  # online falls back to offline
            try:
                self._start_wandb(cfg, launch_facts, attempt)
                break
            except Exception as e:  # W&B must never take a training run down
                failures.append(f"{attempt}: {_one_line(e)}")
                self._drop_wandb()
                _teardown_wandb()  # a timed-out init still holds the run id in W&B's service
        if failures:
            outcome = (f"logging offline to {self.run_dir / WANDB_DIR}"
                       if self.run is not None else
                       "continuing without W&B; metrics.jsonl and figures/ still record "
                       "the run")
            warnings.warn(f"W&B init failed ({'; '.join(failures)}); {outcome}")

    def _start_wandb(self, cfg: Config, launch_facts: dict, mode: str) -> None:
        import wandb

        # Artifact and table files wait here until uploaded, so an offline run keeps
        # everything `wandb sync` needs inside the run folder.
        os.environ.setdefault("WANDB_DATA_DIR", str(self.run_dir / WANDB_DIR / "staging"))
        settings = {"console": "off", "silent": True}
        # Bounded waits, unless the user set W&B's own WANDB_INIT/FINISH_TIMEOUT.
        if "WANDB_INIT_TIMEOUT" not in os.environ:
            settings["init_timeout"] = WANDB_INIT_TIMEOUT_S
        if "WANDB_FINISH_TIMEOUT" not in os.environ:
            settings["finish_timeout"] = WANDB_FINISH_TIMEOUT_S
        init = {"dir": str(self.run_dir), "id": self.wandb_run_id, "resume": "allow",
                "mode": mode, "name": cfg.tracking.run_name or self.run_dir.resolve().name,
                "entity": cfg.tracking.wandb_entity, "settings": wandb.Settings(**settings)}
        self.accelerator.init_trackers(
            cfg.tracking.wandb_project, config={**cfg.to_dict(), "launch": launch_facts},
            init_kwargs={"wandb": init})
        self.run = self.accelerator.get_tracker("wandb", unwrap=True)
        self.wandb, self.mode = wandb, mode
        self.run.define_metric("val/psnr", summary="max")
        self.run.define_metric("val/ssim", summary="max")
        self.run.define_metric("train/loss", summary="min")

    def _drop_wandb(self) -> None:
        self.run = None
        self.accelerator.trackers = [t for t in self.accelerator.trackers if t.name != "wandb"]

    def _to_wandb(self, send) -> None:
        """Run one W&B call; the first failure warns and drops W&B for the rest of the run."""
        try:
            send()
        except Exception as e:
            warnings.warn(f"W&B logging failed ({_one_line(e)}); continuing without W&B. "
                          f"metrics.jsonl and figures/ still record the run.")
            self._drop_wandb()

    def _sends(self, step: int) -> bool:
        return self.run is not None and step > self.sent_up_to

    # what train.py calls

    def log(self, metrics: dict, step: int) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / METRICS, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self._sends(step):
            values = {wandb_key(k): v for k, v in metrics.items()}
            self._to_wandb(lambda: self.accelerator.log(values, step=step))

    def log_samples(self, noisy: torch.Tensor, denoised: torch.Tensor, clean: torch.Tensor,
                    step: int) -> None:
        """One evaluation's noisy | denoised | clean grid: a PNG in figures/samples/, and
        an image on W&B."""
        if not self.is_main:
            return
        grid = figures.sample_grid(noisy, denoised, clean)
        before, after = psnr(noisy, clean).mean().item(), psnr(denoised, clean).mean().item()
        caption = (f"{self.noise_label} | step {step} | PSNR {before:.2f} -> {after:.2f} dB "
                   f"(these {len(clean)} test images)")
        folder = self.run_dir / "figures" / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        figures.save_sample_figure(grid, folder / f"step_{step:08d}.png", caption)
        if self._sends(step):
            self._to_wandb(lambda: self.accelerator.log(
                {"samples": self.wandb.Image(grid, caption=caption)}, step=step))

    def log_sample_table(self, noisy: torch.Tensor, denoised: torch.Tensor,
                         clean: torch.Tensor, step: int) -> None:
        """A W&B table of the sample images with each one's PSNR before and after."""
        if not self._sends(step):
            return
        before, after = psnr(noisy, clean).tolist(), psnr(denoised, clean).tolist()

        def send():
            image = self.wandb.Image
            rows = [[i, image(to_uint8(n)), image(to_uint8(d)), image(to_uint8(c)), b, a, a - b]
                    for i, (n, d, c, b, a) in enumerate(zip(noisy, denoised, clean, before, after))]
            table = self.wandb.Table(columns=TABLE_COLUMNS, data=rows)
            self.accelerator.log({"sample_table": table}, step=step)

        self._to_wandb(send)

    def log_model(self, model_path: Path) -> None:
        """The best model (weights + its JSON) as a `model` artifact, aliases best, latest."""
        model_path = Path(model_path)
        if self.run is None or not model_path.is_file():
            return

        def send():
            meta = json.loads(model_path.with_suffix(".json").read_text())
            artifact = self.wandb.Artifact(
                f"model-{self.wandb_run_id}", type="model",
                description="denoise-dist best model by validation PSNR",
                metadata={k: meta.get(k) for k in ("model", "model_kwargs", "step", "val_psnr")})
            artifact.add_file(str(model_path))
            artifact.add_file(str(model_path.with_suffix(".json")))
            self.run.log_artifact(artifact, aliases=["best", "latest"])

        self._to_wandb(send)

    def finish(self, preempted: bool = False) -> None:
        """End the W&B run (bounded wait). Not accelerator.end_training(): that would also
        tear down the process group on the main process alone."""
        if self.run is None:
            return
        run = self.run

        def send():
            if preempted:
                run.mark_preempting()
            run.finish(exit_code=PREEMPTED_EXIT_CODE if preempted else 0)

        self._to_wandb(send)
        self._drop_wandb()
        if self.mode == "offline":
            print(f"W&B run {self.wandb_run_id} is saved offline; upload it with: wandb sync "
                  f"{self.run_dir / WANDB_DIR}/offline-run-*-{self.wandb_run_id}")
