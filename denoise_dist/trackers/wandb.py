"""Weights & Biases, through Accelerate's WandBTracker.

Offline first: `--wandb-mode auto` goes online only with credentials and a W&B host that
answers within 3 s, and an online start that fails falls back to offline. Everything W&B
writes stays in <run>/wandb/, ready for `wandb sync`. Images go as uint8 (W&B renders
float images black).
"""

from __future__ import annotations

import json
import netrc
import os
import socket
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from denoise_dist.errors import one_line
from denoise_dist.preempt import PREEMPTED_EXIT_CODE
from denoise_dist.trackers.base import Sample, Sink, StartFailed

WANDB_DIR = "wandb"
INIT_TIMEOUT_S = 30
FINISH_TIMEOUT_S = 120
REACHABLE_TIMEOUT_S = 3
TABLE_COLUMNS = ["index", "noisy", "denoised", "clean", "psnr_noisy", "psnr_denoised", "psnr_gain"]
MODE_ALIASES = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}


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
    if env.get("WANDB_MODE") in MODE_ALIASES:
        return MODE_ALIASES[env["WANDB_MODE"]]
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


def _teardown() -> None:
    try:
        import wandb

        wandb.teardown()
    except Exception:
        pass  # best effort: the next attempt reports its own failure


class WandbSink(Sink):
    name = "wandb"

    def start(self) -> bool:
        mode = resolve_wandb_mode(self.settings.wandb_mode)
        if mode == "disabled":
            return False
        failures = []
        for attempt in dict.fromkeys([mode, "offline"]):  # online falls back to offline
            try:
                self._start(attempt)
                break
            except Exception as e:
                failures.append(f"{attempt}: {one_line(e)}")
                _teardown()  # a timed-out init still holds the run id in W&B's service
        else:
            raise StartFailed("; ".join(failures))
        if failures:
            warnings.warn(
                f"W&B init failed ({'; '.join(failures)}); logging offline to "
                f"{self.info.run_dir / WANDB_DIR}",
                stacklevel=2,
            )
        return True

    def _start(self, mode: str) -> None:
        import wandb
        from accelerate.tracking import WandBTracker

        # Artifact and table files wait here until uploaded, so an offline run keeps
        # everything `wandb sync` needs inside the run folder.
        os.environ.setdefault("WANDB_DATA_DIR", str(self.info.run_dir / WANDB_DIR / "staging"))
        settings: dict = {"console": "off", "silent": True}
        # Bounded waits, unless the user set W&B's own WANDB_INIT/FINISH_TIMEOUT.
        if "WANDB_INIT_TIMEOUT" not in os.environ:
            settings["init_timeout"] = INIT_TIMEOUT_S
        if "WANDB_FINISH_TIMEOUT" not in os.environ:
            settings["finish_timeout"] = FINISH_TIMEOUT_S
        tracker = WandBTracker(
            self.info.project,
            dir=str(self.info.run_dir),
            id=self.info.run_id,
            resume="allow",
            mode=mode,
            name=self.info.name,
            entity=self.settings.wandb_entity,
            settings=wandb.Settings(**settings),
        )
        tracker.start()
        tracker.store_init_configuration({**self.info.config, "launch": self.info.launch})
        self.wandb, self.run, self.mode = wandb, tracker.run, mode
        self.run.define_metric("val/psnr", summary="max")
        self.run.define_metric("val/ssim", summary="max")
        self.run.define_metric("train/loss", summary="min")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_grid(self, grid: np.ndarray, caption: str, step: int) -> None:
        self.run.log({"samples": self.wandb.Image(grid, caption=caption)}, step=step)

    def log_samples(self, samples: list[Sample], step: int) -> None:
        image = self.wandb.Image
        rows = [
            [
                i,
                image(s.noisy),
                image(s.denoised),
                image(s.clean),
                s.psnr_noisy,
                s.psnr_denoised,
                s.psnr_denoised - s.psnr_noisy,
            ]
            for i, s in enumerate(samples)
        ]
        columns: list[str | int] = list(TABLE_COLUMNS)
        table = self.wandb.Table(columns=columns, data=rows)
        self.run.log({"sample_table": table}, step=step)

    def log_model(self, path: Path) -> None:
        """The best model (weights + its JSON) as a `model` artifact, aliases best, latest."""
        meta = json.loads(path.with_suffix(".json").read_text())
        artifact = self.wandb.Artifact(
            f"model-{self.info.run_id}",
            type="model",
            description="denoise-dist best model by validation PSNR",
            metadata={k: meta.get(k) for k in ("model", "model_kwargs", "step", "val_psnr")},
        )
        artifact.add_file(str(path))
        artifact.add_file(str(path.with_suffix(".json")))
        self.run.log_artifact(artifact, aliases=["best", "latest"])

    def finish(self, preempted: bool) -> None:
        if preempted:
            self.run.mark_preempting()
        self.run.finish(exit_code=PREEMPTED_EXIT_CODE if preempted else 0)

    def describe(self) -> str:
        if self.mode != "offline":
            return ""
        return (
            f"W&B run {self.info.run_id} is saved offline; upload it with: wandb sync "
            f"{self.info.run_dir / WANDB_DIR}/offline-run-*-{self.info.run_id}"
        )


SINK = WandbSink
