"""Local benchmark: batchvision against its own model and against the seed Ray Data pipeline.

Three throughput measurements, side by side in one run, on the same images, model,
precision and batch size, each in a fresh subprocess (so peak memory is per measurement):

* ``model-only``: batchvision's ``Predictor.topk`` over uint8 NHWC batches already in memory,
  after warm-up: the ceiling for this model on this machine.
* ``batchvision``: ``batchvision.run(RunConfig(...))`` end to end (list, read, decode, infer,
  write Parquet), timed around the call; the Summary's ``stage_seconds`` come with it.
* ``seed (Ray Data)``: the tutorial's Ray Data pipeline (``seed_pipeline.py``), fp32, timed
  from dataset creation to the last row written (``ray.init`` is timed separately).

Each speed figure comes with a parity figure: batchvision's full output distribution
(``top_k`` = all classes) on the first 32 images against a plain torchvision fp32 reference
(PIL open, ``exif_transpose``, RGB, ``ToTensor``, ``weights.transforms()``), scored as the
mean centered cosine of the log-probabilities.

Memory: a background thread in this (orchestrating) process samples every process in the
measurement's tree (the subprocess, its DataLoader workers, Ray's raylet/GCS/workers) from
``/proc``: the peak of the summed RSS (counts shared pages once per process, so it
over-states) and of the summed PSS (shared pages split between their users).

Usage::

    python benchmarks/bench_local.py --model resnet50 --images 400 --batch-size 32 \\
        [--precision auto] [--skip-seed] [--out bench-output/bench_local.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = "bench-output/bench_local.json"
DEFAULT_CACHE = "bench-output/images"
IMAGE_SIZE = (500, 375)  # Imagenette-like (width, height)
PARITY_IMAGES = 32
CHILD_TIMEOUT_S = 3600

MEASUREMENTS = ("model_only", "batchvision", "seed_ray")
TITLES = {
    "model_only": "model-only (Predictor.topk)",
    "batchvision": "batchvision end-to-end (run)",
    "seed_ray": "seed pipeline (Ray Data)",
}


# --------------------------------------------------------------------------------------
# Memory of a process tree, from /proc
# --------------------------------------------------------------------------------------


def _parents() -> dict[int, int]:
    """pid -> parent pid for every process visible in /proc."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields restart after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            parents[int(name)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def process_memory_kb(pid: int) -> tuple[int, int]:
    """``(rss, pss)`` in KiB; PSS falls back to RSS where smaps_rollup is unavailable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            text = f.read()
        rss = re.search(r"^Rss:\s+(\d+)", text, re.M)
        pss = re.search(r"^Pss:\s+(\d+)", text, re.M)
        if rss and pss:
            return int(rss.group(1)), int(pss.group(1))
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            m = re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M)
        rss_kb = int(m.group(1)) if m else 0
        return rss_kb, rss_kb
    except OSError:
        return 0, 0


class TreeSampler(threading.Thread):
    """Samples the summed RSS/PSS of a process tree until stopped; keeps the peaks."""

    def __init__(self, root: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        rss = pss = 0
        pids = process_tree(self.root)
        for pid in pids:
            r, p = process_memory_kb(pid)
            rss += r
            pss += p
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop_event.set()
        self.join()
        return {
            "peak_tree_rss_mb": round(self.peak_rss_kb / 1024, 1),
            "peak_tree_pss_mb": round(self.peak_pss_kb / 1024, 1),
            "peak_processes": self.peak_processes,
            "samples": self.samples,
            "sample_interval_s": self.interval,
        }


# --------------------------------------------------------------------------------------
# Measurements, each run in its own subprocess (``--child MODE``)
# --------------------------------------------------------------------------------------


def _maxrss_mb() -> dict[str, float]:
    """This process's peak RSS, and the largest of its waited-for children's."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "main_maxrss_mb": round(self_kb / 1024, 1),
        "child_maxrss_mb": round(children_kb / 1024, 1),
    }


def _decoded_images(image_dir: str, spec: Any) -> Any:
    """All images of ``image_dir`` as batchvision decodes them: ``(N, H, W, 3)`` uint8."""
    from batchvision.io.sources import items_to_batch, iter_inputs, read_batch
    from batchvision.stages.preprocess import decode_batch

    items = sorted(iter_inputs([image_dir]), key=lambda item: item.id)
    decoded = decode_batch(read_batch(items_to_batch(items)), spec.preprocess)
    bad = [e for e in decoded["error"] if e is not None]
    if bad:
        raise RuntimeError(f"{len(bad)} images failed to decode, e.g. {bad[0]}")
    return decoded["image"]


