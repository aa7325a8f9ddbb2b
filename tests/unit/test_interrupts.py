"""SIGTERM and Ctrl-C interrupt a run, never in the middle of writing a batch: real signals,
sent to this process."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from batchvision.interrupts import Terminated, defer_interrupts, sigterm_interrupts


@pytest.fixture(autouse=True)
def _restore_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def _users_handler(signum: int, frame: object) -> None:
    raise AssertionError("the user's handler ran")


def test_sigterm_interrupts_the_block_and_gives_the_users_handler_back() -> None:
    signal.signal(signal.SIGTERM, _users_handler)
    with pytest.raises(Terminated), sigterm_interrupts() as state:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not interrupted")
    assert state.received
    assert isinstance(Terminated(), KeyboardInterrupt)  # every `except KeyboardInterrupt` sees it
    assert signal.getsignal(signal.SIGTERM) is _users_handler


def test_a_signal_during_a_batch_waits_for_its_end_then_reaches_the_handler() -> None:
    written: list[str] = []
    with pytest.raises(Terminated), sigterm_interrupts() as state:
        with defer_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            written.append("batch")  # the handler has run here, and held the signal
        raise AssertionError("the held signal was lost")
    assert written == ["batch"] and state.received

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in a terminal
    with pytest.raises(KeyboardInterrupt), defer_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        written.append("batch")
    assert written == ["batch", "batch"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_signal_stays_ignored_in_a_batch() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with defer_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_off_the_main_thread_nothing_changes() -> None:
    seen: list[object] = []

    def run() -> None:
        with sigterm_interrupts() as state, defer_interrupts():
            seen.append(signal.getsignal(signal.SIGTERM))
        seen.append(state.received)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [before, False]
