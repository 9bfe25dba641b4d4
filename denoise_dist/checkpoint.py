"""Atomic, verified checkpoints and automatic resume.

A checkpoint is a folder `checkpoints/step_XXXXXXXX/` holding `accelerator.save_state`'s
files, our `train_state.json`, any extra weights (the EMA) as safetensors, and last a
`manifest.json` with each file's size and SHA-256. It is written under a `.partial` name
and renamed into place only when complete, so a kill at any moment leaves the previous
checkpoints untouched. On resume a checkpoint
whose manifest is missing or does not match is skipped with a warning.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

from denoise_dist.atomic import atomic_write_text, fsync_dir, sha256_file
from denoise_dist.config import Config, diff
from denoise_dist.errors import CheckpointError

CHECKPOINTS = "checkpoints"
STATE_FILE = "train_state.json"
MANIFEST = "manifest.json"
NAME = re.compile(r"^step_(\d{8})$")
# Fields that may change between a run and its resume without changing what is trained.
# (max_steps and epochs may change only where the schedule does not depend on the run's
# length: `check_length`.)
# fmt: off
RESUMABLE_FIELDS = frozenset({
    "data_dir", "download", "eval_sigmas", "max_steps", "epochs", "eval_every", "log_every",
    "output_dir", "resume", "overwrite", "checkpoint_every", "keep_checkpoints", "debug",
    "cpu", "mixed_precision", "compile", "cuda_graph", "deterministic", "dist_timeout", "profile",
    "report_to", "wandb_mode", "wandb_project", "wandb_entity", "run_name", "recipe",
    "allow_data_change",
})
# fmt: on


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete-looking checkpoint folders, newest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in files
    }
    atomic_write_text(folder / MANIFEST, json.dumps(entries, indent=1, sort_keys=True))


def verify(folder: Path) -> str | None:
    """None if the checkpoint matches its manifest, else what is wrong with it."""
    try:
        entries = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return "missing or unreadable manifest"
    for name, expected in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, manifest says {expected['size']}"
        if sha256_file(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    if STATE_FILE not in entries:
        return f"{STATE_FILE} is missing"
    return None


def latest_valid(run_dir: Path) -> Path | None:
    """Newest checkpoint that verifies; warns about each bad one it skips."""
    for folder in list_checkpoints(run_dir):
        problem = verify(folder)
        if problem is None:
            return folder
        warnings.warn(f"skipping corrupt checkpoint {folder}: {problem}", stacklevel=2)
    return None


def read_state(folder: Path) -> dict:
    return json.loads((folder / STATE_FILE).read_text())


def check_compatible(saved: Config, current: Config, where: Path) -> None:
    changed = diff(saved, current, ignore=RESUMABLE_FIELDS)
    if changed:
        raise CheckpointError(
            f"{where} was trained with a different config ({'; '.join(changed)}); use "
            f"another --output-dir, or --overwrite to replace it"
        )


def check_length(
    saved: Config, saved_total: int | None, current: Config, total: int, where: Path
) -> None:
    """Refuse a resume that changes the run's length where the learning-rate schedule
    depends on it: the resumed steps would not be the ones of either run."""
    if saved_total is None or saved_total == total or current.optim.schedule == "constant":
        return
    fields = [
        f for f in ("max_steps", "epochs") if getattr(saved.train, f) != getattr(current.train, f)
    ]
    named = " and ".join(f"--{f.replace('_', '-')}" for f in fields) or "the run length"
    raise CheckpointError(
        f"{where} was started for {saved_total} steps; {named} now asks for {total}, and its "
        f"{current.optim.schedule} learning-rate schedule depends on the total, so the resumed "
        f"run would match neither. Keep the length, or start a new --output-dir (a constant "
        f"schedule can be extended exactly)"
    )


def save_checkpoint(
    accelerator,
    run_dir: Path,
    step: int,
    state: dict,
    keep: int,
    extra: dict[str, dict] | None = None,
) -> Path:
    """Save on all ranks together; rename into place only once every file is on disk.
    `extra`: more weights (file name -> state dict), written by the main process."""
    final = checkpoint_dir(run_dir, step)
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            atomic_write_text(partial / STATE_FILE, json.dumps(state, indent=2, sort_keys=True))
            for name, tensors in (extra or {}).items():
                save_tensors(tensors, partial / name)
            write_manifest(partial)  # last: its presence means the rest is complete
            if final.exists():  # same step saved again (e.g. a resumed run's last step)
                shutil.rmtree(final)
            partial.rename(final)
            fsync_dir(final.parent)
            prune(run_dir, keep)
    except Exception as e:  # a full disk surfaces as OSError or as torch's RuntimeError
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        previous = [p.name for p in list_checkpoints(run_dir) if p != final]
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        free_mb = shutil.disk_usage(run_dir).free / 2**20
        raise CheckpointError(
            f"checkpoint at step {step} failed ({reason}; {free_mb:.1f} MB free in {run_dir}); "
            f"stopping rather than train without checkpoints. Last good checkpoint: "
            f"{previous[0] if previous else 'none'}"
        ) from None
    accelerator.wait_for_everyone()
    return final


def prune(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def save_tensors(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path, device) -> dict | None:
    """Weights saved with `extra`, or None if this checkpoint has none under that name."""
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device)) if path.is_file() else None


def load_checkpoint(accelerator, folder: Path) -> dict:
    """Restore model, optimizer and RNG states in place; return our training state."""
    problem = verify(folder) or unsafe_pickle(folder)
    if problem:
        raise CheckpointError(f"cannot resume from {folder}: {problem}")
    accelerator.load_state(str(folder))
    return read_state(folder)


PICKLED = (".bin", ".pkl", ".pt")


def unsafe_pickle(folder: Path) -> str | None:
    """What is wrong with the first pickled file that torch's weights-only unpickler (with
    Accelerate's allow-list, as `load_state` uses) refuses, or None. Checked here because
    `load_state` swallows any error loading the RNG-state files and resumes without them."""
    from accelerate.utils import load

    for path in sorted(p for p in folder.iterdir() if p.suffix in PICKLED):
        try:
            load(str(path), map_location="cpu")
        except Exception as e:  # UnpicklingError, or anything a crafted file raises
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            return f"{path.name} is not a plain tensor file; refused to unpickle it ({reason})"
    return None


def agree_on_resume(accelerator, chosen: Path | None) -> None:
    """Refuse to train unless every rank chose the same checkpoint (or none). Each rank
    chooses on its own, and a node of a shared file system may see an older checkpoint
    than another; DDP does not broadcast weights after wrapping, so the ranks would
    train on apart, silently."""
    import torch

    step = read_state(chosen)["step"] if chosen is not None else -1
    steps = accelerator.gather(torch.tensor([step], device=accelerator.device)).tolist()
    if len(set(steps)) > 1:
        by_rank = ", ".join(
            f"rank {rank}: {'none' if s < 0 else f'step {s}'}" for rank, s in enumerate(steps)
        )
        raise CheckpointError(
            f"the processes chose different checkpoints to resume from ({by_rank}); they "
            f"do not all see the same files in {CHECKPOINTS}/ (a shared file system that is "
            f"not yet in sync, or a checkpoint that verifies on one node only). Wait and "
            f"rerun, or pass --resume <checkpoint folder>"
        )
