"""Engine fast paths end to end on CPU: OOM halving (injected), ``--batch-size auto``, the
device decode path (run on the CPU device), and their manifest records."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import batchvision
from batchvision.config import PreprocessOverrides, RunConfig, usable_cores
from batchvision.engines import local
from batchvision.errors import ConfigError
from batchvision.stages.batching import INJECT_OOM_ENV
from tests.conftest import run_cli
from tests.unit import odd_images as oi

SMALL = PreprocessOverrides(resize_size=72, crop_size=64)


@pytest.fixture(scope="module")
def mixed_dir(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 24 photos plus the inputs the device decoder hands to the CPU: 30 images."""
    root = tmp_path_factory.mktemp("mixed")
    for p in sorted(photo_dir.rglob("*.jpg")):
        (root / p.name).write_bytes(p.read_bytes())
    (root / "z_png.png").write_bytes(oi.encode(oi.photo(200, 150, seed=1), "PNG"))
    cmyk = oi.photo(180, 160, seed=2).convert("CMYK")
    (root / "z_cmyk.jpg").write_bytes(oi.encode(cmyk, "JPEG"))
    gray = oi.photo(160, 200, seed=3).convert("L")
    (root / "z_gray.jpg").write_bytes(oi.encode(gray, "JPEG"))
    (root / "z_rotated.jpg").write_bytes(oi.with_orientation(oi.photo(220, 140, seed=4), 8))
    (root / "z_corrupt.jpg").write_bytes(oi.jpeg_random_scan())
    (root / "z_truncated.jpg").write_bytes(
        oi.truncated(oi.encode(oi.photo(200, 200, seed=5), "JPEG"))
    )
    return root


