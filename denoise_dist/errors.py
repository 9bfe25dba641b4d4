"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


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