def child_model_only(p: dict[str, Any]) -> dict[str, Any]:
    """``Predictor.topk`` over pre-built batches in memory, after warm-up."""
    import torch

    from batchvision.models.registry import load_state_dict, resolve_model
    from batchvision.stages.predict import PredictOptions, Predictor

    spec = resolve_model(p["model"], p["weights"], seed=p["seed"])
    _set_threads(p)
    predictor = Predictor(
        spec,
        PredictOptions(
            device=p["device"],
            precision=p["precision"],
            top_k=p["top_k"],
            compile=p.get("compile", False),
        ),
        load_state_dict(spec),
    )
    images = torch.from_numpy(_decoded_images(p["image_dir"], spec))
    bs = p["batch_size"]
    n_batches = max(1, len(images) // bs)  # full batches only (one short one if N < B)
    batches = [images[i * bs : (i + 1) * bs].clone() for i in range(n_batches)]
    del images
    warmup_seconds = []
    for i in range(p["warmup"]):
        t = time.perf_counter()
        predictor.topk(batches[i % n_batches])
        warmup_seconds.append(round(time.perf_counter() - t, 3))
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        predictor.topk(batch)  # returns numpy: the device work is complete
    seconds = time.perf_counter() - start
    n = sum(len(b) for b in batches)
    return {
        "images": n,
        "seconds": seconds,
        "images_per_second": n / seconds,
        "warmup_batches": p["warmup"],
        # Per warm-up batch: the first pays for kernel selection (oneDNN primitives, cuDNN).
        "warmup_batch_seconds": warmup_seconds,
        "batch_seconds_steady": seconds / len(batches),
        "device": str(predictor.device),
        "precision": predictor.precision,
        "torch_threads": torch.get_num_threads(),
    }


def _set_threads(p: dict[str, Any]) -> None:
    """``--threads``: torch threads of the process that runs the model."""
    import torch

    if p.get("threads"):
        torch.set_num_threads(p["threads"])


def _run_options(p: dict[str, Any]) -> dict[str, Any]:
    """The fast-path RunConfig options under test (``--compile``, ``--decode-device``)."""
    return {
        "compile": p.get("compile", False),
        "decode_device": p.get("decode_device", "cpu"),
        "decode_threads": p.get("decode_threads"),
    }


def child_end_to_end(p: dict[str, Any]) -> dict[str, Any]:
    """``batchvision.run`` over the image folder, timed around the call."""
    import torch

    import batchvision
    from batchvision import RunConfig

    _set_threads(p)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        cfg = RunConfig(
            inputs=(p["image_dir"],),
            output=os.path.join(tmp, "out"),
            model=p["model"],
            weights=p["weights"],
            device=p["device"],
            precision=p["precision"],
            batch_size=p["batch_size"],
            workers=p["workers"],
            top_k=p["top_k"],
            seed=p["seed"],
            **_run_options(p),
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
        "summary_wall_seconds": summary.wall_seconds,
        "stage_seconds": {k: round(v, 3) for k, v in summary.stage_seconds.items()},
        "workers": cfg.num_workers,
        "device": summary.device,
        "precision": summary.precision,
        "torch_threads": torch.get_num_threads(),
    }


def _centered_cosine(logp: Any, ref: Any) -> Any:
    """Per-image cosine of ``logp`` and ``ref`` after subtracting ``ref``'s mean over images."""
    import numpy as np

    mean = ref.mean(axis=0, keepdims=True)
    a, b = logp - mean, ref - mean
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _batchvision_probs(p: dict[str, Any], paths: list[str], precision: str) -> tuple[Any, str]:
    """batchvision's full output distribution (``top_k`` = all classes) for ``paths``."""
    import numpy as np
    import pyarrow.dataset as pads

    import batchvision
    from batchvision import RunConfig

    with tempfile.TemporaryDirectory(prefix="bench-parity-") as tmp:
        manifest = os.path.join(tmp, "first.txt")
        Path(manifest).write_text("\n".join(paths) + "\n", encoding="utf-8")
        cfg = RunConfig(
            inputs=(manifest,),
            output=os.path.join(tmp, "out"),
            model=p["model"],
            weights=p["weights"],
            device=p["device"],
            precision=precision,  # type: ignore[arg-type]
            batch_size=p["batch_size"],
            workers=p["workers"],
            top_k=p["num_classes"],
            seed=p["seed"],
            **_run_options(p),
        )
        _set_threads(p)
        summary = batchvision.run(cfg)
        table = pads.dataset(cfg.output, format="parquet").to_table()
    rows = {r["id"]: r for r in table.to_pylist()}
    probs = np.zeros((len(paths), p["num_classes"]), dtype=np.float64)
    for i, path in enumerate(paths):
        row = rows[path]
        if row["status"] != "ok":
            raise RuntimeError(f"batchvision failed on {path}: {row['error']}")
        probs[i, row["topk_ids"]] = row["topk_scores"]
    return probs, summary.precision


def _parity_scores(probs: Any, ref: Any) -> dict[str, float]:
    """How close batchvision's probabilities are to the reference's log-probabilities."""
    import numpy as np

    logp = np.log(np.maximum(probs, np.finfo(np.float32).tiny))
    cos = _centered_cosine(logp, ref)
    top5 = np.argsort(-logp, axis=1)[:, :5]
    top5_ref = np.argsort(-ref, axis=1)[:, :5]
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top5, top5_ref, strict=True)])
    return {
        "mean_centered_cosine": float(cos.mean()),
        "min_centered_cosine": float(cos.min()),
        "top1_agreement": float((top5[:, 0] == top5_ref[:, 0]).mean()),
        "top5_overlap": float(overlap),
        "max_abs_prob_diff": float(np.abs(probs - np.exp(ref)).max()),
        "zero_probabilities": int((probs <= 0).sum()),
    }


