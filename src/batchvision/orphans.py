"""Processes a run starts end with it, even when it is killed with ``kill -9``.

- Decode workers (the local engine's DataLoader processes) ask the kernel for SIGKILL when
  their parent dies (Linux ``PR_SET_PDEATHSIG``), and a watchdog thread in each also ends
  it when its parent is gone (any POSIX system): without them, a worker blocked writing to
  a queue nobody reads lives on, holding its memory.
- A local Ray instance (``--engine ray`` without an address): Ray ties its GCS and raylet
  to the driver, but the raylet's agents (dashboard agent, runtime-env agent) outlive a
  killed driver. :class:`Reaper` is a small process that, when the driver dies without
  ending the instance, kills what the driver started.

This module imports nothing heavy: the reaper runs it as a script.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

#: How often a watchdog or the reaper looks at its parent, in seconds.
POLL_S = 1.0
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` (the pid it was started by) dies.

    Call it first thing in a child process. PR_SET_PDEATHSIG fires when the parent
    *thread* that started this process exits; the engine starts its workers on the thread
    that runs the whole run, so that is when the run ends.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog below still ends it
            pass
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="parent-watchdog", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os._exit(1)


class Reaper:
    """Kills the processes this process starts (a local Ray instance's) if it dies first.

    :meth:`start` before starting them, :meth:`stop` after ending them normally. The reaper
    runs in its own session, so the terminal's Ctrl-C and a ``kill`` of the driver's process
    group do not reach it; it learns of the driver's death from the end of its stdin pipe.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, import_path: str) -> None:
        """Start watching this process; ``import_path`` is a folder holding ``psutil``."""
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(os.getpid()), import_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        """The processes were ended normally: tell the reaper to leave without killing."""
        proc, self._proc = self._proc, None
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(b"stop\n")
            proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


def _reap(parent: int) -> None:
    """Watch ``parent``'s descendants; kill them if the parent dies without saying stop."""
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = time.time() - 1.0
    outcome: list[bytes] = []
    ended = threading.Event()

    def read_stdin() -> None:
        outcome.append(sys.stdin.buffer.read())  # to EOF: the driver closed it, or died
        ended.set()

    threading.Thread(target=read_stdin, daemon=True).start()
    known: dict[int, Any] = {}
    while not ended.wait(POLL_S):
        _look(parent, known, started)
    if outcome and outcome[0].startswith(b"stop"):
        return
    _look(parent, known, started)  # the orphans now belong to init: known from earlier looks
    for proc in known.values():
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(list(known.values()), timeout=10)


def _look(parent: int, known: dict[int, Any], started: float) -> None:
    """Add the Ray processes ``parent`` started since ``started``, and all theirs, to
    ``known``; forget those that ended. One pass over the process table."""
    import psutil

    children: dict[int, list[Any]] = {}
    for proc in psutil.process_iter(["ppid", "create_time"]):
        children.setdefault(proc.info["ppid"], []).append(proc)
    for pid in [pid for pid, proc in known.items() if not proc.is_running()]:
        del known[pid]  # is_running() is also false for a reused pid: it compares start times
    todo = list(known.values())
    for child in children.get(parent, []):
        try:
            # Not the user's own processes started before the run, nor this reaper.
            if child.pid == os.getpid() or child.info["create_time"] < started:
                continue
            if "ray" in " ".join(child.cmdline()):
                todo.append(child)
        except psutil.Error:
            continue
    seen: set[int] = set()
    while todo:
        proc = todo.pop()
        if proc.pid in seen:
            continue
        seen.add(proc.pid)
        known.setdefault(proc.pid, proc)
        todo.extend(children.get(proc.pid, []))


if __name__ == "__main__":
    sys.path[:0] = sys.argv[2:]
    _reap(int(sys.argv[1]))
