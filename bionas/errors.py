"""Errors that carry a one-line message naming the problem and its fix.

The CLI prints ``str(err)`` of any :class:`BionasError` on one line and exits with status 2;
anything else is a bug and keeps its traceback.
"""


class BionasError(Exception):
    """Base class for user-facing errors (bad names, bad files, bad data)."""


class DataError(BionasError):
    """A dataset directory that is missing or not in a layout bionas reads."""


class ConfigError(BionasError, ValueError):
    """An option or configuration value that cannot be used."""


class UnknownNameError(ConfigError):
    """A name (rule, op, dataset, ...) that is not registered."""