def child_parity(p: dict[str, Any]) -> dict[str, Any]:
    """batchvision's output distribution on the first images against a plain fp32 reference.

    Scored at the benchmark's precision and, when that is not fp32, at fp32 too, which
    separates what the data path (decode, resize, crop) costs from what reduced precision does.
    """
    import numpy as np
    import torch
    from PIL import Image, ImageOps
    from torchvision import models, transforms

    from batchvision.models.registry import build_model, load_state_dict, resolve_model

    spec = resolve_model(p["model"], p["weights"], seed=p["seed"])
    p = {**p, "num_classes": spec.num_classes}
    paths = sorted(str(q) for q in Path(p["image_dir"]).glob("*.jpg"))[: p["parity_images"]]

    # The reference: plain PIL + torchvision transforms, fp32, the same weights.
    w = models.get_model_weights(spec.arch).DEFAULT
    transform = transforms.Compose([transforms.ToTensor(), w.transforms()])
    model = build_model(spec, load_state_dict(spec)).float().eval()
    tensors = []
    for path in paths:
        with Image.open(path) as img:
            tensors.append(transform(ImageOps.exif_transpose(img).convert("RGB")))
    chunks = []
    with torch.inference_mode():
        for i in range(0, len(tensors), p["batch_size"]):
            x = torch.stack(tensors[i : i + p["batch_size"]])
            chunks.append(torch.log_softmax(model(x).double(), dim=1).numpy())
    ref = np.concatenate(chunks)
    del model

    probs, precision = _batchvision_probs(p, paths, p["precision"])
    result: dict[str, Any] = {
        "images": len(paths),
        "precision": precision,
        "reference": "PIL open + exif_transpose + RGB + ToTensor + weights.transforms(), fp32",
        "weights": spec.weights,
        **_parity_scores(probs, ref),
    }
    if precision != "fp32":
        probs32, _ = _batchvision_probs(p, paths, "fp32")
        result["fp32"] = _parity_scores(probs32, ref)
    return result


CHILDREN = {"model_only": child_model_only, "batchvision": child_end_to_end, "parity": child_parity}


