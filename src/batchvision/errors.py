"""Exceptions that carry the process exit code the CLI should use.

Exit codes (documented in the README):
    0  every image processed, error fraction within --max-error-rate
    1  unexpected internal error (a bug: please report it with the traceback)
    2  bad usage: a bad argument, missing input, unknown model or weights, refused output folder
    3  the run finished and wrote everything, but too many images failed (--max-error-rate)
    130 interrupted (Ctrl-C); completed rows are written and the run can be resumed
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_TOO_MANY_ERRORS = 3
EXIT_INTERRUPTED = 130


class BatchvisionError(Exception):
    """Base class for errors that are the user's to fix; the CLI prints them as one line."""

    exit_code = EXIT_USAGE


class ConfigError(BatchvisionError, ValueError):
    """A bad option value, input or combination of options."""


class ModelLoadError(BatchvisionError):
    """The model or its weights could not be built or loaded."""


class OutputDirError(BatchvisionError):
    """The output folder cannot be used as asked (not empty, not ours, ...)."""
