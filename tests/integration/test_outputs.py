"""The output contract, through the Python API: rows, types, formats, manifest, refusals."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest
import torch

import batchvision
from batchvision import PreprocessOverrides, RunConfig
from batchvision.demo import synth
from batchvision.errors import OutputDirError
from batchvision.tasks import get_task
from tests.conftest import tiny_config

CLASSIFY_SCHEMA = get_task("classify").schema()
TOP_K = 3
# A small model input keeps these runs well under a second each on a busy CPU.
SMALL = PreprocessOverrides(resize_size=64, crop_size=64)
GOOD = {  # id -> (width, height)
    "a.jpg": (160, 120),
    "b.png": (90, 130),
    "c.jpeg": (200, 100),
    "sub/d.jpg": (120, 120),
    "sub/deeper/e.JPG": (75, 140),
}
BAD = {  # id -> expected error code
    "zero.jpg": "empty",
    "truncated.jpg": "truncated",
    "text.jpg": "not_image",
}
SKIPPED = (".hidden.jpg", "._x.jpg", "notes.txt", ".cache")  # .cache is a hidden folder


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # The test machine has few, shared cores; oversubscribed intra-op threads are 10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = synth.photo_like(np.random.default_rng(seed), size)
    if path.suffix.lower() == ".png":
        img.save(path)
    else:
        img.save(path, "JPEG", quality=90)


@pytest.fixture(scope="module")
def messy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good images plus every kind of bad input a real folder holds."""
    root = tmp_path_factory.mktemp("messy")
    for i, (rel, size) in enumerate(GOOD.items()):
        _save(root / rel, size, seed=i)
    (root / "zero.jpg").write_bytes(b"")
    _save(root / "full.jpg", (300, 200), seed=99)
    full = (root / "full.jpg").read_bytes()
    (root / "full.jpg").unlink()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "text.jpg").write_text("this is not an image\n")
    _save(root / ".hidden.jpg", (64, 64), seed=7)
    _save(root / "._x.jpg", (64, 64), seed=8)  # macOS AppleDouble
    (root / "notes.txt").write_text("not an image name\n")
    _save(root / ".cache" / "f.jpg", (64, 64), seed=9)
    (root / "empty_sub").mkdir()  # a folder with nothing in it yields nothing
    return root


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """23 good images, flat."""
    root = tmp_path_factory.mktemp("plain23")
    for i in range(23):
        _save(root / f"p_{i:02d}.jpg", (80 + i, 64), seed=100 + i)
    return root


def _config(inputs: Path, output: Path, tiny: tuple[Path, Path], **kw: object) -> RunConfig:
    opts = {"top_k": TOP_K, "preprocess": SMALL, "max_error_rate": 1.0, **kw}
    return tiny_config(inputs, output, tiny, **opts)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _labels(tiny: tuple[Path, Path]) -> list[str]:
    return tiny[1].read_text().split()


@pytest.fixture(scope="module")
def outputs(
    messy_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, batchvision.Summary]]:
    """The messy folder run once per format (small parts, so every format has several)."""
    root = tmp_path_factory.mktemp("formats")
    done = {}
    for fmt in ("parquet", "csv", "jsonl"):
        out = root / fmt
        summary = batchvision.run(
            _config(messy_dir, out, tiny_checkpoint, format=fmt, part_rows=3, batch_size=3)
        )
        done[fmt] = (out, summary)
    return done


def test_messy_folder_rows_and_summary(
    outputs: dict[str, tuple[Path, batchvision.Summary]],
    messy_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
) -> None:
    out, summary = outputs["parquet"]
    rows = {r["id"]: r for r in ds.dataset(out, format="parquet").to_table().to_pylist()}
    assert sorted(rows) == sorted([*GOOD, *BAD])  # one row per image-named file
    assert (summary.ok, summary.error, summary.skipped) == (len(GOOD), len(BAD), len(SKIPPED))
    assert summary.error_codes == {code: 1 for code in BAD.values()}
    assert sorted(Path(p).name for p in summary.skipped_examples) == sorted(SKIPPED)
    assert summary.exit_code == 0  # max_error_rate=1.0
    labels = _labels(tiny_checkpoint)
    for rid, code in BAD.items():
        r = rows[rid]
        assert r["status"] == "error"
        assert r["error"].startswith(f"{code}: "), r["error"]
        for col in ("width", "height", "label", "score", "topk_ids", "topk_labels", "topk_scores"):
            assert r[col] is None, (rid, col)
    for rid, (w, h) in GOOD.items():
        r = rows[rid]
        assert r["status"] == "ok" and r["error"] is None
        assert (r["width"], r["height"]) == (w, h)
        assert r["path"] == str(messy_dir / rid)
        assert r["label"] in labels and r["label"] == r["topk_labels"][0]
        assert len(r["topk_ids"]) == len(r["topk_labels"]) == len(r["topk_scores"]) == TOP_K
        assert [labels[i] for i in r["topk_ids"]] == r["topk_labels"]
        assert len(set(r["topk_ids"])) == TOP_K
        scores = r["topk_scores"]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 <= s <= 1.0 for s in scores) and sum(scores) <= 1.0 + 1e-5
        assert r["score"] == pytest.approx(scores[0])


