"""The same images as loose files, WebDataset shards and Parquet files: speed and requests.

Packs ``--images`` photo-like JPEGs (500x375) three ways: loose files, WebDataset ``.tar``
shards and Parquet files (``--per-shard`` images each), then measures, side by side in one
run:

- read + decode (no model), in this process on one thread: the cost of each layout's reading;
- end to end: ``batchvision run`` (local engine) with ``--model``, per layout;
- on a moto S3 server on loopback, behind a counting proxy: the requests each layout takes
  per image (listing, HEAD and GET), with the same run.

Usage::

    PYTHONPATH=src:. python benchmarks/bench_shards.py [--images 1000] [--per-shard 100]
        [--model resnet50]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torchvision

from batchvision.config import PreprocessConfig
from batchvision.demo import synth
from batchvision.io import shards
from batchvision.io.sources import items_to_batch, iter_inputs, read_batch
from batchvision.io.storage import StorageOptions
from batchvision.stages.preprocess import decode_batch


def pack(root: Path, n: int, per_shard: int) -> dict[str, Path]:
    loose = root / "loose"
    if not loose.exists():
        synth.write_benchmark_images(loose, n, seed=0, size=(500, 375))
    photos = sorted(loose.glob("*.jpg"))[:n]
    (root / "wds").mkdir(exist_ok=True)
    (root / "pq").mkdir(exist_ok=True)
    for s in range(0, len(photos), per_shard):
        chunk = photos[s : s + per_shard]
        with tarfile.open(root / "wds" / f"{s // per_shard:05d}.tar", "w") as tf:
            for p in chunk:
                for ext, data in (("jpg", p.read_bytes()), ("txt", p.stem.encode())):
                    info = tarfile.TarInfo(f"{p.stem}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        table = pa.table(
            {
                "image": [{"bytes": p.read_bytes(), "path": p.name} for p in chunk],
                "caption": [p.stem for p in chunk],
            }
        )
        pq.write_table(table, root / "pq" / f"{s // per_shard:05d}.parquet")
    return {"loose": loose, "wds": root / "wds", "pq": root / "pq"}


def decode_only(layouts: dict[str, Path], batch: int = 32) -> dict[str, float]:
    """Images per second, reading and decoding (resnet50's preprocessing), one thread."""
    pre = PreprocessConfig()
    out = {}
    for name, path in layouts.items():
        t0 = time.perf_counter()
        count = 0
        if name == "loose":
            items = iter(iter_inputs([str(path)]))
            while chunk := list(itertools.islice(items, batch)):
                count += len(decode_batch(read_batch(items_to_batch(chunk)), pre)["id"])
        else:
            read = shards.tar_samples if name == "wds" else shards.parquet_samples
            for f in sorted(path.iterdir()):
                samples = read(str(f), f.name, shards.ShardOptions(), StorageOptions(), 1 << 30)
                while chunk := list(itertools.islice(samples, batch)):
                    count += len(decode_batch(shards.samples_batch(chunk, ()), pre)["id"])
        out[name] = round(count / (time.perf_counter() - t0), 1)
    return out


def end_to_end(spec: str, model: str, weights: Path, out: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    args = [sys.executable, "-m", "batchvision", "run", spec, "-m", model, "-w", str(weights)]
    proc = subprocess.run(
        [*args, "-o", str(out), "-q", "--overwrite"], env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return time.perf_counter() - t0


def s3_requests(layouts: dict[str, Path], model: str, weights: Path, tmp: Path) -> dict:
    """Requests per image for each layout, read from moto S3 through a counting proxy."""
    from moto.server import ThreadedMotoServer
    from tests.s3_proxy import FaultProxy

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    env.update(AWS_DEFAULT_REGION="us-east-1")
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    import boto3

    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    images = len(list(layouts["loose"].glob("*.jpg")))
    for name, path in layouts.items():
        for f in sorted(path.iterdir()):
            client.put_object(Bucket="bench", Key=f"{name}/{f.name}", Body=f.read_bytes())
    result = {}
    try:
        for name in layouts:
            with FaultProxy(endpoint) as proxy:
                env["AWS_ENDPOINT_URL"] = proxy.url
                seconds = end_to_end(f"s3://bench/{name}", model, weights, tmp / f"s3-{name}", env)
            by_method: dict[str, int] = {}
            for (method, _), n in proxy.requests.items():
                by_method[method] = by_method.get(method, 0) + n
            total = sum(by_method.values())
            result[name] = {
                "requests": by_method,
                "per_image": round(total / images, 3),
                "seconds": round(seconds, 1),
            }
    finally:
        server.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--per-shard", type=int, default=100)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--root", default=None)
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--only-s3", action="store_true", help="the S3 request counts alone")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="bench_shards_"))
    root.mkdir(parents=True, exist_ok=True)
    layouts = pack(root, args.images, args.per_shard)
    weights = root / f"{args.model}.pt"
    if not weights.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(args.model).state_dict(), weights)
    report: dict[str, object] = {"images": args.images, "per_shard": args.per_shard}
    if not args.only_s3:
        report["decode_only_images_per_s"] = decode_only(layouts)
        print(json.dumps(report), flush=True)
        env = dict(os.environ)
        e2e = {}
        for name, path in layouts.items():
            seconds = end_to_end(str(path), args.model, weights, root / f"out-{name}", env)
            e2e[name] = round(args.images / seconds, 2)
        report["end_to_end_images_per_s"] = e2e
        print(json.dumps(report), flush=True)
    if not args.skip_s3:
        report["s3"] = s3_requests(layouts, "mobilenet_v3_small", _small(root), root)
    print(json.dumps(report, indent=1))


def _small(root: Path) -> Path:
    """A small model for the S3 runs: they count requests, not model time."""
    path = root / "mobilenet_v3_small.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    return path


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