def child_main(argv: Sequence[str]) -> int:
    mode, params_json, result_path = argv
    params = json.loads(params_json)
    result = CHILDREN[mode](params)
    result.update(_maxrss_mb())
    Path(result_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------


def ensure_images(cache: Path, n: int, seed: int) -> Path:
    """A folder of exactly ``n`` benchmark JPEGs, generated once and reused."""
    from batchvision.demo.synth import write_benchmark_images

    w, h = IMAGE_SIZE
    folder = cache / f"{w}x{h}-seed{seed}-n{n}"
    marker = cache / f"{folder.name}.complete"
    if marker.exists() and len(list(folder.glob("img_*.jpg"))) == n:
        return folder
    print(f"generating {n} benchmark images in {folder} ...", file=sys.stderr, flush=True)
    write_benchmark_images(folder, n, seed=seed, size=IMAGE_SIZE)
    marker.write_text("ok\n", encoding="utf-8")
    return folder


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill the measurement and every process it started (Ray's raylet and workers too)."""
    for pid in reversed(process_tree(proc.pid)):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def run_measured(
    name: str, cmd: list[str], log_dir: Path, result_path: Path, interval: float
) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process, sampling its tree's memory; returns its JSON result."""
    log_path = log_dir / f"{name}.log"
    print(f"[{name}] running ... (log: {log_path})", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        try:
            rc = proc.wait(timeout=CHILD_TIMEOUT_S)
        except BaseException:
            _kill_tree(proc)
            raise
        finally:
            memory = sampler.stop()
    elapsed = time.perf_counter() - start
    if rc != 0 or not result_path.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{name} failed (exit {rc}); last lines of {log_path}:\n{tail}")
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    result["memory"] = memory
    result["process_seconds"] = round(elapsed, 2)
    print(f"[{name}] done in {elapsed:.1f} s", file=sys.stderr, flush=True)
    return result


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    mem = re.search(r"^MemTotal:\s+(\d+)", _read("/proc/meminfo"), re.M)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu.group(1).strip() if cpu else platform.processor(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "ram_gb": round(int(mem.group(1)) / 1024**2, 1) if mem else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            d: _version(d)
            for d in ("batchvision", "torch", "torchvision", "ray", "numpy", "pillow", "pyarrow")
        },
    }


def _loadavg() -> list[float]:
    return [float(x) for x in _read("/proc/loadavg").split()[:3]] or [0.0, 0.0, 0.0]


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(report: dict[str, Any]) -> None:
    res = report["results"]
    header = (
        f"{'measurement':<32} {'img/s':>8} {'x model-only':>13} {'x seed':>8} "
        f"{'peak RSS MB':>12} {'peak PSS MB':>12}"
    )
    print(header)
    print("-" * len(header))
    for key in MEASUREMENTS:
        if key not in res:
            continue
        r = res[key]
        ratios = report["ratios"][key]
        print(
            f"{TITLES[key]:<32} {r['images_per_second']:>8.2f} "
            f"{_fmt(ratios['to_model_only'], '.2f'):>13} {_fmt(ratios['to_seed'], '.2f'):>8} "
            f"{r['memory']['peak_tree_rss_mb']:>12.0f} {r['memory']['peak_tree_pss_mb']:>12.0f}"
        )
    cfg = report["config"]
    print(
        f"\n{cfg['model']} ({cfg['weights']} weights), {cfg['images']} images "
        f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, batch {cfg['batch_size']}, precision "
        f"{cfg['precision_resolved']} (seed pipeline: fp32), "
        f"{report['machine']['usable_cores']} cores, {report['machine']['cpu_model']}"
    )
    mo = res["model_only"]
    print(
        f"model-only: {mo['images']} images timed, warm-up batches {mo['warmup_batch_seconds']} s, "
        f"then {mo['batch_seconds_steady']:.2f} s per batch"
    )
    if "batchvision" in res:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in res["batchvision"]["stage_seconds"].items())
        wall = res["batchvision"]["seconds"]
        print(f"batchvision stage_seconds (wall {wall:.2f} s): {stages}")
    if "seed_ray" in res:
        s = res["seed_ray"]
        print(
            f"seed pipeline: ray.init {s['ray_init_seconds']:.2f} s (not counted), "
            f"model actor torch threads: {s.get('actor_torch_threads', '?')}"
        )
    par = report.get("parity")
    if par:
        print(
            f"parity ({par['images']} images, batchvision {par['precision']} vs torchvision fp32 "
            f"reference): mean centered cosine {par['mean_centered_cosine']:.5f} "
            f"(min {par['min_centered_cosine']:.5f}), top-1 agreement "
            f"{par['top1_agreement']:.3f}, top-5 overlap {par['top5_overlap']:.3f}"
        )
        if "fp32" in par:
            f32 = par["fp32"]
            print(
                f"  same at --precision fp32 (data path only): mean centered cosine "
                f"{f32['mean_centered_cosine']:.5f} (min {f32['min_centered_cosine']:.5f}), "
                f"top-1 agreement {f32['top1_agreement']:.3f}"
            )
    print(
        f"load average before/after: {report['loadavg_before']} / {report['loadavg_after']} "
        "(a high load means noisy timings)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Throughput of batchvision vs its model alone vs the seed Ray Data "
        "pipeline, on the same images, model, precision and batch size.",
    )
    p.add_argument("--model", default="resnet50", help="torchvision architecture")
    p.add_argument(
        "--weights",
        default="random",
        help="'random' (default, no download) or a checkpoint path for batchvision and the "
        "parity reference; the seed pipeline always uses random init",
    )
    p.add_argument("--images", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None, help="batchvision decode workers")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the model's process")
    p.add_argument("--compile", action="store_true", help="batchvision --compile (both runs)")
    p.add_argument(
        "--decode-device", default="cpu", choices=("cpu", "cuda", "auto"), help="end-to-end"
    )
    p.add_argument(
        "--decode-threads", type=int, default=None, help="batchvision --decode-threads (e2e)"
    )
    p.add_argument("--warmup", type=int, default=2, help="warm-up batches for model-only")
    p.add_argument("--top-k", type=int, default=5, help="top-k for the speed runs")
    p.add_argument("--seed", type=int, default=0, help="image and random-weights seed")
    p.add_argument("--skip-seed", action="store_true", help="skip the Ray Data pipeline")
    p.add_argument(
        "--parity-images", type=int, default=PARITY_IMAGES, help="0 skips the parity figure"
    )
    p.add_argument("--image-cache", default=DEFAULT_CACHE, help="folder for generated images")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON report path")
    p.add_argument("--mem-interval", type=float, default=0.5, help="memory sampling period, s")
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
    image_dir = ensure_images(cache, args.images, args.seed).resolve()

    params = {
        "image_dir": str(image_dir),
        "images": args.images,
        "model": args.model,
        "weights": args.weights,
        "device": args.device,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": args.threads,
        "compile": args.compile,
        "decode_device": args.decode_device,
        "decode_threads": args.decode_threads,
        "warmup": args.warmup,
        "top_k": args.top_k,
        "seed": args.seed,
        "parity_images": min(args.parity_images, args.images),
    }
    report: dict[str, Any] = {
        "benchmark": "bench_local",
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "loadavg_before": _loadavg(),
        "results": {},
    }
    results = report["results"]
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        work = Path(tmp)
        log_dir = out.parent / "bench_local_logs"
        log_dir.mkdir(parents=True, exist_ok=True)

        def child(mode: str) -> dict[str, Any]:
            result_path = work / f"{mode}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode]
            cmd += [json.dumps(params), str(result_path)]
            return run_measured(mode, cmd, log_dir, result_path, args.mem_interval)

        results["model_only"] = child("model_only")
        results["batchvision"] = child("batchvision")
        if not args.skip_seed:
            result_path = work / "seed_ray.json"
            cmd = [sys.executable, str(HERE / "seed_pipeline.py"), str(image_dir)]
            cmd += ["--model", args.model, "--batch-size", str(args.batch_size)]
            cmd += ["--json-out", str(result_path)]
            seed = run_measured("seed_ray", cmd, log_dir, result_path, args.mem_interval)
            threads = re.search(
                r"seed-actor torch_threads=(\d+)",
                (log_dir / "seed_ray.log").read_text(encoding="utf-8", errors="replace"),
            )
            seed["actor_torch_threads"] = int(threads.group(1)) if threads else None
            if seed["rows"] != args.images:
                raise RuntimeError(f"seed pipeline wrote {seed['rows']} rows, not {args.images}")
            results["seed_ray"] = seed
        if params["parity_images"] > 0:
            report["parity"] = child("parity")

    base = results["model_only"]["images_per_second"]
    seed_ips = results.get("seed_ray", {}).get("images_per_second")
    report["ratios"] = {
        key: {
            "to_model_only": _ratio(r["images_per_second"], base),
            "to_seed": _ratio(r["images_per_second"], seed_ips),
        }
        for key, r in results.items()
    }
    report["config"] = {
        "model": args.model,
        "weights": args.weights,
        "images": args.images,
        "image_size": list(IMAGE_SIZE),
        "image_dir": str(image_dir),
        "batch_size": args.batch_size,
        "precision_requested": args.precision,
        "precision_resolved": results["batchvision"]["precision"],
        "seed_pipeline_precision": "fp32",
        "device": results["batchvision"]["device"],
        "workers": results["batchvision"]["workers"],
        "torch_threads": results["batchvision"]["torch_threads"],
        "compile": args.compile,
        "decode_device": args.decode_device,
        "decode_threads": args.decode_threads,
        "top_k": args.top_k,
        "seed": args.seed,
    }
    report["loadavg_after"] = _loadavg()
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