def test_parquet_types_and_readers(
    outputs: dict[str, tuple[Path, batchvision.Summary]], tiny_checkpoint: tuple[Path, Path]
) -> None:
    out, _ = outputs["parquet"]
    parts = sorted(p.name for p in out.iterdir() if p.suffix == ".parquet")
    assert len(parts) >= 3 and all(p.startswith("part-") for p in parts)
    # A dead run's temporary and the manifest must not break a plain dataset read.
    (out / ".part-deadbeef-00009.parquet.tmp").write_bytes(b"PAR1 half written")
    (out / "_SUCCESS").write_bytes(b"")
    try:
        dataset = ds.dataset(out, format="parquet")
        assert sorted(Path(f).name for f in dataset.files) == parts
        table = dataset.to_table()
        assert table.schema.equals(CLASSIFY_SCHEMA)
        assert table.schema.field("topk_ids").type == pa.list_(pa.int32())
        assert table.schema.field("topk_scores").type == pa.list_(pa.float32())
        assert table.schema.field("topk_labels").type == pa.list_(pa.string())
        assert table.schema.field("width").type == pa.int32()
        assert table.schema.field("score").type == pa.float32()
        assert table.num_rows == len(GOOD) + len(BAD)
        for part in parts:
            assert pq.read_schema(out / part).equals(CLASSIFY_SCHEMA)

        df = pd.read_parquet(out)
        assert sorted(df["id"]) == sorted([*GOOD, *BAD])
        assert df.loc[df["status"] == "error", "label"].isna().all()

        con = duckdb.connect()
        described = con.sql(f"describe select * from read_parquet('{out}/*.parquet')")
        types = {name: type_ for name, type_, *_ in described.fetchall()}
        assert types["topk_ids"] == "INTEGER[]"
        assert types["topk_scores"] == "FLOAT[]"
        assert types["topk_labels"] == "VARCHAR[]"
        assert types["width"] == "INTEGER"
        counts = con.sql(
            f"select status, count(*) from read_parquet('{out}/*.parquet') group by status"
        ).fetchall()
        assert dict(counts) == {"ok": len(GOOD), "error": len(BAD)}
        top1 = con.sql(
            f"select count(*) from read_parquet('{out}/*.parquet') "
            "where status = 'ok' and topk_labels[1] = label and len(topk_scores) = 3"
        ).fetchall()
        assert top1 == [(len(GOOD),)]
    finally:
        (out / ".part-deadbeef-00009.parquet.tmp").unlink()
        (out / "_SUCCESS").unlink()


# The text formats cannot carry types: a part whose `error` column is all empty is inferred as
# null by pyarrow, so a multi-part read needs the schema spelt out (duckdb merges by itself).
CSV_TYPES = {
    "id": pa.string(),
    "path": pa.string(),
    "status": pa.string(),
    "error": pa.string(),
    "width": pa.int32(),
    "height": pa.int32(),
    "label": pa.string(),
    "score": pa.float32(),
    "topk_ids": pa.string(),
    "topk_labels": pa.string(),
    "topk_scores": pa.string(),
}


def _by_id(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(r["id"]): r for r in rows}


