"""Where metrics go: metrics.jsonl in the run folder always, W&B when asked for.

Only the main process logs. wandb is imported lazily (through Accelerate's tracker) and
only when `--report-to wandb`; a W&B failure is a warning, never a failed run.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import warnings
from pathlib import Path

from denoise_dist.atomic import atomic_write_text
from denoise_dist.config import Config

METRICS = "metrics.jsonl"
WANDB_INIT_TIMEOUT_S = 30


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


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Keep only records up to `last_step`, so a resumed run never logs a step twice."""
    kept = [r for r in read_metrics(run_dir) if r["step"] <= last_step]
    atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


def resolve_wandb_mode(requested: str) -> str:
    """auto: online with an API key and a reachable W&B host, offline otherwise."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    if not os.environ.get("WANDB_API_KEY") and not (Path.home() / ".netrc").exists():
        return "offline"
    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=3).close()
        return "online"
    except OSError:
        return "offline"


class Tracker:
    """Logs scalars and images from the main process; a no-op elsewhere."""

    def __init__(self, accelerator, cfg: Config, run_dir: Path, wandb_run_id: str | None,
                 launch_facts: dict):
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.is_main = accelerator.is_main_process
        self.wandb_run_id = wandb_run_id or secrets.token_hex(4)
        self.wandb = None
        if self.is_main and cfg.tracking.report_to == "wandb":
            self._init_wandb(cfg, launch_facts)

    def _init_wandb(self, cfg: Config, launch_facts: dict) -> None:
        mode = resolve_wandb_mode(cfg.tracking.wandb_mode)
        if mode == "disabled":
            return
        init = {
            "dir": str(self.run_dir), "id": self.wandb_run_id, "resume": "allow", "mode": mode,
            "name": cfg.tracking.run_name, "entity": cfg.tracking.wandb_entity,
        }
        try:
            import wandb

            init["settings"] = wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S,
                                              console="off", silent=True)
            self.accelerator.init_trackers(
                cfg.tracking.wandb_project, config={**cfg.to_dict(), "launch": launch_facts},
                init_kwargs={"wandb": init})
            self.wandb = wandb
        except Exception as e:  # W&B must never take a training run down
            warnings.warn(f"W&B init failed ({type(e).__name__}: {e}); continuing without "
                          f"W&B. metrics.jsonl and figures/ still record the run.")

    def log(self, metrics: dict, step: int) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / METRICS, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb is not None:
            self.accelerator.log(metrics, step=step)

    def log_image(self, key: str, image, caption: str, step: int) -> None:
        """`image` is a uint8 array (wandb renders float [0,1] tensors black)."""
        if self.is_main and self.wandb is not None:
            self.accelerator.log({key: self.wandb.Image(image, caption=caption)}, step=step)

    def finish(self) -> None:
        if self.is_main and self.wandb is not None:
            self.accelerator.end_training()
