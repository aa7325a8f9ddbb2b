"""Stopping a run cleanly on a signal: Ctrl-C (SIGINT) and SIGTERM interrupt it, and a batch
is written and counted whole or not at all.

Torch-free, so the command line can install the handlers before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, what schedulers send first, handled like Ctrl-C: the rows completed so far
    are written, the run is marked interrupted, and the process exits 143."""


class SigtermState:
    """A SIGTERM handler that raises :class:`Terminated` and remembers that it fired."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: object) -> None:
        self.received = True
        raise Terminated


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[SigtermState]:
    """Within the block, SIGTERM interrupts the run like Ctrl-C instead of ending the process
    with its rows unwritten; the handler that was there before comes back afterwards.

    Python runs signal handlers on the main thread only, so elsewhere this changes nothing
    (and ``received`` stays false).
    """
    state = SigtermState()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is None  # a handler set outside Python: leave it
    ):
        yield state
        return
    previous = signal.signal(signal.SIGTERM, state)
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """Put back the SIGTERM handler after the block, for calls that install their own
    (``ray.init`` installs one that exits at once, and the run's rows would be lost)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def defer_interrupts() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, so the rows of a batch are written and
    counted together; then hand the signal to the handler that was there.

    Without it, an interrupt between committing a part and resetting the buffer writes those
    rows twice, and one between writing and counting under-reports the run in its summary.
    Signals whose action is the default or ignore (no Python handler) are left as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held: dict[int, Any] = {}
    for sig in _INTERRUPTS:
        handler = signal.getsignal(sig)
        if callable(handler):
            held[sig] = handler
            signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for held_sig, previous in held.items():
            signal.signal(held_sig, previous)
    if received:
        held[received[0]](received[0], None)
