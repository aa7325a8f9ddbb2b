"""The measurements, each run in a fresh process by the bench runner.

``python -m batchvision.bench.children MODE PARAMS_JSON RESULT_PATH`` runs one measurement
and writes its figures as JSON. Modes:

* ``decode``: read + decode + preprocess only, in the local engine's DataLoader with its
  worker count (no model): what the data path alone can deliver.
* ``model``: ``tasks.classify.topk`` over uint8 NHWC batches already in memory (on the device),
  after warm-up: the ceiling for this model, precision and batch on this machine.
* ``engine``: ``batchvision.run`` end to end with ``params["engine"]``, timed around the
  call; importing the model's library and, for Ray, ``ray.init`` are timed apart and
  reported beside it.
* ``seed``: one of the seeds' strategies (:mod:`batchvision.bench.seeds`).
* ``parity``: batchvision's output against the fp32 reference (:mod:`batchvision.bench.parity`).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def read_paths(manifest: str) -> list[str]:
    """The image paths of the bench's manifest (one per line)."""
    text = Path(manifest).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _spec_and_weights(p: dict[str, Any]) -> tuple[Any, Any]:
    from batchvision.models.registry import load_state_dict, resolve_model

    spec = resolve_model(p["model"], p["weights"], labels_path=p["labels"], seed=p["seed"])
    if spec.task != "classify":
        from batchvision.errors import ConfigError

        raise ConfigError(f"bench measures classification models; {spec.name} is {spec.task}")
    return spec, load_state_dict(spec)


def measure_decode(p: dict[str, Any]) -> dict[str, Any]:
    """The local engine's decode workers alone: read, decode, preprocess; no model."""
    from torch.utils.data import DataLoader

    from batchvision.config import RunConfig
    from batchvision.engines.local import PREFETCH_PER_WORKER, DecodeDataset, chunked
    from batchvision.io.sources import iter_inputs
    from batchvision.models.registry import resolve_model

    spec = resolve_model(p["model"], p["weights"], labels_path=p["labels"], seed=p["seed"])
    cfg = RunConfig(
        inputs=(p["manifest"],), output="unused", model=p["model"], workers=p["workers"]
    )
    workers = cfg.num_workers()
    start = time.perf_counter()
    loader = DataLoader(
        DecodeDataset(spec.preprocess, cfg.max_pixels, cfg.draft),
        batch_size=None,
        sampler=chunked(iter_inputs([p["manifest"]]), p["batch_size"]),
        num_workers=workers,
        prefetch_factor=PREFETCH_PER_WORKER if workers else None,
        collate_fn=_identity,
        in_order=False,
    )
    n = errors = 0
    for batch in loader:
        n += len(batch["status"])
        errors += int((batch["status"] != "ok").sum())
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{errors} of {n} images failed to decode")
    return {"images": n, "seconds": seconds, "images_per_second": n / seconds, "workers": workers}


def _identity(x: Any) -> Any:
    return x


def _decoded_images(paths: list[str], spec: Any) -> Any:
    """All images as batchvision decodes them: ``(N, H, W, 3)`` uint8."""
    from batchvision.io.sources import InputItem, items_to_batch, read_batch
    from batchvision.stages.preprocess import decode_batch

    items = [InputItem(id=path, path=path) for path in paths]
    decoded = decode_batch(read_batch(items_to_batch(items)), spec.preprocess)
    bad = [e for e in decoded["error"] if e is not None]
    if bad:
        raise RuntimeError(f"{len(bad)} images failed to decode, e.g. {bad[0]}")
    return decoded["image"]


