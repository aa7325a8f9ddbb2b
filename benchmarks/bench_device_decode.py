"""``decode_batch_device`` on the CPU (``device="cpu"``: the device path's code, libjpeg-turbo
for nvJPEG): seconds per batch of mixed JPEGs, and decoder calls for a batch with one bad
file. Runs against whichever batchvision is on PYTHONPATH, so an older checkout can be
measured with the same script. GPU figures need a GPU: this measures none.

Usage::

    PYTHONPATH=src:. python benchmarks/bench_device_decode.py [--small 56 --large 8 --reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torchvision.io
from tests.unit import odd_images as oi

from batchvision.config import PreprocessConfig
from batchvision.stages import device_decode
from batchvision.stages.preprocess import decode_batch

CPU = torch.device("cpu")


def _batch(datas: list[bytes]) -> dict[str, np.ndarray]:
    n = len(datas)
    data = np.empty(n, dtype=object)
    data[:] = datas
    ids = np.array([f"{i}.jpg" for i in range(n)], dtype=object)
    return {"id": ids, "path": ids, "bytes": data, "error": np.full(n, None, dtype=object)}


def _count_calls(batch: dict[str, np.ndarray]) -> int:
    real = torchvision.io.decode_jpeg
    calls = 0

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    torchvision.io.decode_jpeg = counting
    try:
        device_decode.decode_batch_device(batch, PreprocessConfig(), CPU)
    finally:
        torchvision.io.decode_jpeg = real
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=56, help="640x480 JPEGs")
    parser.add_argument("--large", type=int, default=8, help="4000x3000 JPEGs")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    small = [oi.encode(oi.photo(640, 480, seed=i), "JPEG", quality=90) for i in range(args.small)]
    large = [oi.large_jpeg(4000, 3000)] * args.large
    batch = _batch(small + large)
    pre = PreprocessConfig()
    device_decode.decode_batch_device(_batch(small[:2]), pre, CPU)  # warm-up
    runs = []
    for _ in range(args.reps):
        t = time.perf_counter()
        out = device_decode.decode_batch_device(batch, pre, CPU)
        runs.append(time.perf_counter() - t)
    cpu = decode_batch(batch, pre)
    diff = np.abs(out["image"].numpy().astype(int) - cpu["image"].astype(int))
    print(f"batch of {len(small)} 640x480 + {len(large)} 4000x3000 JPEGs, 1 thread")
    print(f"  decode_batch_device: {statistics.median(runs):.2f} s (median of {args.reps})")
    print(f"  vs decode_batch: mean abs diff {diff.mean():.3f}, max {diff.max()}")
    route = getattr(__import__("batchvision.stages", fromlist=["x"]), "device_route", None)
    if route is not None:  # the split: workers route and CPU-decode, the main process decodes
        t = time.perf_counter()
        routed = route.route_batch(batch, pre)
        t_route = time.perf_counter() - t
        t = time.perf_counter()
        device_decode.decode_batch_device(routed, pre, CPU)
        print(f"  routed in a worker: {t_route:.3f} s, then here: {time.perf_counter() - t:.2f} s")
    bad = [*small[:31], oi.jpeg_random_scan()]
    print(f"  decode_jpeg calls, 32 JPEGs with 1 bad: {_count_calls(_batch(bad))}")


if __name__ == "__main__":
    main()
