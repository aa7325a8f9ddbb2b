"""``--task detect`` end to end: both engines give the same rows, odd inputs give rows
(never a crash), --resume, S3 in and out, the report's boxes, and the plain-Arrow schema
read without batchvision."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
from PIL import Image

import batchvision
from batchvision.config import RunConfig
from batchvision.demo import synth
from batchvision.errors import OutputDirError
from batchvision.report import ReportConfig, build_report
from tests.conftest import S3Server
from tests.task_models import DET_CLASSES, save_tiny_detector

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
LABELS = ("__background__", *(f"obj_{i}" for i in range(1, DET_CLASSES)))

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny detector as a checkpoint and labels file: the run options that use it."""
    weights, labels = save_tiny_detector(tmp_path_factory.mktemp("detector"), ARCH, LABELS)
    return {
        "model": ARCH,
        "weights": str(weights),
        "labels": str(labels),
        "precision": "fp32",
        "score_threshold": 0.3,
        "max_detections": 8,
        "batch_size": 3,
    }


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Photos and odd images: 1x1, 2x1, grayscale, RGBA, 16-bit, a 20000x40 strip, a
    48-megapixel image, an EXIF-rotated JPEG, and a file that is not an image."""
    root = tmp_path_factory.mktemp("detect_odd")
    rng = np.random.default_rng(11)
    for i, size in enumerate([(320, 240), (200, 300), (640, 400)]):
        synth.photo_like(rng, size).save(root / f"photo_{i}.jpg", quality=90)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "one_pixel.png")
    Image.new("RGB", (2, 1), (10, 200, 10)).save(root / "two_pixels.png")
    synth.photo_like(rng, (160, 120)).convert("L").save(root / "gray.jpg")
    synth.photo_like(rng, (100, 140)).convert("RGBA").save(root / "rgba.png")
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)).save(
        root / "sixteen_bit.png"
    )
    Image.new("RGB", (20000, 40), (90, 90, 200)).save(root / "strip.png")
    Image.new("RGB", (8000, 6000), (30, 120, 60)).save(root / "huge.png")
    rotated = synth.photo_like(rng, (300, 180))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90: displayed 180 wide, 300 high
    rotated.save(root / "rotated.jpg", exif=exif)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" + bytes(64))
    return root


def _rows(out: str, filesystem: pafs.FileSystem | None = None) -> dict[str, dict[str, Any]]:
    path = out.removeprefix("s3://") if filesystem is not None else out
    table = pads.dataset(path, format="parquet", filesystem=filesystem).to_table()
    return {r["id"]: r for r in table.to_pylist()}


def assert_same_detections(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> None:
    """The same rows: statuses, sizes, and detections (labels equal, boxes and scores
    within float rounding)."""
    assert a.keys() == b.keys()
    for i, ra in a.items():
        rb = b[i]
        for col in ("status", "width", "height", "num_detections"):
            assert ra[col] == rb[col], (i, col, ra[col], rb[col])
        assert (ra["error"] or "").split(":")[0] == (rb["error"] or "").split(":")[0]
        if ra["status"] != "ok":
            assert ra["detections"] is None and rb["detections"] is None
            continue
        assert [d["label"] for d in ra["detections"]] == [d["label"] for d in rb["detections"]]
        for da, db in zip(ra["detections"], rb["detections"], strict=True):
            for k in ("score", "x0", "y0", "x1", "y1"):
                assert da[k] == pytest.approx(db[k], rel=1e-3, abs=1e-2), (i, k)


@pytest.fixture(scope="module")
def local_run(
    odd_dir: Path, detector: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, str]:
    out = str(tmp_path_factory.mktemp("det_local") / "out")
    summary = batchvision.run(RunConfig(inputs=(str(odd_dir),), output=out, workers=1, **detector))
    return summary, out


def test_odd_inputs_give_rows(local_run: tuple[Any, str], odd_dir: Path) -> None:
    summary, out = local_run
    rows = _rows(out)
    assert set(rows) == {p.name for p in odd_dir.iterdir()}
    assert summary.ok + summary.error == len(rows)
    assert rows["broken.jpg"]["status"] == "error" and rows["broken.jpg"]["detections"] is None
    for name in ("one_pixel.png", "two_pixels.png", "gray.jpg", "rgba.png", "sixteen_bit.png",
                 "strip.png", "huge.png", "rotated.jpg"):  # fmt: skip
        assert rows[name]["status"] == "ok", (name, rows[name]["error"])
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == (180, 300)
    assert (rows["huge.png"]["width"], rows["huge.png"]["height"]) == (8000, 6000)
    found = 0
    for row in rows.values():
        if row["status"] != "ok":
            continue
        dets = row["detections"]
        assert row["num_detections"] == len(dets) <= 8
        assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
        for d in dets:
            assert d["score"] >= 0.3 and d["label"] == LABELS[d["label_id"]]
            # Displayed pixels: inside the image (torchvision clips boxes to it).
            assert -1e-3 <= d["x0"] <= d["x1"] <= row["width"] + 1e-3
            assert -1e-3 <= d["y0"] <= d["y1"] <= row["height"] + 1e-3
        found += len(dets)
    assert found > 0


def test_plain_arrow_types(local_run: tuple[Any, str]) -> None:
    """A list of structs of plain types, which DuckDB, pandas and Polars read as is."""
    _, out = local_run
    schema = pads.dataset(out, format="parquet").schema
    det = schema.field("detections").type
    assert pa.types.is_list(det) and pa.types.is_struct(det.value_type)
    inner = {f.name: f.type for f in det.value_type}
    assert inner == {"label_id": pa.int32(), "label": pa.string(), "score": pa.float32(),
                     **{k: pa.float32() for k in ("x0", "y0", "x1", "y1")}}  # fmt: skip
    assert schema.field("num_detections").type == pa.int32()
    frame = pads.dataset(out, format="parquet").to_table().to_pandas()
    ok = frame[frame.status == "ok"]
    assert all(isinstance(d[0]["x0"], float) for d in ok.detections if len(d))


def test_ray_engine_gives_the_same_rows(
    ray_local: str, local_run: tuple[Any, str], odd_dir: Path, detector: dict[str, Any],
    tmp_path: Path,
) -> None:  # fmt: skip
    out = str(tmp_path / "ray")
    summary = batchvision.run(
        RunConfig(inputs=(str(odd_dir),), output=out, engine="ray", **detector)
    )
    assert (summary.ok, summary.error) == (local_run[0].ok, local_run[0].error)
    assert_same_detections(_rows(local_run[1]), _rows(out))


def test_resume_detect_and_its_settings(
    odd_dir: Path, detector: dict[str, Any], tmp_path: Path
) -> None:
    half = tmp_path / "in"
    half.mkdir()
    names = sorted(p.name for p in odd_dir.iterdir() if p.name.startswith(("photo", "gray")))
    for name in names[:2]:
        shutil.copy(odd_dir / name, half / name)
    out = str(tmp_path / "out")
    first = batchvision.run(RunConfig(inputs=(str(half),), output=out, workers=0, **detector))
    assert first.ok == 2
    for name in names[2:]:
        shutil.copy(odd_dir / name, half / name)
    with pytest.raises(OutputDirError, match="score_threshold"):
        batchvision.run(RunConfig(inputs=(str(half),), output=out, workers=0, resume=True,
                                  **{**detector, "score_threshold": 0.5}))  # fmt: skip
    before = _rows(out)
    again = batchvision.run(
        RunConfig(inputs=(str(half),), output=out, workers=0, resume=True, **detector)
    )
    assert (again.ok, again.already_done) == (len(names) - 2, 2)
    rows = _rows(out)
    assert set(rows) == set(names) and all(r["status"] == "ok" for r in rows.values())
    # The first run's rows stay as written (batches differ, so are not compared to others).
    assert_same_detections(before, {k: rows[k] for k in before})


def test_s3_in_and_out(
    s3_server: S3Server, odd_dir: Path, detector: dict[str, Any], tmp_path: Path
) -> None:  # fmt: skip
    src = tmp_path / "small"
    src.mkdir()
    for p in odd_dir.iterdir():
        if p.name not in ("huge.png", "strip.png"):
            shutil.copy(p, src / p.name)
    bucket = s3_server.new_bucket("det")
    s3_server.upload_dir(src, f"s3://{bucket}/in")
    out = f"s3://{bucket}/preds"
    summary = batchvision.run(
        RunConfig(
            inputs=(f"s3://{bucket}/in",),
            output=out,
            workers=0,
            s3_endpoint=s3_server.endpoint,
            **detector,
        )
    )
    assert summary.ok == len(list(src.iterdir())) - 1 and summary.error == 1
    fs = pafs.S3FileSystem(endpoint_override=s3_server.endpoint, region="us-east-1")
    got = _rows(out, fs)
    # The same folder read locally: the same batches, so the same rows.
    here = str(tmp_path / "here")
    batchvision.run(RunConfig(inputs=(str(src),), output=here, workers=0, **detector))
    assert_same_detections(_rows(here), got)
    # Resume on S3: nothing left to do.
    again = batchvision.run(
        RunConfig(
            inputs=(f"s3://{bucket}/in",),
            output=out,
            workers=0,
            resume=True,
            s3_endpoint=s3_server.endpoint,
            **detector,
        )
    )
    assert again.ok == 0 and again.already_done == len(got)


def test_report_draws_boxes_and_labels(local_run: tuple[Any, str], tmp_path: Path) -> None:
    _, out = local_run
    html_path = tmp_path / "r.html"
    build_report(ReportConfig(out, html=str(html_path)))
    html = html_path.read_text()
    assert html.count('class="overlay boxes"') >= 1
    rows = _rows(out)
    labels = {d["label"] for r in rows.values() for d in (r["detections"] or [])}
    assert labels and all(f"</span>{label} <span" in html for label in labels)
    # The drawn thumbnail differs from the plain one where a box is.
    import base64
    import re

    uris = re.findall(r'class="overlay boxes" src="data:image/jpeg;base64,([^"]+)"', html)
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[0]))).convert("RGB"))
    assert drawn.std() > 0


def test_out_of_memory_halving_and_batch_size_auto(
    odd_dir: Path, detector: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detector's batch that runs out of memory is retried in halves down to one image
    (the same rows as batch 1), and ``--batch-size auto`` times the detector itself."""
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted(odd_dir.glob("photo_*.jpg")):
        shutil.copy(p, src / p.name)
    single = str(tmp_path / "single")
    batchvision.run(RunConfig(inputs=(str(src),), output=single, workers=0,
                              **{**detector, "batch_size": 1}))  # fmt: skip
    monkeypatch.setenv("BATCHVISION_INJECT_OOM_ABOVE", "1")
    halved = str(tmp_path / "halved")
    summary = batchvision.run(RunConfig(inputs=(str(src),), output=halved, workers=0, **detector))
    assert summary.ok == 3
    assert_same_detections(_rows(single), _rows(halved))
    monkeypatch.delenv("BATCHVISION_INJECT_OOM_ABOVE")
    auto = str(tmp_path / "auto")
    summary = batchvision.run(RunConfig(inputs=(str(src),), output=auto, workers=0,
                                        **{**detector, "batch_size": "auto"}))  # fmt: skip
    assert summary.ok == 3
