"""``--format lance``: rows read back with Lance, in both engines, after a kill -9 and
``--resume``, vector search on embeddings, and the install hint without pylance."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pytest

import batchvision
from batchvision.cli import main
from batchvision.errors import ConfigError, OutputDirError
from batchvision.io import lance_parts
from batchvision.io.storage import StorageOptions
from batchvision.report import ReportConfig, build_report
from tests.conftest import S3Server, run_cli, tiny_config, tiny_run_args

lance = pytest.importorskip("lance")

pytestmark = [
    pytest.mark.timeout(240),
    # Lance warns at every fork once imported (here by this module, before Ray starts);
    # the run itself never imports it before its decode workers fork.
    pytest.mark.filterwarnings("ignore:lance is not fork-safe"),
]

ROW_COLUMNS = ("id", "path", "status", "error", "width", "height", "label", "topk_ids")


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # Child processes inherit this: a few shared cores, oversubscribed threads are 10x slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def small_dir(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven JPEGs and a file that is not an image."""
    root = tmp_path_factory.mktemp("lance_src")
    for path in sorted((photo_dir / "a").glob("*.jpg"))[:7]:
        shutil.copy(path, root / path.name)
    (root / "bad.jpg").write_text("not an image\n")
    return root


def _run(src: Path, out: Path, tiny: tuple[Path, Path], **kw: Any) -> batchvision.Summary:
    if kw.get("engine") == "ray":
        kw["workers"] = None  # the local engine's setting
    cfg = tiny_config(src, out, tiny, batch_size=2, part_rows=2, precision="fp32", top_k=3, **kw)
    return batchvision.run(cfg)


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("part-*.lance.json"))]


def read_lance(out: Path) -> dict[str, dict[str, Any]]:
    """The committed version's rows by id, after checking that it references exactly the
    fragments of the committed part records, under distinct fragment ids."""
    ds = lance.dataset(str(out / lance_parts.DATASET_NAME))
    fragments = ds.get_fragments()
    ids = [f.fragment_id for f in fragments]
    assert len(ids) == len(set(ids)), ids
    recorded = sorted(f["files"][0]["path"] for r in _records(out) for f in r["fragments"])
    assert sorted(f.metadata.files[0].path for f in fragments) == recorded
    rows = ds.to_table().to_pylist()
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "an id was written more than once"
    return by_id


