"""The machine a benchmark ran on: every figure is written down with it."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "batchvision",
    "torch",
    "torchvision",
    "ray",
    "numpy",
    "pillow",
    "pyarrow",
    "matplotlib",
)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def gpu_names() -> list[str]:
    """GPU names from ``nvidia-smi`` (no torch import here: the orchestrator stays light)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where /proc is missing)."""
    return [float(x) for x in _read("/proc/loadavg").split()[:3]]


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, GPUs, platform and library versions."""
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    mem = re.search(r"^MemTotal:\s+(\d+)", _read("/proc/meminfo"), re.M)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu.group(1).strip() if cpu else platform.processor(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "ram_gb": round(int(mem.group(1)) / 1024**2, 1) if mem else None,
        "gpus": gpu_names(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in LIBRARIES},
    }
