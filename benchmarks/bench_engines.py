"""Engine benchmark: the local engine, the Ray engine (local instance) and the seed pipeline.

A thin front for ``batchvision bench`` (see bench_local.py for the flags): the same as
``bench_local.py`` with both engines, so the table's ``x seed`` and the two engine rows give
the ratio ray/local (held to >= 0.7 on a 2-core machine). Default model resnet18.

Usage::

    python benchmarks/bench_engines.py --model resnet18 --images 1000 --batch-size 32 \\
        [--precision auto] [--skip-seed] [--out bench-output/bench_local_ray]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batchvision.cli import main as cli_main
from bench_local import bench_args

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--model" not in argv:
        argv = ["--model", "resnet18", *argv]
    cli_main(bench_args(argv, engines="local,ray"))
