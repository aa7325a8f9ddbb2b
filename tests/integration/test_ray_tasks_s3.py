"""The Ray engine beyond classification on local files: segmentation, embeddings and S3.

Each runs the Ray engine and the local engine on the same inputs and compares the rows, so
"the same rows in both engines" holds for every task and for object storage.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
from PIL import Image

import batchvision
from batchvision.config import RunConfig
from batchvision.errors import StorageAuthError
from tests.conftest import S3Server
from tests.integration.test_ray_engine import assert_same_rows
from tests.s3_proxy import FaultProxy
from tests.task_models import save_tiny_segformer

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.timeout(240)

CORRUPT = b"\xff\xd8\xff\xe0 not really a jpeg" + bytes(200)


@pytest.fixture(scope="module")
def ray_s3(s3_server: S3Server, ray_local: str) -> Iterator[S3Server]:
    """moto first, then Ray: Ray's workers inherit the fake AWS credentials at start."""
    yield s3_server


@pytest.fixture(scope="module")
def inputs(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raytasks") / "imgs"
    shutil.copytree(photo_dir, root)
    (root / "a" / "corrupt.jpg").write_bytes(CORRUPT)
    return root


def _rows(out: str, filesystem: pafs.FileSystem | None = None) -> dict[str, dict[str, Any]]:
    path = out.removeprefix("s3://") if filesystem is not None else out
    rows = pads.dataset(path, format="parquet", filesystem=filesystem).to_table().to_pylist()
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "an id was written more than once"
    return by_id


def _both(config: dict[str, Any], tmp_path: Path) -> tuple[dict, dict]:
    summaries = {}
    for engine in ("local", "ray"):
        out = str(tmp_path / engine)
        summaries[engine] = batchvision.run(RunConfig(output=out, engine=engine, **config))
    assert summaries["ray"].ok == summaries["local"].ok > 0
    assert summaries["ray"].error == summaries["local"].error == 1
    return _rows(str(tmp_path / "local")), _rows(str(tmp_path / "ray"))


def _mask(row: dict[str, Any]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(row["mask"])))