def measure_model(p: dict[str, Any]) -> dict[str, Any]:
    """``tasks.classify.topk`` over batches already in memory on the device, after warm-up."""
    import torch

    from batchvision.stages.predict import PredictOptions, Predictor
    from batchvision.tasks.classify import topk

    spec, state_dict = _spec_and_weights(p)
    if p.get("runtime", "torch") != "torch":  # exported (and quantized) as a run does it
        state_dict = _exported(p, spec, state_dict)
    predictor = Predictor(
        spec,
        PredictOptions(device=p["device"], precision=p["precision"], top_k=p["top_k"]),
        state_dict,
    )
    images = torch.from_numpy(_decoded_images(read_paths(p["manifest"]), spec))
    bs = p["batch_size"]
    n_batches = max(1, len(images) // bs)  # full batches only (one short one if N < B)
    batches = [images[i * bs : (i + 1) * bs].to(predictor.device) for i in range(n_batches)]
    del images
    warmup_seconds = []
    for i in range(p["warmup"]):
        t = time.perf_counter()
        topk(predictor, batches[i % n_batches])
        warmup_seconds.append(round(time.perf_counter() - t, 3))
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        topk(predictor, batch)  # returns numpy: the device work is complete
    seconds = time.perf_counter() - start
    n = sum(len(b) for b in batches)
    return {
        "images": n,
        "seconds": seconds,
        "images_per_second": n / seconds,
        # Per warm-up batch: the first pays for kernel selection (oneDNN primitives, cuDNN).
        "warmup_batch_seconds": warmup_seconds,
        "device": str(predictor.device),
        "precision": predictor.precision,
        "runtime": predictor.runtime,
        "torch_threads": torch.get_num_threads(),
    }


def _exported(p: dict[str, Any], spec: Any, state_dict: Any) -> Any:
    """The model exported for ``p["runtime"]`` by the run's own code (calibrated, for int8,
    on the bench's first images)."""
    from batchvision.config import RunConfig
    from batchvision.runtimes.prepare import prepare
    from batchvision.stages.device import native_bf16, resolve_device

    cfg = RunConfig(inputs=(p["manifest"],), output="unused", model=p["model"],
                    runtime=p["runtime"], precision=p["precision"], min_agreement=0.0)  # fmt: skip
    device = resolve_device(p["device"])
    return prepare(cfg, spec, state_dict, device.type, native_bf16(device))


def measure_engine(p: dict[str, Any]) -> dict[str, Any]:
    """``batchvision.run`` with ``p["engine"]``, timed around the call."""
    import torch

    import batchvision
    from batchvision import RunConfig
    from batchvision.models.registry import resolve_model

    engine = p["engine"]
    # Import the model's library (torchvision imports torch._dynamo: about 0.8 s) before the
    # clock starts, as every other row does: a once-per-process cost, reported apart.
    t = time.perf_counter()
    resolve_model(p["model"], p["weights"], labels_path=p["labels"], seed=p["seed"])
    import_seconds = time.perf_counter() - t
    init_seconds = 0.0
    if engine == "ray":
        import logging

        import ray

        t = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        init_seconds = time.perf_counter() - t
    n = len(read_paths(p["manifest"]))
    try:
        with tempfile.TemporaryDirectory(prefix=f"bench-{engine}-") as tmp:
            cfg = RunConfig(
                inputs=(p["manifest"],),
                output=os.path.join(tmp, "out"),
                model=p["model"],
                weights=p["weights"],
                labels=p["labels"],
                engine=engine,
                device=p["device"],
                precision=p["precision"],
                batch_size=p["batch_size"],
                workers=p["workers"] if engine == "local" else None,
                top_k=p["top_k"],
                seed=p["seed"],
                runtime=p.get("runtime", "torch"),
                # int8 is measured whatever its agreement (random weights agree by chance):
                # the parity column and the run's record say how far it agrees.
                min_agreement=0.0,
            )
            start = time.perf_counter()
            summary = batchvision.run(cfg)
            seconds = time.perf_counter() - start
    finally:
        if engine == "ray":
            ray.shutdown()
    if summary.ok != n or summary.error:
        raise RuntimeError(f"expected {n} ok rows, got {summary.ok} ok, {summary.error} errors")
    return {
        "images": summary.processed,
        "seconds": seconds,
        "images_per_second": summary.processed / seconds,
        "ray_init_seconds": round(init_seconds, 3),
        "import_seconds": round(import_seconds, 3),
        "stage_seconds": {k: round(v, 3) for k, v in summary.stage_seconds.items()},
        "device": summary.device,
        "precision": summary.precision,
        "runtime": p.get("runtime", "torch"),
        "torch_threads": torch.get_num_threads(),
    }


def measure_seed(p: dict[str, Any]) -> dict[str, Any]:
    """One of the seeds' strategies on the same images and model."""
    from batchvision.bench.seeds import measure_strategy

    spec, state_dict = _spec_and_weights(p)
    return measure_strategy(
        p["strategy"], read_paths(p["manifest"]), p["batch_size"], spec, state_dict
    )


def measure_parity(p: dict[str, Any]) -> dict[str, Any]:
    """batchvision against the fp32 reference on the first ``parity_images`` images."""
    from batchvision.bench.parity import measure_parity as parity

    return parity(p, read_paths(p["manifest"])[: p["parity_images"]])


MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "decode": measure_decode,
    "model": measure_model,
    "engine": measure_engine,
    "seed": measure_seed,
    "parity": measure_parity,
}


def main(argv: Sequence[str]) -> int:
    """Run one measurement; its JSON (plus this process's own peak RSS) goes to a file."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    mode, params_json, result_path = argv
    result = MODES[mode](json.loads(params_json))
    result["main_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(result_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
