"""Run one measurement in a fresh process and sample its whole process tree's memory.

A thread in the orchestrating process samples every process of the measurement's tree
(the measurement itself, its DataLoader workers, Ray's GCS, raylet and workers) from
``/proc``: the peak of the summed RSS (shared pages count once per process, so it
over-states) and of the summed PSS (shared pages split between their users). Linux only;
elsewhere the figures are 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class MeasurementError(RuntimeError):
    """A measurement's process failed; the message ends with the tail of its log."""


def _parents() -> dict[int, int]:
    """pid -> parent pid for every process visible in /proc."""
    parents: dict[int, int] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return parents
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields restart after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            parents[int(name)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def process_memory_kb(pid: int) -> tuple[int, int]:
    """``(rss, pss)`` in KiB; PSS falls back to RSS where smaps_rollup is unavailable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            text = f.read()
        rss = re.search(r"^Rss:\s+(\d+)", text, re.M)
        pss = re.search(r"^Pss:\s+(\d+)", text, re.M)
        if rss and pss:
            return int(rss.group(1)), int(pss.group(1))
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            m = re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M)
        rss_kb = int(m.group(1)) if m else 0
        return rss_kb, rss_kb
    except OSError:
        return 0, 0


class TreeSampler(threading.Thread):
    """Samples the summed RSS/PSS of a process tree until stopped; keeps the peaks."""

    def __init__(self, root: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        rss = pss = 0
        pids = process_tree(self.root)
        for pid in pids:
            r, p = process_memory_kb(pid)
            rss += r
            pss += p
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        """Stop sampling; the peaks in MB."""
        self._stop_event.set()
        self.join()
        return {
            "peak_tree_rss_mb": round(self.peak_rss_kb / 1024, 1),
            "peak_tree_pss_mb": round(self.peak_pss_kb / 1024, 1),
            "peak_processes": self.peak_processes,
            "samples": self.samples,
            "sample_interval_s": self.interval,
        }


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill the measurement and every process it started (Ray's raylet and workers too)."""
    for pid in reversed(process_tree(proc.pid)):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def run_measured(
    name: str,
    cmd: list[str],
    log_path: Path,
    result_path: Path,
    *,
    interval: float = 1.0,
    timeout: float = 3600.0,
    cwd: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process, sampling its tree's memory; returns its JSON result.

    The command writes its result as JSON to ``result_path``; ``memory`` (the sampler's
    peaks) and ``process_seconds`` (the process's whole life) are added to it.

    Raises:
        MeasurementError: the process failed, timed out or wrote no result.
    """
    logger.info("[%s] running (log: %s)", name, log_path)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            rc = -1
        except BaseException:
            kill_tree(proc)
            raise
        finally:
            memory = sampler.stop()
    elapsed = time.perf_counter() - start
    if rc != 0 or not result_path.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        why = f"timed out after {timeout:.0f} s" if rc == -1 else f"exit {rc}"
        raise MeasurementError(f"{name} failed ({why}); last lines of {log_path}:\n{tail}")
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    result["memory"] = memory
    result["process_seconds"] = round(elapsed, 2)
    logger.info("[%s] done in %.1f s", name, elapsed)
    return result
