"""Ray Data's own driver cost per task: a dummy actor pipeline, nothing of batchvision's.

``N`` one-row blocks through a one-actor pool whose call sleeps ``SLEEP`` seconds; prints
the driver's CPU seconds, per second of wall time and per task. Two runs separate the
constant part (long sleeps, few tasks) from the per-task part (short sleeps, many tasks).

Usage::

    python benchmarks/bench_ray_overhead.py 20 1.0     # the constant part
    python benchmarks/bench_ray_overhead.py 400 0.02   # + the per-task part
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np
import ray
import ray.data
from ray.data import ActorPoolStrategy, DataContext


class Sleeper:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.seconds)
        return {"k": batch["u"]}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(n: int, seconds: float) -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = ctx.print_on_execution_start = False
    ds = ray.data.from_items([{"u": i} for i in range(n)], override_num_blocks=n)
    ds = ds.map_batches(
        Sleeper,
        fn_constructor_kwargs={"seconds": seconds},
        compute=ActorPoolStrategy(size=1),
        batch_size=1,
        batch_format="numpy",
    )
    c0, t0 = cpu(), time.time()
    rows = sum(t.num_rows for t in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    c, t = cpu() - c0, time.time() - t0
    print(
        f"{n} tasks of {seconds} s: {rows} rows, wall {t:.1f} s, driver CPU {c:.2f} s "
        f"({c / t:.3f} of a core, {1000 * c / n:.2f} ms a task)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
