"""One ``batchvision.run`` with given RunConfig options: img/s, CPU per image, stage times.

For interleaved A/B comparisons of engine options on a shared machine (run the variants
in turns, several rounds; CPU per image is less sensitive to other jobs than img/s)::

    for i in 1 2 3; do for kw in '{"decode_threads": 0}' '{}'; do
        PYTHONPATH=src python benchmarks/bench_run_options.py IMAGE_DIR "$kw"; done; done

IMAGE_DIR: e.g. bench_local.py's cache (bench-output/images/500x375-seed0-n300). Options
are RunConfig fields as JSON, plus ``threads`` (torch threads) and ``model``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

import torch

import batchvision
from batchvision import RunConfig


def main() -> None:
    image_dir, options = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    threads = options.pop("threads", None)
    if threads:
        torch.set_num_threads(threads)
    options.setdefault("model", "resnet50")
    options.setdefault("weights", "random")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(inputs=(image_dir,), output=os.path.join(tmp, "out"), **options)
        t = time.perf_counter()
        summary = batchvision.run(cfg)
        wall = time.perf_counter() - t
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    print(
        json.dumps(
            {
                "options": sys.argv[2] if len(sys.argv) > 2 else "{}",
                "images_per_second": round(summary.processed / wall, 2),
                "wall": round(wall, 1),
                "cpu_ms_per_image": round(1000 * cpu / max(1, summary.processed), 1),
                "stages": {k: round(v, 2) for k, v in summary.stage_seconds.items()},
                "load": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
