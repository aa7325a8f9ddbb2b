"""What the driver costs as the number of inputs grows: both engines, side by side.

The workload of issue 12: a ``.txt`` manifest of N hard links to one 320x240 JPEG,
``mobilenet_v3_small`` with random weights at 32 px, batches of 256, 256 rows a part. Each
run is ``batchvision run`` in its own process (the driver); this script samples that
process (not its children: Ray's raylet and workers, the local engine's decode workers)
every 50 ms for its CPU time and resident memory, and notes when the first part is
committed. A run is stopped with SIGINT after ``--max-seconds`` (the rows committed by then
count), so large N measure planning, the first row and the driver's steady state without
running to the end.

Reported per engine and N: seconds to the first committed part, rows committed, rows/s
from the first part to the end (the steady state), the driver's CPU microseconds per row
over that span (planning excluded: it is reported as the CPU spent before the first
part), and the driver's peak RSS.

Usage::

    PYTHONPATH=src python benchmarks/bench_driver.py [--sizes 10000,100000,1000000]
        [--engines local,ray] [--max-seconds 120] [--part-rows 256]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from batchvision.demo import synth

TICK = os.sysconf("SC_CLK_TCK")


#: Links per copy of the JPEG (ext4 allows 65,000 links to one file).
LINKS_PER_FILE = 50_000


def make_inputs(root: Path, n: int) -> Path:
    """``n`` hard links to one JPEG (copies of it, 50,000 links each) in folders of 10,000,
    listed in a .txt manifest."""
    data = root / "base.jpg"
    if not data.exists():
        synth.photo_like(np.random.default_rng(0), (320, 240)).save(data, quality=90)
    manifest = root / f"inputs_{n}.txt"
    if manifest.exists():
        return manifest
    lines = []
    for i in range(n):
        folder = root / "img" / f"{i // 10_000:04d}"
        if i % 10_000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:08d}.jpg"
        base = root / f"base_{i // LINKS_PER_FILE}.jpg"
        if i % LINKS_PER_FILE == 0 and not base.exists():
            base.write_bytes(data.read_bytes())
        if not path.exists():
            os.link(base, path)
        lines.append(str(path.relative_to(root)))
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def make_weights(root: Path) -> Path:
    path = root / "mnv3s.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    return path


def proc_sample(pid: int) -> tuple[float, int] | None:
    """CPU seconds (user + system) and RSS bytes of ``pid`` alone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError):
        return None
    return (int(stat[11]) + int(stat[12])) / TICK, rss


def committed_rows(out: Path) -> int:
    rows = 0
    for p in out.glob("part-*"):
        for field in p.name.split("-"):
            if field.startswith("n") and field[1:].isdigit():
                rows += int(field[1:])
    return rows


def one_run(
    engine: str, manifest: Path, weights: Path, out: Path, max_seconds: float, part_rows: int
) -> dict[str, float | int | str]:
    args = [
        sys.executable, "-m", "batchvision", "run", str(manifest), "-m", "mobilenet_v3_small",
        "-w", str(weights), "--resize-size", "32", "--crop-size", "32", "-b", "256",
        "--part-rows", str(part_rows), "-o", str(out), "--engine", engine, "-q",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.monotonic()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    first: tuple[float, float] | None = None  # (seconds, driver CPU) at the first part
    last_cpu = 0.0
    stopped = False
    while proc.poll() is None:
        sample = proc_sample(proc.pid)
        if sample is not None:
            last_cpu, rss = sample
            peak = max(peak, rss)
        now = time.monotonic() - start
        if first is None and any(out.glob("part-*")):
            first = (now, last_cpu)
        if not stopped and now > max_seconds:
            proc.send_signal(signal.SIGINT)
            stopped = True
        time.sleep(0.05)
    wall = time.monotonic() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode not in (0, 130):
        raise RuntimeError(f"{engine} exited {proc.returncode}: {stderr[-2000:]}")
    rows = committed_rows(out)
    first_s, first_cpu = first if first is not None else (wall, last_cpu)
    span = max(1e-9, wall - first_s)
    return {
        "engine": engine,
        "first_part_s": round(first_s, 2),
        "rows": rows,
        "wall_s": round(wall, 2),
        "rows_per_s": round(rows / span, 1),
        "planning_cpu_s": round(first_cpu, 2),
        "driver_cpu_us_per_row": round(1e6 * (last_cpu - first_cpu) / max(1, rows), 2),
        "driver_cpu_s": round(last_cpu, 2),
        "peak_rss_mb": round(peak / 2**20, 1),
        "stopped": stopped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--part-rows", type=int, default=256)
    parser.add_argument("--root", default=None, help="where inputs are made (kept)")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="bench_driver_"))
    root.mkdir(parents=True, exist_ok=True)
    weights = make_weights(root)
    for n in (int(s) for s in args.sizes.split(",")):
        manifest = make_inputs(root, n)
        for engine in args.engines.split(","):
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                row = one_run(
                    engine, manifest, weights, Path(tmp) / "out", args.max_seconds, args.part_rows
                )
            print(json.dumps({"inputs": n, **row}), flush=True)


if __name__ == "__main__":
    main()
