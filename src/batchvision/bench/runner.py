"""Orchestrate a bench: pick the images, run each measurement in a fresh process, report.

Every measurement (decode only, model only, each engine end to end, each seed strategy,
at each batch size; the parity figure; the memory check's runs) runs in its own
subprocess whose whole process tree is sampled for peak memory
(:mod:`batchvision.bench.procmem`); this process only orchestrates (its own memory is in
no figure). Writes ``bench.json``, ``bench.png`` and one log per measurement under ``out``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from batchvision.bench import machine
from batchvision.bench.chart import write_chart
from batchvision.bench.options import BenchConfig, check_installed, runtime_params
from batchvision.bench.procmem import MeasurementError, run_measured
from batchvision.bench.results import add_ratios, make_row, memory_summary, targets
from batchvision.errors import ConfigError

logger = logging.getLogger(__name__)

REPORT_NAME = "bench.json"
CHART_NAME = "bench.png"
TOP_K = 5


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run every measurement ``config`` asks for; returns the report (also in bench.json).

    A measurement that fails becomes a row with its ``error`` (the others still run);
    ``report["ok"]`` says whether all succeeded.

    Raises:
        ConfigError: a missing optional dependency, or unusable images.
    """
    check_installed(config)
    check_model(config)
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    paths, source = select_images(config, out)
    loadavg_before = machine.loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-work-") as tmp:
        work = Path(tmp)
        manifest = work / "images.txt"
        write_manifest(manifest, paths)
        base = _params(config, manifest)
        runner = _Runner(config, work, logs)
        if config.memory_check:
            rows = _memory_rows(config, runner, base, paths, work)
            parity = None
        else:
            rows = _throughput_rows(config, runner, base)
            parity = _parity(config, runner, base, len(paths))
    add_ratios(rows)
    mach = machine.machine_info()
    mach.update(loadavg_before=loadavg_before, loadavg_after=machine.loadavg())
    report: dict[str, Any] = {
        "benchmark": "batchvision bench",
        "format_version": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "config": asdict(config),
        "machine": mach,
        "images": {"count": len(paths), "source": source, "first": paths[0]},
        "precision": _resolved_precision(rows),
        "rows": rows,
        "parity": parity,
        "memory_check": memory_summary(rows),
        "targets": targets(rows),
        "report": str(out / REPORT_NAME),
        "chart": str(out / CHART_NAME),
        "logs": str(logs),
    }
    report["ok"] = all(r["error"] is None for r in rows) and not (parity or {}).get("error")
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_chart(report, out / CHART_NAME)
    return report


def check_model(config: BenchConfig) -> None:
    """Fail before any work on a device, model name, weights or labels that cannot be
    resolved, or on a model that is not a classifier (every measurement would fail alike)."""
    from batchvision.models.registry import resolve_model
    from batchvision.stages.device import resolve_device

    resolve_device(config.device)  # e.g. cuda on a machine without a GPU
    spec = resolve_model(config.model, config.weights, labels_path=config.labels, seed=config.seed)
    if spec.task != "classify":
        raise ConfigError(
            f"batchvision bench measures classification models; {spec.name} is a {spec.task} model"
        )


class _Runner:
    """Runs one measurement in a fresh ``python -m batchvision.bench.children`` process."""

    def __init__(self, config: BenchConfig, work: Path, logs: Path) -> None:
        self.config = config
        self.work = work
        self.logs = logs

    def __call__(self, label: str, mode: str, params: dict[str, Any]) -> dict[str, Any]:
        result_path = self.work / f"{label}.json"
        cmd = [sys.executable, "-m", "batchvision.bench.children", mode]
        cmd += [json.dumps(params), str(result_path)]
        return run_measured(
            label,
            cmd,
            self.logs / f"{label}.log",
            result_path,
            interval=self.config.mem_interval,
            timeout=self.config.timeout,
        )

    def row(self, name: str, mode: str, params: dict[str, Any], **kw: Any) -> dict[str, Any]:
        label = f"{name}-b{params['batch_size']}" + (f"-n{kw['images']}" if "images" in kw else "")
        try:
            result = self(label, mode, params)
        except MeasurementError as e:
            logger.error("%s", e)
            return make_row(name, params["batch_size"], error=str(e), kind=kw.get("kind"))
        return make_row(name, params["batch_size"], result, kind=kw.get("kind"))


def _params(config: BenchConfig, manifest: Path) -> dict[str, Any]:
    return {
        "manifest": str(manifest),
        "model": config.model,
        "weights": config.weights,
        "labels": config.labels,
        "device": config.device,
        "precision": config.precision,
        "batch_size": config.batch_sizes[0],
        "workers": config.workers,
        "warmup": config.warmup,
        "top_k": TOP_K,
        "seed": config.seed,
        "parity_images": config.parity_images,
        "runtime": "torch",
    }


