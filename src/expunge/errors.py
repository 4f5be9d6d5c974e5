"""User-facing errors and warnings: the CLI prints their message as one line, no traceback."""

from __future__ import annotations

import warnings


class ExpungeError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class ConfigError(ExpungeError):
    """A configuration key or value is wrong."""


class DataError(ExpungeError):
    """A data file is missing or malformed."""


class ModelError(ExpungeError):
    """A model path, hub id or adapter cannot be used."""


class OutputError(ExpungeError):
    """The output location cannot be written (read-only, not a directory, no permission)."""


class OutputExistsError(OutputError):
    """The output directory exists and --overwrite was not given."""


class ExpungeWarning(UserWarning):
    """Something the user should know that does not stop the run (a truncated example, a
    run too short to mean much); the CLI prints it as one ``warning:`` line on stderr."""


def warn(message: str) -> None:
    """Warn the user (``ExpungeWarning``); library callers can filter or record it."""
    warnings.warn(message, ExpungeWarning, stacklevel=2)