def test_segment_rows_match_local(
    ray_s3: S3Server, inputs: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    model = tmp_path_factory.mktemp("segformer")
    save_tiny_segformer(model, size=64)
    local, remote = _both(
        {
            "inputs": (str(inputs),),
            "model": f"hf:{model}",
            "precision": "fp32",
            "batch_size": 4,
        },
        tmp_path,
    )
    assert local.keys() == remote.keys() and len(local) == 25
    agree = []
    for i, a in local.items():
        b = remote[i]
        for col in ("status", "error", "width", "height", "mask_width", "mask_height"):
            assert a[col] == b[col], (i, col)
        if a["status"] != "ok":
            assert b["mask"] is None and b["classes"] is None
            continue
        ma, mb = _mask(a), _mask(b)
        assert ma.shape == (a["height"], a["width"])
        agree.append(float(np.mean(ma == mb)))
        assert [c["id"] for c in a["classes"]] == [c["id"] for c in b["classes"]]
    # The same fp32 model on the same pixels; threads may flip a tie at a class border.
    assert min(agree) > 0.999, min(agree)


def test_embed_rows_match_local(
    ray_s3: S3Server, inputs: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt, labels = tiny_checkpoint
    local, remote = _both(
        {
            "inputs": (str(inputs),),
            "model": "mobilenet_v3_small",
            "weights": str(ckpt),
            "labels": str(labels),
            "task": "embed",
            "normalize": True,
            "precision": "fp32",
            "batch_size": 8,
        },
        tmp_path,
    )
    assert local.keys() == remote.keys()
    for i, a in local.items():
        b = remote[i]
        assert a["status"] == b["status"]
        if a["status"] != "ok":
            assert a["embedding"] is None and b["embedding"] is None
            continue
        ea, eb = np.asarray(a["embedding"]), np.asarray(b["embedding"])
        assert ea.shape == eb.shape == (1024,)
        assert abs(np.linalg.norm(eb) - 1) < 1e-4
        np.testing.assert_allclose(ea, eb, atol=1e-4)


def test_s3_in_and_out_match_local(
    ray_s3: S3Server, inputs: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    bucket = ray_s3.new_bucket("ray")
    ray_s3.upload_dir(inputs, f"s3://{bucket}/in")
    ckpt, labels = tiny_checkpoint
    common = {
        "model": "mobilenet_v3_small",
        "weights": str(ckpt),
        "labels": str(labels),
        "precision": "fp32",
        "batch_size": 8,
        "top_k": 3,
        "s3_endpoint": ray_s3.endpoint,
    }
    local = batchvision.run(
        RunConfig(inputs=(str(inputs),), output=str(tmp_path / "local"), **common)
    )
    out = f"s3://{bucket}/preds"
    remote = batchvision.run(
        RunConfig(inputs=(f"s3://{bucket}/in",), output=out, engine="ray", **common)
    )
    assert (remote.ok, remote.error) == (local.ok, local.error) == (24, 1)
    fs = pafs.S3FileSystem(endpoint_override=ray_s3.endpoint, region="us-east-1")
    got = _rows(out, fs)
    want = _rows(str(tmp_path / "local"))
    # Same ids (relative to the folder or prefix); paths differ only by where they live.
    for row in want.values():
        row["path"] = f"s3://{bucket}/in/{row['id']}"
    for rows in (got, want):
        for row in rows.values():  # the corrupt file's message names its path
            row["error"] = row["error"] and row["error"].split(":", 1)[0]
    assert_same_rows(want, got)
    assert "_manifest.json" in ray_s3.keys(out)


def test_s3_auth_failure_in_a_decode_task_stops_the_run(
    ray_s3: S3Server, inputs: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    bucket = ray_s3.new_bucket("rayauth")
    ray_s3.upload_dir(inputs / "a", f"s3://{bucket}/in")
    denied = f"/{bucket}/in/img_05.jpg"
    ckpt, labels = tiny_checkpoint
    with FaultProxy(ray_s3.endpoint, lambda method, path: 403 if path == denied else None) as p:
        config = RunConfig(
            inputs=(f"s3://{bucket}/in",),
            output=str(tmp_path / "o"),
            model="mobilenet_v3_small",
            weights=str(ckpt),
            labels=str(labels),
            batch_size=4,
            engine="ray",
            s3_endpoint=p.url,
        )
        with pytest.raises(StorageAuthError, match=f"S3 refused access to s3:/{denied}"):
            batchvision.run(config)


def test_s3_manifest_units_resume_by_unit_in_csv(
    ray_s3: S3Server, inputs: Path, tiny_checkpoint: tuple[Path, Path]
) -> None:
    """A CSV manifest on S3 is cut into units read by ranged GETs; a lost unit's part (as
    if its worker died before the PUT) is all that --resume redoes, in the output's format."""
    bucket = ray_s3.new_bucket("rayunits")
    ray_s3.upload_dir(inputs, f"s3://{bucket}/in")
    rels = sorted(p.relative_to(inputs).as_posix() for p in inputs.rglob("*.jpg"))
    ray_s3.put(f"s3://{bucket}/in/list.csv", ("path\n" + "\n".join(rels) + "\n").encode())
    ckpt, labels = tiny_checkpoint
    out = f"s3://{bucket}/preds"

    def run(**kw: Any) -> batchvision.Summary:
        return batchvision.run(
            RunConfig(
                inputs=(f"s3://{bucket}/in/list.csv",),
                output=out,
                engine="ray",
                model="mobilenet_v3_small",
                weights=str(ckpt),
                labels=str(labels),
                batch_size=4,
                part_rows=10,
                format="csv",
                s3_endpoint=ray_s3.endpoint,
                **kw,
            )
        )

    first = run()
    assert (first.ok, first.error) == (24, 1)
    parts = sorted(k for k in ray_s3.keys(out) if k.startswith("part-"))
    assert [p.split("-")[2] for p in parts] == ["00000000", "00000001", "00000002"]
    assert all(p.endswith(".csv") for p in parts)
    client = ray_s3.client()
    client.delete_object(Bucket=bucket, Key=f"preds/{parts[1]}")  # type: ignore[attr-defined]
    again = run(resume=True)
    assert (again.processed, again.already_done) == (10, 15)
    assert sorted(k for k in ray_s3.keys(out) if k.startswith("part-")) == parts
    fs = pafs.S3FileSystem(endpoint_override=ray_s3.endpoint, region="us-east-1")
    table = pads.dataset(f"{bucket}/preds", format="csv", filesystem=fs).to_table()
    ids = table.column("id").to_pylist()
    assert sorted(ids) == rels and len(set(ids)) == len(rels)


def test_zero_shot_on_ray_to_s3_matches_local_and_resumes(
    ray_s3: S3Server, inputs: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Zero-shot (CLIP): the Ray engine writing to S3 gives the local engine's rows; its
    text embeddings travel in the spec. A second --resume run redoes nothing; a resume
    with another prompt is refused (its scores would differ)."""
    from tests.task_models import save_tiny_clip

    model = tmp_path_factory.mktemp("clip")
    save_tiny_clip(model)
    bucket = ray_s3.new_bucket("zs")
    common = {
        "inputs": (str(inputs),),
        "model": f"hf:{model}",
        "task": "zero-shot",
        "classes": ("cat", "dog", "car"),
        "precision": "fp32",
        "batch_size": 8,
        "s3_endpoint": ray_s3.endpoint,
    }
    local = batchvision.run(RunConfig(output=str(tmp_path / "local"), **common))
    out = f"s3://{bucket}/zs"
    remote = batchvision.run(RunConfig(output=out, engine="ray", **common))
    assert (remote.ok, remote.error) == (local.ok, local.error) == (24, 1)
    fs = pafs.S3FileSystem(endpoint_override=ray_s3.endpoint, region="us-east-1")
    got, want = _rows(out, fs), _rows(str(tmp_path / "local"))
    assert got.keys() == want.keys()
    for i, a in want.items():
        b = got[i]
        assert (a["status"], a["label"], a["topk_labels"]) == (
            b["status"],
            b["label"],
            b["topk_labels"],
        )
        if a["status"] == "ok":
            assert len(b["topk_scores"]) == 3  # --top-k 5 > 3 classes: all three
            np.testing.assert_allclose(a["topk_scores"], b["topk_scores"], atol=1e-5)
    # The public callables in a user's own Ray Data pipeline: the same labels.
    import batchvision.ray as bvr

    spec, weights = bvr.resolve(f"hf:{model}", task="zero-shot", classes=("cat", "dog", "car"))
    ds = ray.data.from_items([{"path": str(inputs / i)} for i in sorted(want)])
    ds = ds.map_batches(bvr.Decoder(spec.preprocess), batch_size=8)
    ds = ds.map_batches(
        bvr.Predictor,
        fn_constructor_kwargs={
            "spec": spec, "state_dict": weights, "options": bvr.PredictOptions(precision="fp32"),
        },
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=8,
    )  # fmt: skip
    mine = {r["path"]: r for r in ds.take_all()}
    for i, a in want.items():
        assert mine[str(inputs / i)]["label"] == a["label"], i
    again = batchvision.run(RunConfig(output=out, engine="ray", resume=True, **common))
    assert again.ok + again.error == 0 and again.already_done == 25
    assert _rows(out, fs).keys() == want.keys()
    with pytest.raises(batchvision.errors.OutputDirError, match="prompt differs"):
        batchvision.run(
            RunConfig(output=out, engine="ray", resume=True, **{**common, "prompt": "{}"})
        )


def test_detect_rows_match_local(
    ray_s3: S3Server, inputs: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from tests.integration.test_detect import assert_same_detections
    from tests.task_models import save_tiny_detector

    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"
    labels = tuple(f"obj_{i}" for i in range(5))
    weights, names = save_tiny_detector(tmp_path_factory.mktemp("detector"), arch, labels)
    local, remote = _both(
        {
            "inputs": (str(inputs),),
            "model": arch,
            "weights": str(weights),
            "labels": str(names),
            "precision": "fp32",
            "batch_size": 4,
            "score_threshold": 0.3,
        },
        tmp_path,
    )
    assert sum(r["num_detections"] or 0 for r in local.values()) > 0
    assert_same_detections(local, remote)
