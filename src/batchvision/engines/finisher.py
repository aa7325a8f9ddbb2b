"""Finish batches on a background thread while the model runs the next one.

After the model, a batch still has host work: waiting for its outputs to reach the host,
postprocessing, building its Arrow table and handing it to the writer (which every
``--part-rows`` rows compresses a part and writes it, an fsync or an S3 PUT). Done on the
model's thread, that work leaves the device (or, on the CPU, the model's cores) idle
between batches. :class:`Finisher` runs it on one thread, in the order the batches were
submitted (so parts hold the same rows as before), at most ``depth`` batches behind: memory
stays bounded and a slow output slows the model down instead of piling up.

The finishing thread is never interrupted by a signal (Python delivers them to the main
thread), so a batch it has taken is written and counted whole; on Ctrl-C the engine
:meth:`~Finisher.close`\\ s it, which finishes every batch already submitted.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class Finisher:
    """Runs ``finish(item)`` for each submitted item, in order, on one thread.

    An exception in ``finish`` stops the thread (later items are not finished) and is
    raised in the submitting thread by the next :meth:`submit` or by :meth:`close`.
    """

    def __init__(self, finish: Callable[[Any], None], depth: int = 2, name: str = "finish"):
        self._finish = finish
        self._queue: queue.Queue[Any] = queue.Queue(max(1, depth))
        self._error: BaseException | None = None
        self._failed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._failed.is_set():
                continue  # drain, so a blocked submit or close can go on
            try:
                self._finish(item)
            except BaseException as e:  # handed to the submitting thread
                self._error = e
                self._failed.set()

    def submit(self, item: Any) -> None:
        """Queue ``item``; blocks while ``depth`` items wait. Raises the thread's error."""
        self._raise()
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                self._raise()

    def close(self) -> None:
        """Finish every submitted item, end the thread, and raise its error if any."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
