"""Shards: WebDataset tar streams cut anywhere, and Parquet files of image bytes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchvision.errors import ConfigError
from batchvision.io import shards, sources, units
from batchvision.io.shards import ShardOptions
from batchvision.io.storage import StorageOptions

OPTS = StorageOptions()
MAX = 1 << 20


def write_tar(path: Path, samples: list[dict[str, bytes]], fmt: int = tarfile.USTAR_FORMAT) -> None:
    """A WebDataset shard: each sample's members ``KEY.EXT``, as webdataset writes them."""
    with tarfile.open(path, "w", format=fmt) as tf:
        for sample in samples:
            key = sample["__key__"].decode()
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def _samples(n: int) -> list[dict[str, bytes]]:
    return [
        {
            "__key__": f"dir/s{i:03d}".encode(),
            "jpg": bytes([i]) * (100 + 700 * i),
            "txt": f"caption {i}".encode(),
            "json": json.dumps({"i": i}).encode(),
        }
        for i in range(n)
    ]


def _read(path: Path, **kw: object) -> list[shards.Sample]:
    opts = ShardOptions(**kw)  # type: ignore[arg-type]
    return list(shards.tar_samples(str(path), "sh.tar", opts, OPTS, MAX))


def test_samples_group_members_by_key_and_keep_members(tmp_path: Path) -> None:
    src = _samples(4)
    write_tar(tmp_path / "a.tar", src)
    got = _read(tmp_path / "a.tar", keep_columns=("txt", "json", "cls"))
    assert [s.id for s in got] == [f"sh.tar/dir/s{i:03d}" for i in range(4)]
    assert [s.data for s in got] == [s["jpg"] for s in src]
    assert all(s.error is None for s in got)
    assert got[2].keep == {"txt": "caption 2", "json": '{"i": 2}', "cls": None}
    assert got[0].path.endswith("a.tar#dir/s000")


def test_image_key_order_and_samples_without_an_image(tmp_path: Path) -> None:
    write_tar(
        tmp_path / "a.tar",
        [
            {"__key__": b"a", "png": b"P", "jpg": b"J"},
            {"__key__": b"b", "txt": b"no image here"},
            {"__key__": b"c", "webp": b"W"},
        ],
    )
    got = _read(tmp_path / "a.tar")
    assert [s.data for s in got] == [b"J", None, b"W"]
    assert got[1].error is not None and got[1].error.startswith("no_image:")
    assert "this sample has txt" in got[1].error
    assert [s.data for s in _read(tmp_path / "a.tar", image_keys=("png",))] == [b"P", None, None]


def test_long_names_pax_and_gnu(tmp_path: Path) -> None:
    key = "deep/" + "x" * 150 + "/sample"
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        write_tar(tmp_path / "l.tar", [{"__key__": key.encode(), "jpg": b"data"}], fmt)
        (got,) = _read(tmp_path / "l.tar")
        assert (got.id, got.data) == (f"sh.tar/{key}", b"data")


def test_a_member_over_max_file_bytes_is_skipped_not_held(tmp_path: Path) -> None:
    write_tar(tmp_path / "a.tar", [{"__key__": b"big", "jpg": bytes(5000)}, *_samples(1)])
    got = list(shards.tar_samples(str(tmp_path / "a.tar"), "a", ShardOptions(), OPTS, 4000))
    assert got[0].error is not None and got[0].error.startswith("too_large: member is 5000")
    assert got[1].data == _samples(1)[0]["jpg"]