def test_text_formats_match_parquet(
    outputs: dict[str, tuple[Path, batchvision.Summary]],
) -> None:
    ref = _by_id(ds.dataset(outputs["parquet"][0], format="parquet").to_table().to_pylist())

    csv_dir = outputs["csv"][0]
    csv_parts = sorted(csv_dir.glob("part-*.csv"))
    assert len(csv_parts) >= 3
    fmt = ds.CsvFileFormat(
        convert_options=pacsv.ConvertOptions(column_types=CSV_TYPES, strings_can_be_null=True)
    )
    csv_table = ds.dataset(csv_dir, format=fmt).to_table()
    assert [f.name for f in csv_table.schema] == CLASSIFY_SCHEMA.names
    per_file = pa.concat_tables(
        pacsv.read_csv(
            p,
            convert_options=pacsv.ConvertOptions(column_types=CSV_TYPES, strings_can_be_null=True),
        )
        for p in csv_parts
    )
    assert per_file.num_rows == csv_table.num_rows == len(ref)
    csv_rows = _by_id(csv_table.to_pylist())

    jsonl_dir = outputs["jsonl"][0]
    jsonl_parts = sorted(jsonl_dir.glob("part-*.jsonl"))
    assert len(jsonl_parts) >= 3
    jopts = pajson.ParseOptions(explicit_schema=CLASSIFY_SCHEMA)
    json_table = pa.concat_tables(pajson.read_json(p, parse_options=jopts) for p in jsonl_parts)
    assert json_table.schema.field("topk_ids").type == pa.list_(pa.int32())
    json_rows = _by_id(json_table.to_pylist())

    pd_csv = pd.concat([pd.read_csv(p) for p in csv_parts])
    pd_json = pd.concat([pd.read_json(p, lines=True) for p in jsonl_parts])
    con = duckdb.connect()
    duck_csv = dict(
        con.sql(f"select id, label from read_csv('{csv_dir}/*.csv', union_by_name=true)").fetchall()
    )
    duck_json = dict(con.sql(f"select id, label from read_json('{jsonl_dir}/*.jsonl')").fetchall())

    assert set(csv_rows) == set(json_rows) == set(ref) == set(duck_csv) == set(duck_json)
    assert sorted(pd_csv["id"]) == sorted(pd_json["id"]) == sorted(ref)
    for rid, r in ref.items():
        c, j = csv_rows[rid], json_rows[rid]
        assert c["status"] == j["status"] == r["status"]
        assert c["label"] == j["label"] == duck_csv[rid] == duck_json[rid] == r["label"]
        assert c["error"] == j["error"] == r["error"]
        assert (c["width"], c["height"]) == (j["width"], j["height"]) == (r["width"], r["height"])
        if r["status"] == "ok":
            assert json.loads(str(c["topk_ids"])) == j["topk_ids"] == r["topk_ids"]
            assert json.loads(str(c["topk_labels"])) == j["topk_labels"] == r["topk_labels"]
            assert json.loads(str(c["topk_scores"])) == pytest.approx(r["topk_scores"], rel=1e-6)
            assert j["topk_scores"] == pytest.approx(r["topk_scores"], rel=1e-6)
        else:
            assert c["topk_ids"] is None and j["topk_ids"] is None
    pd_ok = pd_json[pd_json["status"] == "ok"]
    assert all(len(v) == TOP_K for v in pd_ok["topk_ids"])
    assert pd_csv.loc[pd_csv["status"] == "error", "label"].isna().all()


def test_manifest_records_the_run(
    outputs: dict[str, tuple[Path, batchvision.Summary]], tiny_checkpoint: tuple[Path, Path]
) -> None:
    import torchvision

    out, summary = outputs["parquet"]
    m = json.loads((out / "_manifest.json").read_text())
    assert m["status"] == "complete"
    assert m["model"].split(":")[-1] == "mobilenet_v3_small"
    assert m["weights"] == str(tiny_checkpoint[0].resolve())
    assert m["weights_kind"] == "checkpoint"
    assert m["num_classes"] == 10 and m["top_k"] == TOP_K and m["format"] == "parquet"
    assert m["preprocess"]["resize_size"] == 64
    assert m["preprocess"]["crop_size"] == [64, 64]
    assert m["preprocess"]["interpolation"] in ("bilinear", "bicubic", "nearest")
    assert len(m["preprocess"]["mean"]) == len(m["preprocess"]["std"]) == 3
    assert m["versions"]["torch"] == torch.__version__
    assert m["versions"]["torchvision"] == torchvision.__version__
    assert m["versions"]["batchvision"] == batchvision.__version__
    assert m["counts"] == {
        "ok": len(GOOD),
        "error": len(BAD),
        "rows_written": len(GOOD) + len(BAD),
        "skipped": len(SKIPPED),
    }
    (run,) = m["runs"]
    assert run["status"] == "complete"
    assert run["parts_written"] == len(list(out.glob("part-*.parquet")))
    assert run["error_codes"] == summary.error_codes
    assert {"read", "decode", "inference", "write"} <= set(run["stage_seconds"])
    assert all(v >= 0 for v in run["stage_seconds"].values())
    assert run["wall_seconds"] > 0
    assert run["device"].split(":")[0] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert run["precision"] in ("fp32", "bf16")
    # TF32 only for fp32 on CUDA (stages/device.py uses_tf32).
    assert run["tf32"] is (run["device"].startswith("cuda") and run["precision"] == "fp32")