def _throughput_rows(
    config: BenchConfig, runner: _Runner, base: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = []
    for bs in config.batch_sizes:
        p = {**base, "batch_size": bs}
        rows.append(runner.row("decode", "decode", p))
        rows.append(runner.row("model", "model", p))
        for engine in config.engines:
            rows.append(runner.row(engine, "engine", {**p, "engine": engine}))
        for strategy in config.strategies:
            rows.append(runner.row(strategy, "seed", {**p, "strategy": strategy}))
        for entry in config.runtimes:
            q = {**p, **runtime_params(entry)}
            rows.append(runner.row(f"model {entry}", "model", q, kind="stage"))
            rows.append(runner.row(f"local {entry}", "engine", {**q, "engine": "local"}))
    return rows


def _parity(
    config: BenchConfig, runner: _Runner, base: dict[str, Any], n: int
) -> dict[str, Any] | None:
    if config.parity_images == 0:
        return None
    params = {**base, "parity_images": min(config.parity_images, n)}
    try:
        result = runner("parity", "parity", params)
    except MeasurementError as e:
        logger.error("%s", e)
        return {"error": str(e)}
    runtimes: dict[str, Any] = {}
    for entry in config.runtimes:  # the same reference, each runtime's output
        try:
            runtimes[entry] = runner(
                f"parity-{entry}", "parity", {**params, **runtime_params(entry)}
            )
        except MeasurementError as e:
            logger.error("%s", e)
            runtimes[entry] = {"error": str(e)}
    if runtimes:
        result["runtimes"] = runtimes
    return result


def _memory_rows(
    config: BenchConfig,
    runner: _Runner,
    base: dict[str, Any],
    paths: list[str],
    work: Path,
) -> list[dict[str, Any]]:
    """The local engine end to end on each of ``memory_sizes`` images.

    The larger sets repeat the images through hard links (symbolic links across file
    systems) under distinct names: what grows is the number of inputs and rows, which is
    what memory must not follow.
    """
    farm = link_farm(paths, max(config.memory_sizes), work / "memory-images")
    rows = []
    for n in config.memory_sizes:
        manifest = work / f"memory-{n}.txt"
        write_manifest(manifest, farm[:n])
        p = {**base, "manifest": str(manifest), "engine": "local"}
        rows.append(runner.row("local", "engine", p, kind="memory", images=n))
    return rows


def select_images(config: BenchConfig, out: Path) -> tuple[list[str], str]:
    """The absolute paths of the images to measure on, and a description of them."""
    if config.synthetic is not None:
        folder = ensure_synthetic(out / "images", config.synthetic, config.seed, config.image_size)
        paths = sorted(str(p.resolve()) for p in folder.glob("img_*.jpg"))
        w, h = config.image_size
        source = f"synthetic {w}x{h} JPEGs in {folder}"
    else:
        from batchvision.io.sources import check_inputs, iter_inputs

        assert config.input is not None
        kinds = check_inputs([config.input])
        paths = []
        if kinds == ["shards"]:
            paths = extract_samples(config.input, out / "shard-samples", config.images)
        for item in iter_inputs([config.input]):
            paths.append(os.path.abspath(item.path))
            if config.images is not None and len(paths) >= config.images:
                break
        source = config.input
    if config.images is not None:
        paths = paths[: config.images]
    if not paths:
        raise ConfigError(f"no images to measure in {config.input or 'the synthetic set'}")
    return paths, source


#: File name extensions by leading bytes, for samples written out as files (Ray Data's
#: image reader, one of the strategies measured, lists files by extension).
_SIGNATURES = ((b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"), (b"II*\0", ".tif"))


def extract_samples(spec: str, folder: Path, limit: int | None) -> list[str]:
    """The images of a shard input (WebDataset, Parquet) as files in ``folder``, up to
    ``limit``: every strategy measured reads files, the seeds' included."""
    from batchvision.config import DEFAULT_MAX_FILE_BYTES
    from batchvision.io import shards, units
    from batchvision.io.storage import StorageOptions

    folder.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    opts, storage = shards.ShardOptions(), StorageOptions()
    for unit in units.plan_shard_units([spec], storage, opts):
        for sample in units.unit_samples(unit, opts, storage, DEFAULT_MAX_FILE_BYTES):
            if sample.data is None:
                continue
            ext = next((e for sig, e in _SIGNATURES if sample.data.startswith(sig)), ".jpg")
            path = folder / f"sample_{len(paths):06d}{ext}"
            path.write_bytes(sample.data)
            paths.append(str(path.resolve()))
            if limit is not None and len(paths) >= limit:
                return paths
    return paths


def ensure_synthetic(cache: Path, n: int, seed: int, size: tuple[int, int]) -> Path:
    """A folder of exactly ``n`` benchmark JPEGs, generated once and reused."""
    from batchvision.demo.synth import write_benchmark_images

    w, h = size
    folder = cache / f"{w}x{h}-seed{seed}-n{n}"
    marker = cache / f"{folder.name}.complete"
    if marker.exists() and len(list(folder.glob("img_*.jpg"))) == n:
        return folder
    logger.info("generating %d benchmark images in %s", n, folder)
    shutil.rmtree(folder, ignore_errors=True)
    write_benchmark_images(folder, n, seed=seed, size=size)
    marker.write_text("ok\n", encoding="utf-8")
    return folder


def link_farm(paths: list[str], n: int, folder: Path) -> list[str]:
    """``n`` distinct file names in ``folder`` cycling over ``paths`` (hard links)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        src = paths[i % len(paths)]
        dst = folder / f"m_{i:06d}{Path(src).suffix.lower()}"
        try:
            os.link(src, dst)
        except OSError:
            os.symlink(src, dst)
        out.append(str(dst))
    return out


def write_manifest(path: Path, paths: list[str]) -> None:
    """A ``.txt`` manifest: one absolute path per line."""
    path.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")


def _resolved_precision(rows: list[dict[str, Any]]) -> str | None:
    for r in rows:
        precision = r["details"].get("precision")
        if r["kind"] in ("engine", "memory") and precision:
            return str(precision)
    return None
