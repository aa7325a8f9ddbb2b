"""--runtime onnxruntime/openvino end to end: fp32 parity with torch, int8 on the trained
demo model, the --min-agreement refusal, and the Ray engine running the export."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

import batchvision
from batchvision.config import PreprocessOverrides, RunConfig
from batchvision.demo import synth
from batchvision.demo.runner import bundled_model
from batchvision.runtimes.prepare import resolve_precision
from batchvision.stages.device import native_bf16
from tests.conftest import run_cli, tiny_config, tiny_run_args

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

pytestmark = pytest.mark.timeout(240)

TINY = PreprocessOverrides(resize_size=64, crop_size=64)
#: Demo images per class (6 classes), and the int8 calibration / held-apart sets.
PER_CLASS = 40
CALIBRATION, HELD_APART = 100, 100


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One export cache for the module, set before anything (Ray included) starts."""
    folder = tmp_path_factory.mktemp("export_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BATCHVISION_CACHE_DIR", str(folder))
        yield folder


def read_rows(out: Path) -> dict[str, dict[str, Any]]:
    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "an id was written more than once"
    return by_id


def manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "_manifest.json").read_text())


def _run(config: RunConfig) -> batchvision.Summary:
    summary = batchvision.run(config)
    assert summary.exit_code == 0 and summary.error == 0, summary
    return summary


# --- fp32 parity on the tiny model ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(
    photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[batchvision.Summary, Path]]:
    """The tiny model over photo_dir at fp32 on torch, onnxruntime and openvino."""
    root = tmp_path_factory.mktemp("tiny_runs")
    runs = {}
    for runtime in ("torch", "onnxruntime", "openvino"):
        out = root / runtime
        config = tiny_config(photo_dir, out, tiny_checkpoint, preprocess=TINY,
                             runtime=runtime, precision="fp32", top_k=3)  # fmt: skip
        runs[runtime] = (_run(config), out)
    return runs


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fp32_parity_with_torch(
    runtime: str, tiny_runs: dict[str, tuple[batchvision.Summary, Path]]
) -> None:
    torch_summary, torch_out = tiny_runs["torch"]
    summary, out = tiny_runs[runtime]
    ref, got = read_rows(torch_out), read_rows(out)
    assert len(ref) == 24 and ref.keys() == got.keys()
    assert summary.ok == torch_summary.ok == 24
    assert summary.precision == torch_summary.precision == "fp32"
    assert len({r["label"] for r in ref.values()}) > 1  # labels differ between images
    for i, r in ref.items():
        g = got[i]
        assert g["status"] == "ok"
        assert g["topk_ids"][0] == r["topk_ids"][0] and g["label"] == r["label"], i
        np.testing.assert_allclose(g["topk_scores"], r["topk_scores"], atol=1e-4, err_msg=i)
    record = manifest(out)["runtime"]
    assert (record["runtime"], record["precision"]) == (runtime, "fp32")
    assert manifest(out)["runs"][-1]["runtime"] == record
    assert manifest(torch_out)["runtime"] == {"runtime": "torch"}


def test_openvino_auto_precision_is_recorded(
    photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path,
    tiny_runs: dict[str, tuple[batchvision.Summary, Path]],
) -> None:  # fmt: skip
    want = resolve_precision("openvino", "auto", native_bf16(torch.device("cpu")))
    out = tmp_path / "out"
    config = tiny_config(photo_dir, out, tiny_checkpoint, preprocess=TINY, runtime="openvino",
                         top_k=3)  # fmt: skip
    assert config.precision == "auto"
    summary = _run(config)
    assert summary.precision == want
    record = manifest(out)["runtime"]
    assert record["runtime"] == "openvino" and record["precision"] == want
    assert record["export_cached"] is True  # the fp32 run exported the same model before
    assert manifest(out)["runs"][-1]["runtime"]["precision"] == want
    # bf16 or fp32, the top-1 classes are still the torch fp32 model's on most images
    ref, got = read_rows(tiny_runs["torch"][1]), read_rows(out)
    assert ref.keys() == got.keys()
    same = sum(got[i]["label"] == r["label"] for i, r in ref.items())
    assert same >= 22, f"{same}/24 top-1 agree at {want}"


