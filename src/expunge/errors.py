"""User-facing errors: the CLI prints their message without a traceback."""


class ExpungeError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class ConfigError(ExpungeError):
    """A configuration key or value is wrong."""


class DataError(ExpungeError):
    """A data file is missing or malformed."""


class ModelError(ExpungeError):
    """A model path, hub id or adapter cannot be used."""


class OutputExistsError(ExpungeError):
    """The output directory exists and --overwrite was not given."""
