"""S3 read throughput of ``read_batch`` against moto on loopback, with simulated latency.

A real object store answers in tens of milliseconds; moto on loopback in about one. A proxy
(``tests/s3_proxy.py``) adds ``--latency-ms`` to every request, so the figure shows what
reading a batch's objects concurrently (``StorageOptions.read_concurrency``) buys:

    .venv/bin/python benchmarks/bench_s3_read.py --images 128 --latency-ms 20

Needs ``moto[server]`` (the dev extra). Prints one line per concurrency setting.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.s3_proxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", default="1,4,16")
    args = parser.parse_args()

    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    import boto3
    from moto.server import ThreadedMotoServer
    from tests.s3_proxy import FaultProxy

    from batchvision.demo import synth
    from batchvision.io.sources import items_to_batch, iter_inputs, read_batch
    from batchvision.io.storage import StorageOptions

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench")
    rng = np.random.default_rng(0)
    for i in range(args.images):
        buf = io.BytesIO()
        synth.photo_like(rng, (320, 240)).save(buf, "JPEG", quality=90)
        client.put_object(Bucket="bench", Key=f"imgs/{i:05d}.jpg", Body=buf.getvalue())
    try:
        with FaultProxy(endpoint, delay=args.latency_ms / 1000) as proxy:
            for conc in (int(c) for c in args.concurrency.split(",")):
                opts = StorageOptions(endpoint=proxy.url, read_concurrency=conc)
                items = list(iter_inputs(["s3://bench/imgs"], None, opts))
                t0 = time.perf_counter()
                nbytes = 0
                for start in range(0, len(items), args.batch_size):
                    out = read_batch(items_to_batch(items[start : start + args.batch_size]), opts)
                    assert all(e is None for e in out["error"])
                    nbytes += sum(len(b) for b in out["bytes"])
                dt = time.perf_counter() - t0
                print(
                    f"read_concurrency={conc:<3} {len(items) / dt:8.1f} objects/s "
                    f"{nbytes / dt / 1e6:6.1f} MB/s ({len(items)} objects, "
                    f"{args.latency_ms:g} ms added per request, 2 requests per object)"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