def test_non_empty_output_refused_untouched(
    outputs: dict[str, tuple[Path, batchvision.Summary]],
    messy_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
) -> None:
    out = outputs["csv"][0]
    before = _snapshot(out)
    with pytest.raises(OutputDirError, match="not empty"):
        batchvision.run(_config(messy_dir, out, tiny_checkpoint, format="csv"))
    assert _snapshot(out) == before


def test_overwrite_replaces_previous_output(
    plain_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batchvision.run(_config(plain_dir, out, tiny_checkpoint, part_rows=8))
    old_parts = {p.name for p in out.glob("part-*.parquet")}
    assert len(old_parts) == 3
    summary = batchvision.run(
        _config(plain_dir, out, tiny_checkpoint, part_rows=100, overwrite=True)
    )
    new_parts = {p.name for p in out.glob("part-*.parquet")}
    assert summary.ok == 23 and len(new_parts) == 1 and not new_parts & old_parts
    assert sorted(p.name for p in out.iterdir()) == sorted([*new_parts, "_manifest.json"])
    ids = ds.dataset(out, format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == sorted(p.name for p in plain_dir.iterdir())
    assert len(json.loads((out / "_manifest.json").read_text())["runs"]) == 1


def test_overwrite_refuses_foreign_files(
    plain_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batchvision.run(_config(plain_dir, out, tiny_checkpoint, part_rows=100))
    (out / "my_notes.txt").write_text("precious\n")
    before = _snapshot(out)
    with pytest.raises(OutputDirError, match=r"my_notes\.txt"):
        batchvision.run(_config(plain_dir, out, tiny_checkpoint, overwrite=True))
    assert _snapshot(out) == before

    foreign = tmp_path / "somebody_elses"
    foreign.mkdir()
    (foreign / "part-0.parquet").write_bytes(b"not ours")  # our name, but no manifest
    with pytest.raises(OutputDirError, match="did not write"):
        batchvision.run(_config(plain_dir, foreign, tiny_checkpoint, overwrite=True))
    assert (foreign / "part-0.parquet").read_bytes() == b"not ours"


def test_resume_refused_without_manifest(
    plain_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_text("id\nx\n")
    with pytest.raises(OutputDirError, match=r"_manifest\.json"):
        batchvision.run(_config(plain_dir, out, tiny_checkpoint, resume=True))
    assert _snapshot(out) == {"data.csv": b"id\nx\n"}


def test_resume_refused_with_other_top_k(
    plain_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batchvision.run(_config(plain_dir, out, tiny_checkpoint, part_rows=100, top_k=3))
    before = _snapshot(out)
    with pytest.raises(OutputDirError, match=r"top_k differs .*\(3 there, 4 now\)"):
        batchvision.run(_config(plain_dir, out, tiny_checkpoint, resume=True, top_k=4))
    assert _snapshot(out) == before
    # The same settings resume (the manifest's JSON lists must equal the config's tuples).
    again = batchvision.run(_config(plain_dir, out, tiny_checkpoint, resume=True, top_k=3))
    assert (again.already_done, again.ok, again.error) == (23, 0, 0)
    assert sorted(out.glob("part-*")) == sorted(
        Path(out, n) for n in before if n != "_manifest.json"
    )


def test_part_rows_splits_parts(
    plain_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = batchvision.run(
        _config(plain_dir, out, tiny_checkpoint, part_rows=5, batch_size=5, workers=1)
    )
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 5
    sizes = [pq.read_metadata(p).num_rows for p in parts]
    assert sorted(sizes) == [3, 5, 5, 5, 5]
    ids = [i for p in parts for i in pq.read_table(p, columns=["id"]).column(0).to_pylist()]
    assert len(ids) == len(set(ids)) == 23
    assert set(ids) == {p.name for p in plain_dir.iterdir()}
    assert summary.ok == 23 and summary.error == 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert all(math.isfinite(v) for v in summary.stage_seconds.values())
