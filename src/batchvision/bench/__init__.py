"""``batchvision bench``: how fast batchvision is here, against its own ceilings and the seeds.

One invocation measures, on the same images, model, precision and batch sizes, each in a
fresh process whose whole process tree is sampled for peak memory: decode only, model
only, batchvision end to end with each engine, and the seed tutorials' five ways of
running inference on Ray (:mod:`batchvision.bench.seeds`); plus the parity figure of
batchvision's output against an fp32 reference. ``--memory-check`` instead runs the local
engine on growing image counts and compares their peak memory.

    >>> from batchvision.bench import make_config, run_bench
    >>> report = run_bench(make_config(model="resnet50", synthetic=400))  # doctest: +SKIP
"""

from batchvision.bench.options import STRATEGIES, BenchConfig, make_config
from batchvision.bench.results import format_table
from batchvision.bench.runner import run_bench

__all__ = ["STRATEGIES", "BenchConfig", "format_table", "make_config", "run_bench"]