def _same_rows(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> None:
    assert a.keys() == b.keys()
    for i, ra in a.items():
        for col in ROW_COLUMNS:
            assert ra[col] == b[i][col], (i, col)
        if ra["status"] == "ok":
            np.testing.assert_allclose(ra["topk_scores"], b[i]["topk_scores"], rtol=1e-4, atol=2e-5)


@pytest.fixture(scope="module")
def local_lance(
    small_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    summary = _run(small_dir, out, tiny_checkpoint, format="lance")
    assert (summary.ok, summary.error) == (7, 1)
    return out


def test_local_engine_writes_a_lance_dataset_with_the_parquet_rows(
    local_lance: Path, small_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    rows = read_lance(local_lance)
    assert set(rows) == {p.name for p in small_dir.iterdir()}
    bad = rows["bad.jpg"]
    assert bad["status"] == "error" and bad["error"].startswith("not_image:")
    assert bad["label"] is None and bad["topk_scores"] is None
    assert len(_records(local_lance)) == 4  # 8 rows, 2 per part: 4 fragments, one version
    assert lance.dataset(str(local_lance / lance_parts.DATASET_NAME)).version == 1

    _run(small_dir, tmp_path / "pq", tiny_checkpoint, format="parquet")
    parquet = pads.dataset(str(tmp_path / "pq"), format="parquet").to_table()
    lance_table = lance.dataset(str(local_lance / lance_parts.DATASET_NAME)).to_table()
    assert lance_table.schema.equals(parquet.schema)
    assert lance_table.sort_by("id").equals(parquet.sort_by("id"))  # the very same values

    manifest = json.loads((local_lance / "_manifest.json").read_text())
    assert manifest["format"] == "lance" and manifest["lance"]["version"] == 1
    assert manifest["counts"] == {"ok": 7, "error": 1, "rows_written": 8, "skipped": 0}
    report = build_report(ReportConfig(str(local_lance), html=str(tmp_path / "r.html")))
    assert (report.rows, report.ok, report.error) == (8, 7, 1)
    assert report.error_codes == {"not_image": 1}


def test_overwrite_deletes_the_dataset_and_still_refuses_foreign_files(
    local_lance: Path, small_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(local_lance, out)
    (out / "mine.txt").write_text("a user's file")
    with pytest.raises(OutputDirError, match=r"did not write \(mine.txt\)"):
        _run(small_dir, out, tiny_checkpoint, format="parquet", overwrite=True)
    assert read_lance(out).keys() == read_lance(local_lance).keys()  # nothing deleted
    (out / "mine.txt").unlink()
    _run(small_dir, out, tiny_checkpoint, format="parquet", overwrite=True)
    assert not (out / lance_parts.DATASET_NAME).exists()
    assert not list(out.glob("*.lance.json"))


def test_ray_engine_gives_the_same_rows_and_a_retried_unit_once(
    ray_local: str,
    local_lance: Path,
    small_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A worker ends after committing a unit's part record, before replying: Ray runs the
    # unit again, which writes new fragment files and a second record of the same unit.
    marker = tmp_path / "died-after-commit"
    monkeypatch.setenv("BATCHVISION_FAULT_INJECT", f"unit_exit_after_commit_once:{marker}")
    out = tmp_path / "out"
    summary = _run(small_dir, out, tiny_checkpoint, format="lance", engine="ray")
    assert marker.exists()
    assert (summary.ok, summary.error) == (7, 1)
    rows = read_lance(out)  # one record per unit, and only its fragments referenced
    _same_rows(rows, read_lance(local_lance))
    assert [r["rows"] for r in _records(out)] == [2, 2, 2, 2]
    files = list((out / lance_parts.DATASET_NAME / "data").glob("*.lance"))
    assert len(files) == 5  # the retried unit's first fragment is in no version


def test_kill_9_then_resume_references_only_committed_fragments(
    photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out, marker = tmp_path / "out", tmp_path / "held"
    args = tiny_run_args(photo_dir, out, tiny_checkpoint, "--format", "lance", workers=1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["BATCHVISION_FAULT_INJECT"] = f"part_rename_hang:{marker}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchvision", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() or not marker.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the writer did not reach the hook:\n" + "".join(proc.communicate()))
        time.sleep(0.02)
    # Held between the third part record's fsync and its rename: its fragments are written.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    dataset = out / lance_parts.DATASET_NAME
    assert len(_records(out)) == 2
    assert len(list((dataset / "data").glob("*.lance"))) == 3
    assert not (dataset / "_versions").exists()  # killed before any commit: no version

    resumed = run_cli(*args, "--resume", "-q", timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done 8" in resumed.stdout
    assert "fork-safe" not in resumed.stderr  # it read its parts with Lance, then forked
    rows = read_lance(out)  # the killed part's fragment is orphaned, not referenced
    assert set(rows) == {p.relative_to(photo_dir).as_posix() for p in photo_dir.rglob("*.jpg")}
    assert len(list((dataset / "data").glob("*.lance"))) == len(_records(out)) + 1
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["rows_written"] == 24 and manifest["status"] == "complete"
    assert [r["status"] for r in manifest["runs"]] == ["complete"]  # the killed run: none

    again = run_cli(*args, "--resume", "-q", timeout=180)  # nothing to do: same version
    assert again.returncode == 0, again.stderr
    assert lance.dataset(str(dataset)).version == manifest["lance"]["version"]


def test_s3_output_resumes_and_overwrites_with_the_same_guarantees(
    s3_server: S3Server, small_dir: Path, tiny_checkpoint: tuple[Path, Path]
) -> None:
    pytest.importorskip("boto3")
    out = f"s3://{s3_server.new_bucket()}/res"
    settings: dict[str, Any] = {"format": "lance", "s3_endpoint": s3_server.endpoint}
    first = _run(small_dir, out, tiny_checkpoint, **settings)
    assert (first.ok, first.error) == (7, 1)
    records = [k for k in s3_server.keys(out) if k.endswith(".lance.json")]
    assert len(records) == 4
    # A part lost (as if its run was killed before the record's PUT): resume redoes it.
    bucket = out.removeprefix("s3://").split("/")[0]
    s3_server.client().delete_object(Bucket=bucket, Key=f"res/{records[1]}")  # type: ignore[attr-defined]
    again = _run(small_dir, out, tiny_checkpoint, resume=True, **settings)
    assert (again.ok + again.error, again.already_done) == (2, 6)
    options = lance_parts.lance_storage_options(out, StorageOptions(s3_server.endpoint))
    ds = lance.dataset(lance_parts.dataset_uri(out), storage_options=options)
    ids = ds.to_table(columns=["id"])["id"].to_pylist()
    assert sorted(ids) == sorted(p.name for p in small_dir.iterdir())  # each once
    assert len(ds.get_fragments()) == 4 and ds.version == 2
    settings["format"] = "parquet"
    _run(small_dir, out, tiny_checkpoint, overwrite=True, **settings)
    assert not [k for k in s3_server.keys(out) if "lance" in k]  # the dataset's keys gone


def test_embeddings_nearest_neighbour_is_the_image_itself(
    photo_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    _run(photo_dir / "b", out, tiny_checkpoint, format="lance", task="embed", normalize=True)
    ds = lance.dataset(str(out / lance_parts.DATASET_NAME))
    table = ds.to_table(columns=["id", "embedding"])
    assert table.num_rows == 12
    for k in (0, 5, 11):
        image, vec = table["id"][k].as_py(), np.asarray(table["embedding"][k].as_py())
        hits = ds.to_table(nearest={"column": "embedding", "q": vec, "k": 3})
        assert hits.num_rows == 3
        assert hits["id"][0].as_py() == image
        distances = hits["_distance"].to_pylist()
        assert distances[0] == pytest.approx(0.0, abs=1e-5) and distances[1] > 1e-5


def test_missing_pylance_is_one_line_with_the_install_command(
    small_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "lance", None)  # import lance -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'batchvision\[lance\]'"):
        lance_parts.require()
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["run", str(small_dir), "-m", "resnet18", "-o", str(out), "--format", "lance"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2
    assert line.startswith("batchvision: error: --format lance needs pylance, which is not")
    assert line.endswith("pip install 'batchvision[lance]'")
    assert not out.exists()  # refused before the output is touched