# --- int8 on the trained demo model ---------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    """240 small demo images, the demo model's settings, and its torch fp32 run."""
    root = tmp_path_factory.mktemp("demo")
    images = root / "images"
    written = synth.write_dataset(images, PER_CLASS, seed=7, min_side=160, max_side=200)
    assert len(written) == 6 * PER_CLASS
    arch, ckpt, labels = bundled_model()
    settings = {"model": arch, "weights": str(ckpt), "labels": str(labels), "batch_size": 32,
                "workers": 0, "top_k": 2}  # fmt: skip
    ref = root / "torch"
    _run(RunConfig(inputs=(str(images),), output=str(ref), precision="fp32", **settings))
    return images, settings, ref


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_int8_agrees_with_fp32(
    runtime: str, demo: tuple[Path, dict[str, Any], Path], tmp_path: Path
) -> None:
    if runtime == "openvino":
        pytest.importorskip("nncf")
    images, settings, ref_out = demo
    out = tmp_path / "int8"
    config = RunConfig(inputs=(str(images),), output=str(out), runtime=runtime,
                       precision="int8", calibration_images=CALIBRATION,
                       agreement_images=HELD_APART, **settings)  # fmt: skip
    summary = _run(config)
    assert summary.precision == "int8"
    assert summary.ok == 6 * PER_CLASS
    record = manifest(out)["runtime"]
    assert (record["runtime"], record["precision"]) == (runtime, "int8")
    assert record["calibration"]["images"] == CALIBRATION
    assert record["agreement"]["images"] == HELD_APART
    assert record["agreement"]["measure"] == "top-1 agreement"
    assert record["agreement"]["value"] >= 0.99
    assert record["agreement"]["min_agreement"] == 0.99
    ids = sorted(read_rows(ref_out))
    # calibrated on the first images in input order, measured on the next ones
    assert record["calibration"]["first_id"] == ids[0]
    assert record["calibration"]["last_id"] == ids[CALIBRATION - 1]
    assert record["agreement"]["first_id"] == ids[CALIBRATION]
    assert record["int8_key"] != record["export_key"]

    ref, got = read_rows(ref_out), read_rows(out)
    assert ref.keys() == got.keys() and len(ref) >= 200
    same = sum(got[i]["label"] == r["label"] for i, r in ref.items())
    assert same / len(ref) >= 0.99, f"int8 top-1 agreement with torch fp32: {same}/{len(ref)}"
    # the demo model is right on these images (the labels are the class folders)
    right = sum(i.split("/", 1)[0] == r["label"] for i, r in got.items())
    assert right / len(got) >= 0.95


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fp32_runtimes_keep_every_answer_of_the_demo_model(
    runtime: str, demo: tuple[Path, dict[str, Any], Path], tmp_path: Path
) -> None:
    """At fp32 a runtime is the torch model: 100% top-1 agreement on a trained model."""
    images, settings, ref_out = demo
    out = tmp_path / runtime
    _run(RunConfig(inputs=(str(images),), output=str(out), runtime=runtime, precision="fp32",
                   **settings))  # fmt: skip
    ref, got = read_rows(ref_out), read_rows(out)
    assert ref.keys() == got.keys() and len(ref) == 6 * PER_CLASS
    assert [i for i, r in ref.items() if got[i]["label"] != r["label"]] == []
    worst = max(abs(got[i]["score"] - r["score"]) for i, r in ref.items())
    assert worst < 1e-4, worst


# --- refusal below --min-agreement ----------------------------------------------------------


def test_int8_refused_below_min_agreement(
    photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    """Mean cosine is never exactly 1.0 after quantization: --min-agreement 1.0 refuses
    the run, exit 2, one line, before the output exists. With the default 300 + 200 images
    asked of a 24-image input, half of it (12) is held apart."""
    out = tmp_path / "out"
    args = tiny_run_args(photo_dir, out, tiny_checkpoint, "--task", "embed",
                         "--runtime", "onnxruntime", "--precision", "int8",
                         "--min-agreement", "1.0")  # fmt: skip
    k = args.index("--top-k")
    del args[k : k + 2]  # classification only
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "--min-agreement" in lines[0] and "mean cosine" in lines[0]
    assert "on 12 held-apart images" in lines[0]
    assert not out.exists()


# --- the Ray engine (last: Ray starts only for it) ------------------------------------------


def test_ray_engine_runs_the_export(
    cache_dir: Path, ray_local: str, photo_dir: Path, tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path, tiny_runs: dict[str, tuple[batchvision.Summary, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The actors load the driver's export: its files appear in the actors' cache folder
    (the module's, which Ray's workers inherited when Ray started), not only in the
    driver's (moved elsewhere for this run)."""
    key = manifest(tiny_runs["onnxruntime"][1])["runtime"]["export_key"]
    shutil.rmtree(cache_dir / "exports" / key)
    driver_cache = tmp_path / "driver_cache"
    monkeypatch.setenv("BATCHVISION_CACHE_DIR", str(driver_cache))
    out = tmp_path / "ray"
    config = tiny_config(photo_dir, out, tiny_checkpoint, preprocess=TINY, runtime="onnxruntime",
                         precision="fp32", top_k=3, engine="ray", workers=None)  # fmt: skip
    summary = _run(config)
    assert summary.precision == "fp32" and summary.ok == 24
    local = read_rows(tiny_runs["onnxruntime"][1])
    got = read_rows(out)
    assert got.keys() == local.keys()
    for i, r in local.items():
        assert got[i]["topk_ids"][0] == r["topk_ids"][0], i
        np.testing.assert_allclose(got[i]["topk_scores"], r["topk_scores"], atol=1e-5)
    record = manifest(out)["runtime"]
    assert record["runtime"] == "onnxruntime" and record["precision"] == "fp32"
    assert record["export_key"] == key and record["export_cached"] is False
    assert (driver_cache / "exports" / key / "complete").exists()
    assert (cache_dir / "exports" / key / "model.onnx").exists()  # the actors materialized it
