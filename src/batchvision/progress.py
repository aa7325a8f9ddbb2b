"""Progress display for the CLI: a tqdm bar on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from batchvision.engines.base import ProgressUpdate

logger = logging.getLogger("batchvision")


class ProgressDisplay:
    """Callable progress sink; ``mode`` is ``bar``, ``log`` or ``quiet``."""

    def __init__(self, mode: str, log_interval: float = 5.0) -> None:
        self.mode = mode
        self.log_interval = log_interval
        self._bar: Any = None
        self._last_log = 0.0

    @classmethod
    def for_terminal(cls, quiet: bool) -> ProgressDisplay:
        if quiet:
            return cls("quiet")
        return cls("bar" if sys.stderr.isatty() else "log")

    def __call__(self, update: ProgressUpdate) -> None:
        if self.mode == "bar":
            self._draw(update)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last_log >= self.log_interval:
                self._last_log = now
                logger.warning(_line(update))

    def _draw(self, update: ProgressUpdate) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=update.total, unit="img", dynamic_ncols=True, smoothing=0.1)
        if update.total is not None and self._bar.total != update.total:
            self._bar.total = update.total
        self._bar.update(update.done - self._bar.n)
        self._bar.set_postfix(errors=update.errors, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _line(u: ProgressUpdate) -> str:
    rate = u.done / u.elapsed if u.elapsed > 0 else 0.0
    total = "?" if u.total is None else str(u.total)
    eta = ""
    if u.total is not None and rate > 0:
        eta = f", ETA {max(0.0, (u.total - u.done) / rate):.0f} s"
    return f"progress: {u.done}/{total} images, {rate:.1f} img/s, {u.errors} errors{eta}"
