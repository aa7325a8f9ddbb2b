"""Shard inputs end to end (local engine): WebDataset and Parquet image bytes give the rows
loose files give, a damaged shard is redone by --resume, and S3 shards take few requests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import batchvision
from tests.conftest import S3Server, tiny_config
from tests.s3_proxy import FaultProxy
from tests.unit.test_shards import write_tar

PER_SHARD = 8


def pack(photo_dir: Path, root: Path) -> dict[str, Path]:
    """photo_dir's 24 JPEGs as loose files, 3 WebDataset shards and 3 Parquet files, with a
    caption each (the key names the JPEG, so ids map between layouts)."""
    photos = sorted(photo_dir.rglob("*.jpg"))
    (root / "wds").mkdir(parents=True)
    (root / "pq").mkdir()
    for s in range(len(photos) // PER_SHARD):
        chunk = photos[s * PER_SHARD : (s + 1) * PER_SHARD]
        samples = [
            {
                "__key__": p.stem.encode(),
                "jpg": p.read_bytes(),
                "txt": f"a photo {p.stem}".encode(),
                "json": json.dumps({"n": i}).encode(),
            }
            for i, p in enumerate(chunk)
        ]
        write_tar(root / "wds" / f"{s:05d}.tar", samples)
        table = pa.table(
            {
                "key": [p.stem for p in chunk],
                "image": [{"bytes": p.read_bytes(), "path": p.name} for p in chunk],
                "caption": [f"a photo {p.stem}" for p in chunk],
                "n": pa.array(range(len(chunk)), pa.int64()),
            }
        )
        pq.write_table(table, root / "pq" / f"{s:05d}.parquet", row_group_size=3)
    return {"wds": root / "wds", "pq": root / "pq"}


def rows(out: Path) -> dict[str, dict[str, Any]]:
    table = pads.dataset(str(out), format="parquet").to_table()
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert len(by_id) == table.num_rows, "an id was written more than once"
    return by_id


@pytest.fixture(scope="module")
def packed(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return pack(photo_dir, tmp_path_factory.mktemp("packed"))


def test_shards_give_the_rows_of_loose_files(
    packed: dict[str, Path], photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    loose = batchvision.run(tiny_config(photo_dir, tmp_path / "loose", tiny_checkpoint))
    want = {Path(i).stem: r for i, r in rows(tmp_path / "loose").items()}
    wds = batchvision.run(
        tiny_config(packed["wds"], tmp_path / "wds", tiny_checkpoint, keep_columns=("txt",))
    )
    pq_run = batchvision.run(
        tiny_config(
            packed["pq"],
            tmp_path / "pq",
            tiny_checkpoint,
            id_column="key",
            keep_columns=("caption", "n"),
        )
    )
    assert loose.ok == wds.ok == pq_run.ok == 24
    got_wds = rows(tmp_path / "wds")
    got_pq = rows(tmp_path / "pq")
    photos = sorted(photo_dir.rglob("*.jpg"))  # as pack() packed them
    expected = {f"{k // PER_SHARD:05d}.tar/{p.stem}" for k, p in enumerate(photos)}
    assert set(got_wds) == expected
    for ident, row in got_wds.items():
        stem = ident.split("/", 1)[1]
        assert row["txt"] == f"a photo {stem}"
        assert (row["label"], row["width"], row["height"]) == (
            want[stem]["label"], want[stem]["width"], want[stem]["height"]
        )  # fmt: skip
        assert row["topk_scores"] == pytest.approx(want[stem]["topk_scores"], abs=1e-5)
    assert sorted(got_pq) == sorted(want)
    for stem, row in got_pq.items():
        assert row["label"] == want[stem]["label"] and row["caption"] == f"a photo {stem}"
    schema = pads.dataset(str(tmp_path / "pq"), format="parquet").schema
    assert schema.field("n").type == pa.int64()  # kept as it was
    parts = sorted(p.name for p in (tmp_path / "wds").glob("part-*"))
    assert [p.split("-")[2] for p in parts] == ["00000000", "00000001", "00000002"]


def test_a_damaged_shard_is_read_again_by_resume(
    packed: dict[str, Path], tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    shards_dir = tmp_path / "wds"
    shutil.copytree(packed["wds"], shards_dir)
    whole = (shards_dir / "00001.tar").read_bytes()
    (shards_dir / "00001.tar").write_bytes(whole[: len(whole) // 2])  # a copy cut short
    out = tmp_path / "out"
    first = batchvision.run(tiny_config(shards_dir, out, tiny_checkpoint, max_error_rate=1.0))
    got = rows(out)
    damaged = got["00001.tar"]
    assert damaged["status"] == "error" and damaged["error"].startswith("shard_truncated: ")
    read = [i for i in got if i.startswith("00001.tar/")]
    assert 0 < len(read) < PER_SHARD and first.error == 1
    assert len([p for p in out.glob("part-*") if "-e1d-" in p.name]) == 1

    (shards_dir / "00001.tar").write_bytes(whole)  # the shard copied again, whole
    again = batchvision.run(tiny_config(shards_dir, out, tiny_checkpoint, resume=True))
    assert (again.ok, again.error) == (PER_SHARD, 0)
    got = rows(out)
    assert "00001.tar" not in got and len(got) == 24
    assert not [p for p in out.glob("part-*") if "-e1d-" in p.name]  # replaced
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["ok"] == 24 and manifest["counts"]["error"] == 0
    # Resumed again, nothing is left to do.
    done = batchvision.run(tiny_config(shards_dir, out, tiny_checkpoint, resume=True))
    assert done.processed == 0
    # A shard added since, in this same process, is listed afresh and read.
    shutil.copy(shards_dir / "00000.tar", shards_dir / "00003.tar")
    more = batchvision.run(tiny_config(shards_dir, out, tiny_checkpoint, resume=True))
    assert (more.ok, more.error) == (PER_SHARD, 0)
    assert len(rows(out)) == 32


def test_s3_shards_take_one_request_each(
    s3_server: S3Server, packed: dict[str, Path], tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    """A WebDataset shard is one streamed GET, however many samples it holds; loose files
    take a request (or more) each."""
    bucket = s3_server.new_bucket("shards")
    s3_server.upload_dir(packed["wds"], f"s3://{bucket}/wds")
    with FaultProxy(s3_server.endpoint) as proxy:
        summary = batchvision.run(
            tiny_config(
                f"s3://{bucket}/wds",  # type: ignore[arg-type]
                tmp_path / "out",
                tiny_checkpoint,
                s3_endpoint=proxy.url,
            )
        )
    assert summary.ok == 24
    gets = {path: n for (method, path), n in proxy.requests.items() if method == "GET"}
    for s in range(3):
        assert gets.get(f"/{bucket}/wds/{s:05d}.tar") == 1, gets
