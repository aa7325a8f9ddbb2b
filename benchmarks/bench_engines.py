"""Engine benchmark: the local engine, the Ray engine (local instance) and the seed pipeline.

Same images, model, precision and batch size for all three, each in a fresh subprocess whose
whole process tree (DataLoader workers; Ray's GCS, raylet and workers) is sampled from
``/proc`` for peak summed RSS and PSS (bench_local.py's sampler):

* ``local``: ``batchvision.run(RunConfig(engine="local"))``, timed around the call.
* ``ray``: ``batchvision.run(RunConfig(engine="ray"))`` on a local Ray instance. ``ray.init``
  is timed separately (as for the seed pipeline) and reported beside the figure; the
  img/s including it is reported too.
* ``seed (Ray Data)``: ``seed_pipeline.py``, fp32, timed from dataset creation to the last
  row written.

The ratio ray/local is the figure the Ray engine is held to (>= 0.7 on a 2-core machine).

Usage::

    python benchmarks/bench_engines.py --model resnet18 --images 1000 --batch-size 32 \\
        [--precision auto] [--skip-seed] [--concurrency N] [--out bench-output/bench_engines.json]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_local as bl  # noqa: E402  (a sibling script, not a package)

DEFAULT_OUT = "bench-output/bench_engines.json"
MEASUREMENTS = ("local", "ray", "seed_ray")
TITLES = {
    "local": "batchvision --engine local",
    "ray": "batchvision --engine ray",
    "seed_ray": "seed pipeline (Ray Data)",
}


def child_engine(p: dict[str, Any]) -> dict[str, Any]:
    """``batchvision.run`` with ``p["engine"]``; for Ray, ``ray.init`` is timed apart."""
    import torch

    import batchvision
    from batchvision import RunConfig

    init_seconds = 0.0
    if p["engine"] == "ray":
        import ray

        t = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        init_seconds = time.perf_counter() - t
    ray_opts = {"concurrency": p["concurrency"]} if p["engine"] == "ray" else {}
    with tempfile.TemporaryDirectory(prefix=f"bench-{p['engine']}-") as tmp:
        cfg = RunConfig(
            inputs=(p["image_dir"],),
            output=os.path.join(tmp, "out"),
            model=p["model"],
            weights=p["weights"],
            engine=p["engine"],
            device=p["device"],
            precision=p["precision"],
            batch_size=p["batch_size"],
            workers=p["workers"] if p["engine"] == "local" else None,
            top_k=p["top_k"],
            seed=p["seed"],
            **ray_opts,
        )
        start = time.perf_counter()
        summary = batchvision.run(cfg)
        seconds = time.perf_counter() - start
    if summary.ok != p["images"] or summary.error:
        raise RuntimeError(
            f"expected {p['images']} ok rows, got {summary.ok} ok, {summary.error} errors"
        )
    return {
        "images": summary.processed,
        "seconds": seconds,
        "images_per_second": summary.processed / seconds,
        "ray_init_seconds": round(init_seconds, 2),
        "images_per_second_incl_init": summary.processed / (seconds + init_seconds),
        "stage_seconds": {k: round(v, 3) for k, v in summary.stage_seconds.items()},
        "device": summary.device,
        "precision": summary.precision,
        "driver_torch_threads": torch.get_num_threads(),
    }


def child_main(argv: Sequence[str]) -> int:
    mode, params_json, result_path = argv
    result = child_engine({**json.loads(params_json), "engine": mode})
    Path(result_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


def print_table(report: dict[str, Any]) -> None:
    res = report["results"]
    header = (
        f"{'measurement':<30} {'img/s':>8} {'x local':>8} {'x seed':>8} "
        f"{'peak RSS MB':>12} {'peak PSS MB':>12}"
    )
    print(header)
    print("-" * len(header))
    for key in MEASUREMENTS:
        if key in res:
            r, ratios = res[key], report["ratios"][key]
            print(
                f"{TITLES[key]:<30} {r['images_per_second']:>8.2f} "
                f"{bl._fmt(ratios['to_local'], '.2f'):>8} {bl._fmt(ratios['to_seed'], '.2f'):>8} "
                f"{r['memory']['peak_tree_rss_mb']:>12.0f} "
                f"{r['memory']['peak_tree_pss_mb']:>12.0f}"
            )
    cfg = report["config"]
    print(
        f"\n{cfg['model']} ({cfg['weights']} weights), {cfg['images']} images "
        f"{bl.IMAGE_SIZE[0]}x{bl.IMAGE_SIZE[1]}, batch {cfg['batch_size']}, precision "
        f"{cfg['precision_resolved']} (seed pipeline: fp32), "
        f"{report['machine']['usable_cores']} cores, {report['machine']['cpu_model']}"
    )
    if "ray" in res:
        r = res["ray"]
        print(
            f"ray engine: ray.init {r['ray_init_seconds']:.2f} s not counted "
            f"({r['images_per_second_incl_init']:.2f} img/s with it); "
            f"ratio ray/local {report['ratios']['ray']['to_local']:.2f} (target >= 0.7)"
        )
    for key in ("local", "ray"):
        if key in res:
            stages = ", ".join(f"{k} {v:.2f}" for k, v in res[key]["stage_seconds"].items())
            print(f"{key} stage_seconds (wall {res[key]['seconds']:.2f} s): {stages}")
    print(f"load average before/after: {report['loadavg_before']} / {report['loadavg_after']}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18", help="torchvision architecture")
    p.add_argument("--weights", default="random", help="'random' or a checkpoint path")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None, help="local engine decode workers")
    p.add_argument("--concurrency", default=None, help="ray engine predictor actors")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-seed", action="store_true", help="skip the seed pipeline")
    p.add_argument("--image-cache", default=bl.DEFAULT_CACHE)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--mem-interval", type=float, default=0.5)
    args = p.parse_args(argv)
    if args.images < 1 or args.batch_size < 1:
        p.error("--images and --batch-size must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = Path(args.image_cache)
    cache.mkdir(parents=True, exist_ok=True)
    image_dir = bl.ensure_images(cache, args.images, args.seed).resolve()
    params = {
        "image_dir": str(image_dir),
        "images": args.images,
        "model": args.model,
        "weights": args.weights,
        "device": args.device,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "top_k": args.top_k,
        "seed": args.seed,
    }
    report: dict[str, Any] = {
        "benchmark": "bench_engines",
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": bl.machine_info(),
        "loadavg_before": bl._loadavg(),
        "results": {},
    }
    results = report["results"]
    log_dir = out.parent / "bench_engines_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        work = Path(tmp)
        for engine in ("local", "ray"):
            result_path = work / f"{engine}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine]
            cmd += [json.dumps(params), str(result_path)]
            results[engine] = bl.run_measured(engine, cmd, log_dir, result_path, args.mem_interval)
        if not args.skip_seed:
            result_path = work / "seed_ray.json"
            cmd = [sys.executable, str(HERE / "seed_pipeline.py"), str(image_dir)]
            cmd += ["--model", args.model, "--batch-size", str(args.batch_size)]
            cmd += ["--json-out", str(result_path)]
            seed = bl.run_measured("seed_ray", cmd, log_dir, result_path, args.mem_interval)
            if seed["rows"] != args.images:
                raise RuntimeError(f"seed pipeline wrote {seed['rows']} rows, not {args.images}")
            results["seed_ray"] = seed

    local_ips = results["local"]["images_per_second"]
    seed_ips = results.get("seed_ray", {}).get("images_per_second")
    report["ratios"] = {
        key: {
            "to_local": bl._ratio(r["images_per_second"], local_ips),
            "to_seed": bl._ratio(r["images_per_second"], seed_ips),
        }
        for key, r in results.items()
    }
    report["config"] = {
        "model": args.model,
        "weights": args.weights,
        "images": args.images,
        "image_size": list(bl.IMAGE_SIZE),
        "batch_size": args.batch_size,
        "precision_requested": args.precision,
        "precision_resolved": results["local"]["precision"],
        "concurrency": args.concurrency,
        "workers": args.workers,
    }
    report["loadavg_after"] = bl._loadavg()
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print()
    print_table(report)
    print(f"\nwrote {out} ({report['total_seconds']:.0f} s in all; logs in {log_dir})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2:]))
    sys.exit(main())
