"""Exceptions that carry the process exit code the CLI should use.

Exit codes (documented in the README):
    0  every image processed, error fraction within --max-error-rate
    1  unexpected internal error (a bug: please report it with the traceback)
    2  bad usage: a bad argument, missing input, unknown model or weights, refused output
       folder, or object storage refusing the credentials (checked up front, and also
       raised if it happens mid-run)
    3  the run finished and wrote everything, but too many images failed (--max-error-rate)
    4  writing the output failed mid-run (disk full, storage refusing writes): the parts
       written before are complete, the manifest says "failed"; fix the cause, then run
       the same command with --resume
    130 interrupted (Ctrl-C, or SIGINT from a scheduler or script); completed rows are
        written and the run can be resumed
    143 terminated (SIGTERM, what schedulers send first); as 130: completed rows are
        written and the run can be resumed
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_TOO_MANY_ERRORS = 3
EXIT_OUTPUT_FAILED = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class BatchvisionError(Exception):
    """Base class for errors that are the user's to fix; the CLI prints them as one line."""

    exit_code = EXIT_USAGE


class RowError(Exception):
    """A failure that costs one input its row (an error row), never the run.

    ``str(error)`` is the row's ``error`` value: ``"code: message"``, where ``code`` is short
    and stable so that summaries and reports can group by it.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[Exception], tuple[str, str]]:
        # Pickle with both arguments (the default would pass only the joined text).
        return (type(self), (self.code, self.message))


class ConfigError(BatchvisionError, ValueError):
    """A bad option value, input or combination of options."""


class ModelLoadError(BatchvisionError):
    """The model or its weights could not be built or loaded."""


class OutputDirError(BatchvisionError):
    """The output folder cannot be used as asked (not empty, not ours, ...)."""


class StorageAuthError(BatchvisionError):
    """Object storage refused the credentials (bad or expired keys, access denied).

    Never an error row: every later read would fail the same way, so the run stops.
    """


class OutputWriteError(OutputDirError):
    """Writing to the output failed mid-run (disk full, storage refusing writes).

    The parts committed before are intact and ``--resume`` redoes the rest.
    """

    exit_code = EXIT_OUTPUT_FAILED
