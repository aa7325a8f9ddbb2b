"""The output folder's contract through the Python API: one writer, only our files, damage.

Real files, real locks (``flock``), real damage (truncation, overwritten bytes).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

import batchvision
from batchvision import PreprocessOverrides, RunConfig
from batchvision.demo import synth
from batchvision.errors import OutputDirError
from batchvision.io import outdir, outlock, sinks
from tests.conftest import tiny_config

N = 14
FORMAT_OF = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(5)
    for i in range(N):
        synth.photo_like(rng, (72 + i, 64)).save(root / f"i_{i:02d}.jpg", "JPEG", quality=90)
    return root


def _config(src: Path, out: Path, tiny: tuple[Path, Path], **kw: object) -> RunConfig:
    small = PreprocessOverrides(resize_size=64, crop_size=64)
    return tiny_config(src, out, tiny, **{"top_k": 2, "part_rows": 4, "preprocess": small, **kw})


def _all_ids(out: Path, fmt: str = "parquet") -> list[str]:
    """Ids of every visible part (names starting with ``_`` or ``.`` are skipped)."""
    table = ds.dataset(out, format=FORMAT_OF[sinks.EXTENSIONS[fmt]]).to_table(columns=["id"])
    return table.column("id").to_pylist()


def _expected(src: Path) -> list[str]:
    return sorted(p.name for p in src.iterdir())


# --- one writer at a time --------------------------------------------------------------------


def test_second_writer_refused_while_the_lock_is_held(
    images: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with outlock.hold(str(out), "holder1"):
        lock_file = out / outlock.LOCK_NAME
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        for kw in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(OutputDirError) as info:
                batchvision.run(_config(images, out, tiny_checkpoint, **kw))
            msg = str(info.value)
            assert "\n" not in msg and "in use by another batchvision run" in msg
            assert f"pid {os.getpid()} on host {socket.gethostname()}, started 20" in msg
        assert [p.name for p in out.iterdir()] == [outlock.LOCK_NAME]  # nothing written
    assert not out.exists()  # the folder the lock made is gone with it

    # Released: a run goes ahead, and leaves no lock file behind.
    summary = batchvision.run(_config(images, out, tiny_checkpoint))
    assert summary.ok == N
    assert not (out / outlock.LOCK_NAME).exists()
    assert sorted(_all_ids(out)) == _expected(images)


def test_a_dead_holders_lock_file_is_taken_over(
    images: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    """``kill -9`` leaves the lock file; flock says nobody holds it, so a run proceeds."""
    out = tmp_path / "out"
    out.mkdir()
    (out / outlock.LOCK_NAME).write_text('{"pid": 999999, "host": "gone"}')
    summary = batchvision.run(_config(images, out, tiny_checkpoint))
    assert summary.ok == N and not (out / outlock.LOCK_NAME).exists()


def test_lock_is_released_when_the_run_fails(
    images: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batchvision.run(_config(images, out, tiny_checkpoint))
    with pytest.raises(OutputDirError, match="not empty"):
        batchvision.run(_config(images, out, tiny_checkpoint))
    assert not (out / outlock.LOCK_NAME).exists()
    with outlock.hold(str(out), "again"):  # free again, in this very process
        pass


# --- --overwrite deletes only what this tool wrote -----------------------------------------


def test_overwrite_keeps_a_users_file_named_like_a_part(
    images: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batchvision.run(_config(images, out, tiny_checkpoint))
    (out / "part-mine.parquet").write_bytes(b"my own data")
    (out / "part-abc-00001.parquet").write_bytes(b"named exactly like a part, other run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputDirError) as info:
        batchvision.run(_config(images, out, tiny_checkpoint, overwrite=True))
    assert "did not write (part-abc-00001.parquet, part-mine.parquet)" in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwrite_and_resume_of_an_output_written_by_the_previous_version(
    images: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    """Earlier versions named parts ``part-RUN-NNNNN.EXT`` and recorded no run ids."""
    out = tmp_path / "out"
    batchvision.run(_config(images, out, tiny_checkpoint))
    manifest = json.loads((out / "_manifest.json").read_text())
    del manifest["run_ids"]
    for run in manifest["runs"]:
        del run["run_id"], run["parts_set_aside"]
    (out / "_manifest.json").write_text(json.dumps(manifest))
    parts = sorted(out.glob("part-*.parquet"))
    for p in parts:
        m = outdir.PART_RE.match(p.name)
        assert m is not None
        p.rename(out / f"part-{m['run']}-{m['seq']}.parquet")
    # One part lost: resume writes its rows again, and adopts the old parts as its own.
    lost = sorted(out.glob("part-*.parquet"))[-1]
    lost_rows = len(ds.dataset(lost).to_table())
    lost.unlink()
    resumed = batchvision.run(_config(images, out, tiny_checkpoint, resume=True))
    assert (resumed.already_done, resumed.ok) == (N - lost_rows, lost_rows)
    assert sorted(_all_ids(out)) == _expected(images)
    assert len(json.loads((out / "_manifest.json").read_text())["run_ids"]) == 2

    (out / "notes.md").write_text("mine")
    with pytest.raises(OutputDirError, match=r"did not write \(notes\.md\)"):
        batchvision.run(_config(images, out, tiny_checkpoint, overwrite=True))
    (out / "notes.md").unlink()
    again = batchvision.run(_config(images, out, tiny_checkpoint, overwrite=True))
    assert again.ok == N and sorted(_all_ids(out)) == _expected(images)


# --- --resume checks every part ----------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "500_bytes":
        assert len(data) > 600
        path.write_bytes(data[:500])
    elif how == "garbage":  # 64 bytes overwritten in the middle, length unchanged
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(range(64)) + data[mid + 64 :])
    elif how == "last_line":  # a whole row gone: still parses as CSV/JSONL
        path.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1])


@pytest.mark.parametrize(
    ("fmt", "how"),
    [
        ("parquet", "empty"),
        ("parquet", "500_bytes"),
        ("parquet", "garbage"),
        ("csv", "garbage"),
        ("csv", "last_line"),
        ("jsonl", "500_bytes"),
    ],
)
def test_resume_sets_a_damaged_part_aside_and_redoes_its_rows(
    images: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fmt: str,
    how: str,
) -> None:
    out = tmp_path / "out"
    first = batchvision.run(_config(images, out, tiny_checkpoint, format=fmt))
    assert first.ok == N
    part = sorted(out.glob(f"part-*{sinks.EXTENSIONS[fmt]}"))[1]
    _damage(part, how)

    with caplog.at_level(logging.WARNING, logger="batchvision"):
        resumed = batchvision.run(_config(images, out, tiny_checkpoint, format=fmt, resume=True))
    assert (resumed.already_done, resumed.ok) == (N - 4, 4)
    aside = f"_damaged-{part.name}"
    (line,) = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert f"part {part.name} is damaged" in line and f"set aside as {aside}" in line
    assert not part.exists() and (out / aside).exists()
    ids = _all_ids(out, fmt)
    assert sorted(ids) == _expected(images)  # every id exactly once
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["runs"][-1]["parts_set_aside"] == [aside]
    assert manifest["counts"]["rows_written"] == N
    # The set-aside file is batchvision's: --overwrite removes it with the rest.
    batchvision.run(_config(images, out, tiny_checkpoint, format=fmt, overwrite=True))
    assert not (out / aside).exists()


def test_resume_refuses_a_data_file_it_did_not_write(
    images: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batchvision.run(_config(images, out, tiny_checkpoint))
    (out / "extra.parquet").write_bytes(b"someone else's")
    with pytest.raises(OutputDirError, match=r"extra\.parquet is not a part batchvision wrote"):
        batchvision.run(_config(images, out, tiny_checkpoint, resume=True))


def test_damaged_manifest_is_one_clear_error(
    images: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batchvision.run(_config(images, out, tiny_checkpoint))
    (out / "_manifest.json").write_bytes(b'{"model": "tor')
    with pytest.raises(OutputDirError, match=r"_manifest\.json is damaged"):
        batchvision.run(_config(images, out, tiny_checkpoint, resume=True))


def test_temporaries_are_unique_per_writer(tmp_path: Path) -> None:
    names = {sinks.temp_name("_manifest.json") for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith("._manifest.json.") and n.endswith(".tmp") for n in names)
    assert all(outdir._is_temp(n) for n in names)


def test_s3_output_without_boto3_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from batchvision.errors import ConfigError
    from batchvision.io.storage import StorageOptions

    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` fail
    opts = StorageOptions(endpoint="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"pip install 'batchvision\[s3\]'"):
        outlock.hold("s3://bucket/out", "r1", opts).__enter__()