def test_a_shard_cut_anywhere_keeps_its_whole_samples_and_says_so(tmp_path: Path) -> None:
    src = _samples(5)
    write_tar(tmp_path / "full.tar", src)
    data = (tmp_path / "full.tar").read_bytes()
    complete = _read(tmp_path / "full.tar")
    # Every cut on a 512-byte boundary (a cut between members is the case tarfile misses)
    # and a few inside blocks, up to the end-of-archive block.
    archive_end = data.rindex(src[-1]["json"]) + 512
    cuts = [*range(0, archive_end, 512), *range(37, archive_end, 1531)]
    for cut in cuts:
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        got = _read(tmp_path / "cut.tar")
        *good, last = got
        assert last.id == "sh.tar", cut
        assert last.error is not None and last.error.startswith("shard_truncated: "), cut
        # The samples before the damage are whole, and in order.
        assert [(s.id, s.data) for s in good] == [(s.id, s.data) for s in complete[: len(good)]]
    assert len(complete) == 5


def test_a_corrupt_header_is_damage(tmp_path: Path) -> None:
    write_tar(tmp_path / "a.tar", _samples(3))
    data = bytearray((tmp_path / "a.tar").read_bytes())
    second_header = 512 + 512  # after the first member's header and its 100 bytes
    data[second_header + 10] ^= 0xFF
    (tmp_path / "a.tar").write_bytes(bytes(data))
    got = _read(tmp_path / "a.tar")
    assert got[-1].error is not None and "corrupt tar header at byte 1024" in got[-1].error
    assert len(got) == 1  # the first sample lost its other members: lost with the shard


def test_expand_braces() -> None:
    assert shards.expand_braces("s/{000..002}.tar") == ["s/000.tar", "s/001.tar", "s/002.tar"]
    assert shards.expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    with pytest.raises(ConfigError, match="is not a range"):
        shards.expand_braces("s/{9..2}.tar")


def _parquet(dest: Path, **columns: pa.Array) -> Path:
    pq.write_table(pa.table(columns), dest, row_group_size=3)
    return dest


def test_parquet_cells_struct_or_binary_nulls_ids_and_kept_types(tmp_path: Path) -> None:
    images = pa.array(
        [{"bytes": b"a", "path": "a.jpg"}, None, {"bytes": b"c", "path": None}, {"bytes": b"d"}]
    )
    spec = _parquet(
        tmp_path / "p.parquet",
        image=images,
        key=pa.array(["k0", "k1", None, "k3"]),
        score=pa.array([1, 2, 3, 4], pa.int16()),
    )
    opts = ShardOptions(id_column="key", keep_columns=("score",))
    got = list(shards.parquet_samples(str(spec), "p.parquet", opts, OPTS, MAX))
    assert [s.id for s in got] == ["k0", "k1", "p.parquet#2", "k3"]
    assert [s.data for s in got] == [b"a", None, b"c", b"d"]
    assert got[1].error == "empty: the image cell is null"
    assert [s.keep["score"] for s in got] == [1, 2, 3, 4]
    assert shards.keep_types(str(spec), opts, OPTS) == {"score": pa.int16()}


def test_parquet_inputs_are_images_manifests_or_refused(tmp_path: Path) -> None:
    images = _parquet(tmp_path / "i.parquet", jpg=pa.array([b"x"], pa.binary()))
    found = sources.shard_input(str(images))
    assert found is not None and found.kind == "parquet"
    manifest = _parquet(tmp_path / "m.parquet", path=pa.array(["a.jpg"]))
    assert sources.shard_input(str(manifest)) is None
    both = _parquet(tmp_path / "b.parquet", path=pa.array(["a.jpg"]), img=pa.array([b"x"]))
    with pytest.raises(ConfigError, match=r"give --image-column img .* or --manifest"):
        sources.shard_input(str(both))
    assert sources.shard_input(str(both), manifest=True) is None
    assert sources.shard_input(str(both), shard_opts=ShardOptions(image_column="img"))
    two = _parquet(tmp_path / "t.parquet", a=pa.array([b"x"]), b=pa.array([b"y"]))
    with pytest.raises(ConfigError, match=r"several columns .* \(a, b\); choose one"):
        sources.shard_input(str(two))
    with pytest.raises(ConfigError, match=r"--image-column 'path' .* holds string"):
        sources.shard_input(str(both), shard_opts=ShardOptions(image_column="path"))


