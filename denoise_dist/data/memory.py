"""How much memory is free where a device's tensors live, counting the job's cgroup limit
(SLURM's --mem, a container's): the check before a folder is read, and the choice of
where its pixels are kept."""

from __future__ import annotations

import os
from pathlib import Path

import torch

CGROUP_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a huge number (2**63 - a page)


def bytes_available(device: torch.device) -> int:
    """Free memory where `device`'s tensors live: for the CPU, the host's free memory or
    what this job's cgroup (SLURM's --mem, a container's limit) still allows, if less."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        host = 2**63
    cgroup = cgroup_memory_free()
    return host if cgroup is None else min(host, cgroup)


def cgroup_memory_free(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> int | None:
    """Bytes this process's cgroup and every cgroup above it still allow (limit minus
    usage, the tightest), or None where none sets a limit. cgroup v2 and v1."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: memory.max / memory.current
            base, limit_file, usage_file = root, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # v1
            base = root / "memory"
            limit_file, usage_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        free = []
        folder = base / path.lstrip("/")
        while True:
            try:
                limit = (folder / limit_file).read_text().strip()
                if limit != "max" and int(limit) < CGROUP_NO_LIMIT:
                    free.append(int(limit) - int((folder / usage_file).read_text()))
            except (OSError, ValueError):
                pass  # not mounted here, or not readable: no limit known at this level
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
        if free:
            return max(0, min(free))
    return None
