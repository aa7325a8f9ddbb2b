"""``io.lance_parts``: part records, and the one commit that makes them a dataset version."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from batchvision.errors import OutputDirError
from batchvision.io import lance_parts
from batchvision.io.storage import StorageOptions

lance = pytest.importorskip("lance")

pytestmark = pytest.mark.filterwarnings("ignore:lance is not fork-safe")

OPTS = StorageOptions()


def _table(ids: list[str]) -> pa.Table:
    return pa.table({"id": ids, "status": ["ok"] * len(ids)})


def test_only_committed_records_are_in_the_version_and_a_recommit_is_a_no_op(
    tmp_path: Path,
) -> None:
    out = str(tmp_path)
    a = lance_parts.write_part(_table(["a", "b"]), out, OPTS)
    lance_parts.write_part(_table(["a", "b"]), out, OPTS)  # a retry's: never recorded
    b = lance_parts.write_part(_table(["c"]), out, OPTS)
    assert lance_parts.read_ids_statuses(b, out, OPTS) == (["c"], ["ok"])
    assert lance_parts.commit(out, [], OPTS) is None  # nothing committed: no dataset
    version = lance_parts.commit(out, [("p0", a), ("p1", b)], OPTS)
    ds = lance.dataset(lance_parts.dataset_uri(out))
    assert sorted(ds.to_table()["id"].to_pylist()) == ["a", "b", "c"]
    assert sorted(f.fragment_id for f in ds.get_fragments()) == [0, 1]
    assert lance_parts.commit(out, [("p0", a), ("p1", b)], OPTS) == version
    # A later part: a new version with the earlier fragments, under new distinct ids.
    c = lance_parts.write_part(_table(["d"]), out, OPTS)
    assert lance_parts.commit(out, [("p0", a), ("p1", b), ("p2", c)], OPTS) == version + 1
    ds = lance.dataset(lance_parts.dataset_uri(out))
    assert sorted(ds.to_table()["id"].to_pylist()) == ["a", "b", "c", "d"]
    ids = [f.fragment_id for f in ds.get_fragments()]
    assert len(set(ids)) == 3


def test_parts_of_different_schemas_are_refused(tmp_path: Path) -> None:
    out = str(tmp_path)
    a = lance_parts.write_part(_table(["a"]), out, OPTS)
    b = lance_parts.write_part(pa.table({"id": ["b"], "status": ["ok"], "x": [1]}), out, OPTS)
    with pytest.raises(OutputDirError, match="parts p0 and p1 hold different schemas"):
        lance_parts.commit(out, [("p0", a), ("p1", b)], OPTS)


def test_a_record_naming_a_missing_fragment_file_is_damaged(tmp_path: Path) -> None:
    out = str(tmp_path)
    record = lance_parts.write_part(_table(["a"]), out, OPTS)
    for f in (tmp_path / lance_parts.DATASET_NAME / "data").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="cannot be read"):
        lance_parts.read_ids_statuses(record, out, OPTS)
    with pytest.raises(ValueError, match="not a batchvision Lance part record"):
        lance_parts.read_record(b'{"kind": "other"}')


def test_s3_storage_options() -> None:
    opts = StorageOptions(endpoint="http://127.0.0.1:9000", max_attempts=3, request_timeout=7)
    assert lance_parts.lance_storage_options("s3://b/out", opts) == {
        "client_max_retries": "2",
        "aws_endpoint": "http://127.0.0.1:9000",
        "allow_http": "true",
        "timeout": "7s",
    }
    assert lance_parts.lance_storage_options("/local/out", opts) is None
    assert lance_parts.dataset_uri("s3://anonymous@b/out") == "s3://b/out/results.lance"
