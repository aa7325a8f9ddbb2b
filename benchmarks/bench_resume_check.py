"""What ``--resume``'s part check costs: whole parts read for their CRC-32 vs only the columns
resume needs.

Writes an embedding output (``--rows`` rows of ``--dim`` float32, ``--part-rows`` rows a
part, default 10,000) with batchvision's own part writer, then times, from a cold page
cache where this process may drop it (root), ``outdir.read_written`` (every part read
whole and checked against the CRC-32 in its name, as ``--resume`` does) against reading
only the ``id`` and ``status`` columns of every part. The two are measured side by side
in one run.

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
from batchvision.tasks import get_task


def write_output(out: str, rows: int, dim: int, part_rows: int) -> None:
    writer = sinks.PartWriter(out, "parquet", part_rows=part_rows, flush_seconds=1e9, run_id="r1")
    rng = np.random.default_rng(0)
    for start in range(0, rows, part_rows):
        n = min(part_rows, rows - start)
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
        writer.add(get_task("embed").to_table(batch))
    writer.close()


def drop_caches() -> bool:
    os.sync()
    with contextlib.suppress(OSError), open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
        return True
    return False


def time_s3(out: str, concurrency: int, latency_ms: float) -> None:
    """``read_written`` on S3 copies of the parts, one part at a time vs ``concurrency``."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="b", AWS_SECRET_ACCESS_KEY="b", AWS_DEFAULT_REGION="us-east-1"
    )
    import logging

    import boto3
    from moto.server import ThreadedMotoServer
    from tests.s3_proxy import FaultProxy

    from batchvision.io.storage import StorageOptions

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="bench")
        names = sorted(f for f in os.listdir(out) if f.startswith("part-"))
        for name in names:
            with open(os.path.join(out, name), "rb") as f:
                client.put_object(Bucket="bench", Key=f"out/{name}", Body=f.read())
        with FaultProxy(endpoint, delay=latency_ms / 1000) as proxy:
            for threads in (1, concurrency):
                opts = StorageOptions(endpoint=proxy.url, read_concurrency=threads)
                t = time.perf_counter()
                written = outdir.read_written("s3://bench/out", opts, {"run_ids": ["r1"]})
                took = time.perf_counter() - t
                print(
                    f"S3 ({latency_ms:g} ms added per request), {len(names)} parts, "
                    f"{threads} at once: {took:.2f} s ({len(written.ids)} ids)"
                )
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--s3", type=int, default=0, metavar="N", help="also time S3, N parts at once")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--part-rows", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        write_output(out, args.rows, args.dim, args.part_rows)
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
        if args.s3:
            time_s3(out, args.s3, args.latency_ms)
    assert len(written.ids) == n == args.rows
    print(
        f"{args.rows} rows of {args.dim} float32 in {len(files)} parts, {size / 1e6:.0f} MB "
        f"({'cold' if cold else 'warm'} page cache): whole parts + CRC-32 {whole:.2f} s, "
        f"id and status columns only {columns:.2f} s ({whole / columns:.1f}x)"
    )


if __name__ == "__main__":
    main()
