"""Graceful stop on SIGUSR1/SIGTERM (SLURM's early warning before a time limit or
preemption). The handler only records the signal; the train loop checkpoints at the next
step boundary on all ranks together, then exits with PREEMPTED_EXIT_CODE."""

from __future__ import annotations

import signal

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; the sbatch scripts requeue on it
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    def __init__(self):
        self.signum: int | None = None

    def install(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None
