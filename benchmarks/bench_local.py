"""Local benchmark: batchvision against its model alone and the seed Ray Data pipeline.

A thin front for ``batchvision bench`` (src/batchvision/bench/), kept so that the figures
of issue 2 can be re-measured with the same flags. It runs::

    batchvision bench --synthetic IMAGES --model MODEL --weights random \\
        --batch-sizes B --engines local --strategies ray_data [...]

i.e. decode only, model only, ``batchvision.run`` (local engine) and the seed Ray Data
pipeline, each in a fresh process with its process tree's peak memory, plus parity.

Usage::

    python benchmarks/bench_local.py --model resnet50 --images 1000 --batch-size 32 \\
        [--precision auto] [--skip-seed] [--out bench-output/bench_local]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from batchvision.cli import main as cli_main


def bench_args(argv: Sequence[str] | None, engines: str = "local") -> list[str]:
    """The ``batchvision bench`` arguments these flags mean."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", help="torchvision architecture")
    p.add_argument("--weights", default="random", help="'random' or a checkpoint path")
    p.add_argument("--labels", default=None, help="class names for a checkpoint")
    p.add_argument("--images", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--batch-size", default="32", help="batch size(s), e.g. 32 or 8,32,128")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None, help="batchvision decode workers")
    p.add_argument("--warmup", type=int, default=2, help="warm-up batches for model-only")
    p.add_argument("--seed", type=int, default=0, help="image and random-weights seed")
    p.add_argument("--skip-seed", action="store_true", help="skip the Ray Data pipeline")
    p.add_argument("--parity-images", type=int, default=32, help="0 skips the parity figure")
    p.add_argument("--out", default=f"bench-output/bench_{engines.replace(',', '_')}")
    args = p.parse_args(argv)
    out = ["bench", "--synthetic", str(args.images), "--model", args.model]
    out += ["--weights", args.weights, "--batch-sizes", args.batch_size]
    out += ["--engines", engines, "--strategies", "none" if args.skip_seed else "ray_data"]
    out += ["--precision", args.precision, "--device", args.device, "--seed", str(args.seed)]
    out += ["--warmup", str(args.warmup), "--parity-images", str(args.parity_images)]
    out += ["--out", args.out]
    if args.labels:
        out += ["--labels", args.labels]
    if args.workers is not None:
        out += ["--workers", str(args.workers)]
    return out


if __name__ == "__main__":
    cli_main(bench_args(None))
