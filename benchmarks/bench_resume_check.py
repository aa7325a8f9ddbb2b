"""What ``--resume``'s part check costs: whole parts read for their CRC-32 vs only the columns
resume needs.

Writes an embedding output (``--rows`` rows of ``--dim`` float32, 10,000 rows a part) with
batchvision's own part writer, then times, from a cold page cache where this process may
drop it (root), ``outdir.read_written`` (every part read whole and checked against the
CRC-32 in its name, as ``--resume`` does) against reading only the ``id`` and ``status``
columns of every part. The two are measured side by side in one run.

Usage::

    PYTHONPATH=src python benchmarks/bench_resume_check.py [--rows 200000] [--dim 768]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

from batchvision.io import outdir, sinks

PART_ROWS = 10_000


def write_output(out: str, rows: int, dim: int) -> None:
    writer = sinks.PartWriter(out, "parquet", part_rows=PART_ROWS, flush_seconds=1e9, run_id="r1")
    rng = np.random.default_rng(0)
    for start in range(0, rows, PART_ROWS):
        n = min(PART_ROWS, rows - start)
        names = [f"dir/img_{i:09d}.jpg" for i in range(start, start + n)]
        batch = {
            "id": np.array(names, dtype=object),
            "path": np.array([f"/data/{p}" for p in names], dtype=object),
            "status": np.array(["ok"] * n, dtype=object),
            "error": np.array([None] * n, dtype=object),
            "width": np.full(n, 640),
            "height": np.full(n, 480),
            "embedding": rng.standard_normal((n, dim), dtype=np.float32),
        }
        writer.add(sinks.batch_to_table(batch))
    writer.close()


def drop_caches() -> bool:
    os.sync()
    with contextlib.suppress(OSError), open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
        return True
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        write_output(out, args.rows, args.dim)
        files = sorted(os.path.join(out, f) for f in os.listdir(out) if f.startswith("part-"))
        size = sum(os.path.getsize(f) for f in files)
        cold = drop_caches()
        t = time.perf_counter()
        written = outdir.read_written(out, None, {"run_ids": ["r1"]})
        whole = time.perf_counter() - t
        drop_caches()
        t = time.perf_counter()
        n = sum(pq.read_table(f, columns=["id", "status"]).num_rows for f in files)
        columns = time.perf_counter() - t
    assert len(written.ids) == n == args.rows
    print(
        f"{args.rows} rows of {args.dim} float32 in {len(files)} parts, {size / 1e6:.0f} MB "
        f"({'cold' if cold else 'warm'} page cache): whole parts + CRC-32 {whole:.2f} s, "
        f"id and status columns only {columns:.2f} s ({whole / columns:.1f}x)"
    )


if __name__ == "__main__":
    main()