def test_shard_inputs_are_found_in_folders_globs_and_braces(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for i in range(3):
        write_tar(tmp_path / "d" / f"{i:05d}.tar", _samples(1))
    (tmp_path / "d" / ".hidden.tar").write_bytes(b"")
    ids = ["00000.tar", "00001.tar", "00002.tar"]
    for spec in (str(tmp_path / "d"), str(tmp_path / "d" / "*.tar")):
        found = sources.shard_input(spec)
        assert found is not None and [s for _, s in found.shards] == ids, spec
    braces = str(tmp_path / "d" / "{00000..00002}.tar")
    found = sources.shard_input(braces)
    assert found is not None and [s for _, s in found.shards] == ids
    with pytest.raises(ConfigError, match="does not exist"):
        sources.shard_input(str(tmp_path / "d" / "{00000..00003}.tar"))
    planned = list(units.plan_units([str(tmp_path / "d")], 100))
    assert [(u.kind, u.shard, u.key) for u in planned] == [
        ("tar", s, f"000-{k:08d}") for k, s in enumerate(ids)
    ]
    assert sources.check_inputs([str(tmp_path / "d")]) == ["shards"]
    assert list(sources.iter_inputs([str(tmp_path / "d")])) == []


def test_the_report_reads_a_sample_from_its_shard(tmp_path: Path) -> None:
    from batchvision.io.sources import ReadError
    from batchvision.report.reading import read_image_bytes

    src = _samples(3)
    write_tar(tmp_path / "a.tar", src)
    assert read_image_bytes(f"{tmp_path}/a.tar#dir/s001") == src[1]["jpg"]
    spec = _parquet(tmp_path / "p.parquet", img=pa.array([b"r0", b"r1", b"r2", b"r3", b"r4"]))
    assert read_image_bytes(f"{spec}#4") == b"r4"  # in the second row group
    with pytest.raises(ReadError, match="no such sample"):
        read_image_bytes(f"{tmp_path}/a.tar#dir/s009")


def test_bench_measures_the_images_inside_shards(tmp_path: Path) -> None:
    from batchvision.bench.runner import extract_samples

    src = [{"__key__": b"a", "jpg": b"\xff\xd8jpeg"}, {"__key__": b"b", "png": b"\x89PNGpng"}]
    write_tar(tmp_path / "s.tar", [*src, {"__key__": b"c", "txt": b"no image"}])
    paths = extract_samples(str(tmp_path / "s.tar"), tmp_path / "x", None)
    assert [Path(p).name for p in paths] == ["sample_000000.jpg", "sample_000001.png"]
    assert [Path(p).read_bytes() for p in paths] == [b"\xff\xd8jpeg", b"\x89PNGpng"]
    assert len(extract_samples(str(tmp_path / "s.tar"), tmp_path / "y", 1)) == 1


def test_a_member_name_that_is_not_utf8_gets_a_writable_id(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "a.tar", "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo("caf\xe9.jpg")  # the byte 0xE9 in the archive
        info.size = 3
        tf.addfile(info, io.BytesIO(b"img"))
    (got,) = _read(tmp_path / "a.tar")
    assert (got.id, got.data) == ("sh.tar/file:caf%E9", b"img")
    got.id.encode("utf-8")  # what every output writer needs
    from batchvision.report.reading import read_image_bytes

    assert read_image_bytes(got.path) == b"img"


def test_a_fifo_named_like_a_shard_is_a_row_not_a_hang(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo.tar")
    (got,) = _read(tmp_path / "fifo.tar")  # a blocking open would hang the test
    assert got.error is not None and "not a regular file" in got.error
    pq_fifo = tmp_path / "fifo.parquet"
    os.mkfifo(pq_fifo)
    (row,) = shards.parquet_samples(str(pq_fifo), "f", ShardOptions(), OPTS, MAX)
    assert row.error is not None and "not a regular file" in row.error
