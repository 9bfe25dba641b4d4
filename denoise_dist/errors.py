"""Errors a user can act on, and how every entry point reports them.

A UserError (bad config, missing data, a run folder that holds another run) prints one
line and exits non-zero; so does an OSError (a full disk, a permission). Anything else is
a bug: one line that says so, and `--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input or environment, not a bug: no traceback needed."""

    exit_code = 1


class ConfigError(UserError):
    exit_code = 2


class DataError(UserError):
    exit_code = 2


class CheckpointError(UserError):
    exit_code = 1


class TrainingDiverged(UserError):
    exit_code = 1


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, for warnings that must stay on one line."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def one_line_warnings() -> None:
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def run_command(command: Callable[[], object], debug: bool) -> int:
    """Run an entry point's work and turn what it raises into an exit code and one line
    on stderr (or the traceback, with --debug). Exceptions that carry an `exit_code`
    (a preempted run's 75) exit with it."""
    try:
        command()
        return 0
    except KeyboardInterrupt:
        print("denoise-dist: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a permission problem: the user can act on it
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"denoise-dist: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:
        if debug:
            raise
        code = getattr(e, "exit_code", None)
        if isinstance(e, UserError) or code is not None:
            label = "error: " if isinstance(e, UserError) else ""
            print(f"denoise-dist: {label}{e}", file=sys.stderr)
            return code or 1
        print(
            f"denoise-dist: internal error: {type(e).__name__}: {e} "
            f"(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
