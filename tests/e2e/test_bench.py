"""`batchvision bench --smoke` end to end: real measurements in real subprocesses (a real
local Ray instance for the Ray Data seed strategy), the table, bench.json and the chart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli

pytest.importorskip("matplotlib")
pytest.importorskip("ray")

SMOKE_ROWS = {"decode", "model", "local", "sequential", "ray_data"}


def test_bench_smoke_measures_every_row(tmp_path: Path, tiny_checkpoint: tuple[Path, Path]) -> None:
    weights, labels = tiny_checkpoint
    out = tmp_path / "bench"
    start = time.perf_counter()
    proc = run_cli(
        "bench",
        "--smoke",
        "--model",
        "mobilenet_v3_small",
        "--weights",
        str(weights),
        "--labels",
        str(labels),
        "--out",
        str(out),
        timeout=240,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr

    report = json.loads((out / "bench.json").read_text())
    assert report["ok"] is True
    assert report["config"]["smoke"] is True
    assert report["images"]["count"] == 24
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == SMOKE_ROWS
    for name, row in rows.items():
        assert row["error"] is None, (name, row["error"])
        assert row["batch_size"] == 8
        assert row["images_per_second"] > 0, name
        assert row["peak_rss_mb"] > 50 and row["peak_pss_mb"] > 20, name
        assert row["memory"]["samples"] >= 1
    # Every measurement saw every image (model-only times full batches only: 3 of 8).
    for name in ("decode", "local", "sequential", "ray_data"):
        assert rows[name]["images"] == 24, name
    assert rows["model"]["images"] == 24
    assert rows["local"]["details"]["stage_seconds"]["inference"] > 0
    assert rows["ray_data"]["details"]["ray_init_seconds"] > 0
    assert rows["ray_data"]["ratios"]["to_seed"] == 1.0
    assert rows["local"]["ratios"]["to_model_only"] > 0
    # The Ray Data seed starts Ray's own processes: the sampler saw the whole tree.
    assert (
        rows["ray_data"]["memory"]["peak_processes"]
        > rows["sequential"]["memory"]["peak_processes"]
    )

    parity = report["parity"]
    assert parity["images"] == 8
    assert parity["mean_centered_cosine"] >= 0.99
    assert parity["min_centered_cosine"] >= 0.98

    machine = report["machine"]
    assert machine["usable_cores"] >= 1 and machine["ram_gb"] > 0
    assert machine["cpu_model"] and machine["versions"]["torch"]
    assert len(machine["loadavg_before"]) == 3 and len(machine["loadavg_after"]) == 3

    with Image.open(out / "bench.png") as img:
        assert img.format == "PNG"
        assert 800 <= img.width <= 3000 and 300 <= img.height <= 1500
    assert (out / "logs" / "ray_data-b8.log").exists()

    table = proc.stdout
    for title in (
        "decode only (read+decode+preprocess)",
        "model only (ready tensors on device)",
        "batchvision --engine local",
        "seed: sequential loop",
        "seed: Ray Data map_batches",
    ):
        assert title in table, title
    assert f"{parity['mean_centered_cosine']:.4f}" in table
    assert "wrote " in table and "bench.json" in table
    # The smoke run's promise (generous under a loaded test machine).
    assert seconds < 120, seconds


def test_bench_memory_check_reports_peak_rss_per_size(
    tmp_path: Path, tiny_checkpoint: tuple[Path, Path]
) -> None:
    weights, labels = tiny_checkpoint
    out = tmp_path / "mem"
    proc = run_cli(
        "bench",
        "--smoke",
        "--memory-check",
        "--memory-sizes",
        "30,90",
        "--synthetic",
        "12",
        "--model",
        "mobilenet_v3_small",
        "--weights",
        str(weights),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "-q",
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "bench.json").read_text())
    assert [r["images"] for r in report["rows"]] == [30, 90]
    assert all(r["kind"] == "memory" and r["peak_rss_mb"] > 50 for r in report["rows"])
    mem = report["memory_check"]
    assert mem["images"] == [30, 90]
    assert mem["rss_ratio"] == pytest.approx(mem["peak_rss_mb"][1] / mem["peak_rss_mb"][0], 1e-2)
    assert report["parity"] is None
    assert "memory check (peak RSS, local engine): 30 images" in proc.stdout
    assert (out / "bench.png").stat().st_size > 10_000