def _config(inputs: Path, out: Path, tiny: tuple[Path, Path], **kw: Any) -> RunConfig:
    ckpt, labels = tiny
    opts: dict[str, Any] = {
        "model": "mobilenet_v3_small",
        "weights": str(ckpt),
        "labels": str(labels),
        "batch_size": 8,
        "workers": 0,
        "top_k": 10,
        "precision": "fp32",
        "preprocess": SMALL,
        "max_error_rate": 1.0,
        **kw,
    }
    return RunConfig(inputs=(str(inputs),), output=str(out), **opts)


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for part in sorted(out.glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            assert row["id"] not in rows, f"{row['id']} written twice"
            rows[row["id"]] = row
    return rows


def _last_run(out: Path) -> dict[str, Any]:
    return json.loads((out / "_manifest.json").read_text())["runs"][-1]


@pytest.fixture(scope="module")
def baseline(mixed_dir: Path, tiny_checkpoint, tmp_path_factory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("baseline") / "out"
    # Full-size decoding: what the device decoder does (it has no reduced-size decoding).
    batchvision.run(_config(mixed_dir, out, tiny_checkpoint, draft=False, decode_threads=0))
    assert _last_run(out)["batch_size"] == 8
    assert _last_run(out)["decode_threads"] == 0
    assert _last_run(out)["batch_size_search"] is None
    assert _last_run(out)["decode_device"] == "cpu"
    return _rows(out)


def _scores(rows: dict[str, dict[str, Any]]) -> np.ndarray:
    """Full probability vectors (top_k = all 10 classes) in class order, by sorted id."""
    out = []
    for key in sorted(rows):
        probs = np.zeros(10)
        r = rows[key]
        if r["status"] == "ok":
            probs[r["topk_ids"]] = r["topk_scores"]
        out.append(probs)
    return np.array(out)


def test_injected_oom_halves_and_loses_nothing(
    mixed_dir: Path, tiny_checkpoint, baseline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INJECT_OOM_ENV, "3")
    out = tmp_path / "out"
    summary = batchvision.run(_config(mixed_dir, out, tiny_checkpoint, draft=False))
    rows = _rows(out)
    assert sorted(rows) == sorted(baseline)  # every id exactly once
    assert summary.ok + summary.error == len(baseline) == 30
    for key, row in rows.items():
        want = baseline[key]
        assert (row["status"], row["error"], row["label"]) == (
            want["status"],
            want["error"],
            want["label"],
        ), key
        assert row["topk_ids"] == want["topk_ids"], key
        if row["status"] == "ok":
            np.testing.assert_allclose(row["topk_scores"], want["topk_scores"], atol=1e-5)
    assert _last_run(out)["batch_size"] == 2  # 8 -> 4 -> 2, kept


def test_batch_size_auto_is_measured_and_recorded(
    mixed_dir: Path, tiny_checkpoint, baseline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INJECT_OOM_ENV, "16")
    out = tmp_path / "out"
    batchvision.run(_config(mixed_dir, out, tiny_checkpoint, batch_size="auto", draft=False))
    run = _last_run(out)
    search = run["batch_size_search"]
    assert run["config"]["batch_size"] == "auto"
    assert run["batch_size"] == search["size"]
    assert 8 <= search["size"] <= 16  # CPU starts at 8; 32 runs out of (injected) memory
    trials = [t["batch_size"] for t in search["trials"]]
    assert trials[0] == 8
    assert all(t["images_per_second"] > 0 for t in search["trials"] if t["batch_size"] <= 16)
    rows = _rows(out)
    assert sorted(rows) == sorted(baseline)
    np.testing.assert_allclose(_scores(rows), _scores(baseline), atol=1e-4)


def test_device_decode_path_gives_the_same_rows(
    mixed_dir: Path, tiny_checkpoint, baseline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No GPU here: run the engine's device path with the CPU as the device.
    monkeypatch.setattr(local, "decode_target", lambda setting, dev: torch.device("cpu"))
    # The worker routes each batch (the main process gets the device's JPEGs with their
    # headers, and the rest decoded) and the device decodes on a thread of its own.
    seen: list[tuple[str, bool]] = []
    real_decode = local.decode_batch_device

    def spy(batch: dict[str, Any], **kw: Any) -> dict[str, Any]:
        seen.append((threading.current_thread().name, "bytes" in batch))
        return real_decode(batch, **kw)

    monkeypatch.setattr(local, "decode_batch_device", spy)
    out = tmp_path / "out"
    summary = batchvision.run(_config(mixed_dir, out, tiny_checkpoint, workers=1, draft=False))
    assert seen == [("decode-ahead", False)] * 4  # 30 images in batches of 8
    rows = _rows(out)
    assert sorted(rows) == sorted(baseline)
    for key, row in rows.items():
        want = baseline[key]
        assert (row["status"], row["error"], row["width"], row["height"]) == (
            want["status"],
            want["error"],
            want["width"],
            want["height"],
        ), key
    assert summary.error_codes == {"corrupt": 1, "truncated": 1}
    got, want = np.log(_scores(rows) + 1e-9), np.log(_scores(baseline) + 1e-9)
    ok = np.array([baseline[k]["status"] == "ok" for k in sorted(baseline)])
    centre = want[ok].mean(0, keepdims=True)
    a, b = got[ok] - centre, want[ok] - centre
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.99, cos
    assert summary.stage_seconds["decode"] > 0


def test_decode_target_choices() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda:0")
    assert local.decode_target("cpu", cuda) is None
    assert local.decode_target("auto", cpu) is None
    assert local.decode_target("auto", cuda) == cuda
    assert local.decode_target("cuda", cuda) == cuda
    with pytest.raises(ConfigError, match="--decode-device 'cuda' needs the model on CUDA"):
        local.decode_target("cuda", cpu)


def test_config_validation_names_value_and_choices() -> None:
    base: dict[str, Any] = {"inputs": ("x",), "output": "y", "model": "resnet18"}
    with pytest.raises(ConfigError, match="--batch-size 'big' is not valid; choose a positive"):
        RunConfig(**base, batch_size="big")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--batch-size 0 is not valid"):
        RunConfig(**base, batch_size=0)
    with pytest.raises(ConfigError, match="--decode-device 'gpu' is not valid; choose one of: cpu"):
        RunConfig(**base, decode_device="gpu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--decode-device cuda applies to --engine local"):
        RunConfig(**base, engine="ray", decode_device="cuda")
    assert RunConfig(**base, batch_size="auto").batch_size == "auto"


def test_cli_errors(photo_dir: Path, tmp_path: Path) -> None:
    res = run_cli("run", str(photo_dir), "-m", "resnet18", "-o", str(tmp_path / "o"), "-b", "x")
    assert res.returncode == 2
    assert "x is not valid; choose an integer x>=1 or auto" in res.stderr
    res = run_cli(
        "run",
        str(photo_dir),
        *("-m", "resnet18", "-w", "random", "-o", str(tmp_path / "o2")),
        *("--device", "cpu", "--decode-device", "cuda"),
    )
    assert res.returncode == 2
    assert "--decode-device cuda needs the model on CUDA" in res.stderr
    assert not (tmp_path / "o2").exists()


def test_decode_threads_in_the_main_process_give_the_same_rows(
    mixed_dir: Path, tiny_checkpoint, baseline, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = batchvision.run(
        _config(mixed_dir, out, tiny_checkpoint, workers=1, decode_threads=2, draft=False)
    )
    rows = _rows(out)
    assert sorted(rows) == sorted(baseline)
    for key, row in rows.items():
        want = baseline[key]
        for col in ("status", "error", "width", "height", "label", "topk_ids"):
            assert row[col] == want[col], (key, col)
    np.testing.assert_allclose(_scores(rows), _scores(baseline), atol=1e-5)
    assert summary.stage_seconds["decode"] > 0
    assert _last_run(out)["decode_threads"] == 2
    # The default on CPU: one decode thread per core.
    cfg = _config(mixed_dir, out, tiny_checkpoint)
    assert cfg.decode_threads is None
    assert cfg.num_decode_threads("cpu") == usable_cores()
    assert cfg.num_decode_threads("cuda") == 0
    with pytest.raises(ConfigError, match="--decode-threads must be >= 0, got -1"):
        _config(mixed_dir, out, tiny_checkpoint, decode_threads=-1)
