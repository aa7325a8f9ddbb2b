"""`batchvision bench --smoke` end to end: real measurements in real subprocesses (a real
local Ray instance for the Ray Data seed strategy), the table, bench.json and the chart.

Timings are figures to report, not promises to assert here (they depend on the machine's
load); whether memory stays flat is measured in tests/e2e/test_memory.py."""

from __future__ import annotations

import json
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
        # Each figure is its own measurement's: the images over the seconds timed, inside
        # the life of the process that measured them.
        assert row["images_per_second"] == pytest.approx(row["images"] / row["seconds"], rel=0.01)
        assert 0 < row["seconds"] < row["details"]["process_seconds"], name
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

    # The table shows every row with its batch size, image count and throughput.
    lines = proc.stdout.splitlines()
    for row in rows.values():
        line = next((line for line in lines if line.startswith(row["title"] + " ")), None)
        assert line is not None, (row["title"], proc.stdout)
        assert line[len(row["title"]) :].split()[:3] == [
            "8",
            "24",
            f"{row['images_per_second']:.2f}",
        ], line
    assert f"{parity['mean_centered_cosine']:.4f}" in proc.stdout
    assert "wrote " in proc.stdout and "bench.json" in proc.stdout


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
    rows = report["rows"]
    # One local engine run per size, over that many images, each in its own sampled process.
    assert [(r["name"], r["kind"], r["images"], r["error"]) for r in rows] == [
        ("local", "memory", 30, None),
        ("local", "memory", 90, None),
    ]
    for r in rows:
        assert r["peak_rss_mb"] > 50 and r["peak_pss_mb"] > 20
        assert r["details"]["main_maxrss_mb"] > 50 and r["memory"]["samples"] >= 1
    # The check reports those rows' peaks, and the table says what its verdict is.
    mem = report["memory_check"]
    assert mem["images"] == [30, 90]
    assert mem["peak_rss_mb"] == [r["peak_rss_mb"] for r in rows]
    assert mem["peak_pss_mb"] == [r["peak_pss_mb"] for r in rows]
    verdict = "flat" if mem["flat"] else "NOT flat"
    assert (
        f"memory check (peak RSS, local engine): 30 images {rows[0]['peak_rss_mb']:.0f} MB vs "
        f"90 images {rows[1]['peak_rss_mb']:.0f} MB: ratio {mem['rss_ratio']:.3f} ({verdict}: "
        "within 10% wanted"
    ) in proc.stdout
    assert report["parity"] is None
    assert (out / "bench.png").stat().st_size > 10_000
