"""What a person watching a command sees: the one progress bar that `train` and
`evaluate` share. rich is imported only when a bar is made."""

from __future__ import annotations


def progress_bar(console, *fields: str, enabled: bool = True, transient: bool = False):
    """A rich Progress on `console`: the task's description, a bar, done/total, each of
    `fields` (a task field, e.g. "loss"), time elapsed and time left. Disabled (draws
    nothing) unless `enabled`; `transient` erases it when it stops."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=transient,
    )
