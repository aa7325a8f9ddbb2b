"""The model's speed in a plain process and in a Ray task shaped like a worker actor.

resnet50 (random weights), batches of 32 at 224, 2 torch threads, ``--precision auto``:
seconds per batch, with the thread settings each place runs with. Equal figures mean a
slower Ray engine comes from what runs beside the model during a pipeline, not from Ray's
worker process itself (issue 12's open resnet50 ratio).

Usage::

    PYTHONPATH=src python benchmarks/bench_actor_inference.py
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import ray


def measure(batches: int = 4) -> dict[str, Any]:
    import torch

    from batchvision.config import PredictOptions
    from batchvision.models.registry import load_state_dict, resolve_model
    from batchvision.stages.predict import Predictor

    torch.set_num_threads(2)
    spec = resolve_model("resnet50", "random")
    predictor = Predictor(spec, PredictOptions(), load_state_dict(spec))
    n = 32
    batch = {
        "id": np.array(["x"] * n, dtype=object),
        "path": np.array(["x"] * n, dtype=object),
        "status": np.array(["ok"] * n, dtype=object),
        "error": np.array([None] * n, dtype=object),
        "width": np.full(n, 224),
        "height": np.full(n, 224),
        "image": np.random.default_rng(0).integers(0, 255, (n, 224, 224, 3), dtype=np.uint8),
    }
    predictor(batch)  # warm-up
    t0 = time.perf_counter()
    for _ in range(batches):
        predictor(batch)
    return {
        "seconds_per_batch": round((time.perf_counter() - t0) / batches, 3),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "affinity": sorted(os.sched_getaffinity(0)),
        "precision": predictor.precision,
    }


if __name__ == "__main__":
    print("plain process:", measure())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    print("ray task (num_cpus=1):", ray.get(ray.remote(num_cpus=1)(measure).remote()))
