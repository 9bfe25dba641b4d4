"""Experiment trackers ("sinks"): one file per tracker in this folder.

Every module here that defines `SINK`, a `Sink` subclass, is a tracker; its `name` is a
`--report-to` choice and the Accelerate tracker (`log_with` name) it drives. So adding a
tracker is adding one file. Trackers are imported lazily by their modules (wandb only
when a run reports to W&B), so this table costs nothing to build.
"""

from __future__ import annotations

import importlib
import pkgutil

from denoise_dist.trackers.base import RunInfo, Sink


def _discover() -> dict[str, type[Sink]]:
    sinks = {}
    for module in pkgutil.iter_modules(__path__):
        sink = getattr(importlib.import_module(f"{__name__}.{module.name}"), "SINK", None)
        if sink is not None:
            sinks[sink.name] = sink
    return dict(sorted(sinks.items()))


SINKS: dict[str, type[Sink]] = _discover()

__all__ = ["SINKS", "RunInfo", "Sink"]
