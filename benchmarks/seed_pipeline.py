"""The seed pipeline on its own: Ray Data batch inference written the way Ray's tutorial
writes it (``batchvision.bench.seeds.run_ray_data``; ``batchvision bench`` measures it as the
``ray_data`` strategy next to batchvision).

Run it on its own::

    python benchmarks/seed_pipeline.py IMAGE_DIR --model resnet50 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import ray

from batchvision.bench import seeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image_dir")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)

    seeds.configure(args.model)
    paths = sorted(
        os.path.join(args.image_dir, name)
        for name in os.listdir(args.image_dir)
        if name.lower().endswith((".jpg", ".jpeg", ".png"))
    )
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    try:
        with tempfile.TemporaryDirectory(prefix="seed-out-") as out_dir:
            start = time.perf_counter()
            rows = seeds.run_ray_data(paths, args.batch_size, out_dir)
            seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    print(f"seed pipeline: {rows} rows in {seconds:.2f} s = {rows / seconds:.2f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
