"""S3 inputs and outputs against a real S3-compatible server (moto) on loopback.

Faults are injected by ``tests.s3_proxy.FaultProxy``, an HTTP proxy in front of moto, or by
moto's own authentication (``INITIAL_NO_AUTH_ACTION_COUNT``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import pickle
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import batchvision
from batchvision import PreprocessOverrides, RunConfig
from batchvision.errors import ConfigError, OutputDirError, StorageAuthError
from batchvision.io import outdir, outlock, sinks, sources, storage
from batchvision.io.sources import InputItem, items_to_batch, read_batch
from batchvision.io.storage import StorageOptions
from batchvision.tasks import get_task
from tests.conftest import S3Server, run_cli
from tests.s3_proxy import RESET, FaultProxy

SMALL = ("--resize-size", "64", "--crop-size", "64")
CORRUPT = b"\xff\xd8\xff\xe0 this is not really a jpeg" + bytes(200)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def images(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's photos plus a corrupt JPEG, a hidden file and a non-image."""
    root = tmp_path_factory.mktemp("s3src") / "imgs"
    shutil.copytree(photo_dir, root)
    (root / "a" / "corrupt.jpg").write_bytes(CORRUPT)
    (root / ".hidden.jpg").write_bytes(b"hidden")
    (root / "b" / ".cache").mkdir()
    for i in range(3):
        (root / "b" / ".cache" / f"{i}.jpg").write_bytes(b"cached")
    (root / "b" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server, images: Path) -> str:
    """A bucket holding ``images`` under ``in/``."""
    name = s3_server.new_bucket()
    s3_server.upload_dir(images, f"s3://{name}/in")
    return name


@pytest.fixture(scope="module")
def model_args(tiny_checkpoint: tuple[Path, Path]) -> list[str]:
    ckpt, labels = tiny_checkpoint
    return ["--model", "mobilenet_v3_small", "--weights", str(ckpt), "--labels", str(labels)]


def _config(tiny_checkpoint: tuple[Path, Path], inputs: list[str], output: str, **kw: object):
    ckpt, labels = tiny_checkpoint
    return RunConfig(
        inputs=tuple(inputs),
        output=output,
        model="mobilenet_v3_small",
        weights=str(ckpt),
        labels=str(labels),
        workers=0,
        batch_size=8,
        preprocess=PreprocessOverrides(resize_size=64, crop_size=64),
        **kw,  # type: ignore[arg-type]
    )


def _s3fs(endpoint: str) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=endpoint.removeprefix("http://"), scheme="http")


def _rows(table: pa.Table) -> dict[str, tuple[str, str | None, str | None]]:
    return {
        r["id"]: (r["status"], (r["error"] or "").split(":")[0] or None, r["label"])
        for r in table.to_pylist()
    }


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)


# --- storage units -----------------------------------------------------------------------


def test_parse_uri_and_options() -> None:
    loc = storage.parse_uri("s3://anonymous@bkt/some/prefix/")
    assert (loc.anonymous, loc.bucket, loc.key, loc.path) == (
        True,
        "bkt",
        "some/prefix",
        "bkt/some/prefix",
    )
    assert loc.child("a/b.jpg") == "s3://anonymous@bkt/some/prefix/a/b.jpg"
    assert loc.child("../x.jpg") == "s3://anonymous@bkt/some/x.jpg"
    assert storage.parse_uri("s3://bkt").uri == "s3://bkt"
    with pytest.raises(ConfigError, match="credentials"):
        storage.parse_uri("s3://AKIA:secret@bkt/x")
    with pytest.raises(ConfigError, match="'gs' scheme is not supported"):
        storage.parse_uri("gs://bkt/x")
    with pytest.raises(ConfigError, match="--s3-endpoint 'localhost:9000' is not valid"):
        StorageOptions(endpoint="localhost:9000")
    with pytest.raises(ConfigError, match="max attempts"):
        StorageOptions(max_attempts=0)
    opts = StorageOptions(endpoint="http://127.0.0.1:9", max_attempts=2)
    assert pickle.loads(pickle.dumps(opts)) == opts


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("AWS Error ACCESS_DENIED during HeadObject operation: No response body.", "auth"),
        ("AWS Error UNKNOWN (HTTP status 403) during GetObject operation", "auth"),
        ("AWS Error INVALID_ACCESS_KEY_ID during ListObjectsV2 operation: ...", "auth"),
        ("AWS Error UNKNOWN (HTTP status 400) during GetObject: ExpiredToken", "auth"),
        ("AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation", "not_found"),
        ("AWS Error SLOW_DOWN during GetObject operation: Please reduce", "transient"),
        ("AWS Error UNKNOWN (HTTP status 503) during HeadObject operation", "transient"),
        ("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7", "transient"),
        ("AWS Error INVALID_RANGE during GetObject operation", "other"),
    ],
)
def test_classify_errors(message: str, kind: str) -> None:
    assert storage.classify(OSError(message)) == kind


def test_env_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    cfg = RunConfig(inputs=("x",), output=str(tmp_path), model="m")
    assert cfg.storage == StorageOptions(endpoint="http://127.0.0.1:1", max_attempts=7)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    assert RunConfig(inputs=("x",), output="o", model="m").s3_endpoint == "http://127.0.0.1:2"
    assert RunConfig(inputs=("x",), output="o", model="m", s3_endpoint="").storage.endpoint is None


# --- listing and reading -----------------------------------------------------------------


def test_listing_matches_local_folder(s3_server: S3Server, bucket: str, images: Path) -> None:
    opts = StorageOptions(endpoint=s3_server.endpoint)
    local_stats, s3_stats = sources.ListingStats(), sources.ListingStats()
    local = [i.id for i in sources.iter_inputs([str(images)], local_stats)]
    items = list(sources.iter_inputs([f"s3://{bucket}/in/"], s3_stats, opts))
    assert [i.id for i in items] == local and len(local) == 25  # same ids, same order
    assert items[0].path == f"s3://{bucket}/in/{items[0].id}"
    assert (s3_stats.skipped_hidden, s3_stats.skipped_extension) == (2, 1)  # .cache/ once
    assert s3_stats.skipped_examples == [
        f"s3://{bucket}/in/.hidden.jpg",
        f"s3://{bucket}/in/b/.cache",
        f"s3://{bucket}/in/b/notes.txt",
    ]
    assert (local_stats.skipped_hidden, local_stats.skipped_extension) == (2, 1)
    assert sources.check_inputs([f"s3://{bucket}/in", f"s3://{bucket}/in/a/img_01.jpg"], opts) == [
        "folder",
        "file",
    ]
    glob_ids = [i.id for i in sources.iter_inputs([f"s3://{bucket}/in/*/img_0*.jpg"], None, opts)]
    assert glob_ids == sorted(i for i in local if i.split("/")[1].startswith("img_0"))
    assert [i.id for i in sources.iter_inputs([f"s3://{bucket}"], None, opts)] == [
        f"in/{i}" for i in local
    ]  # a whole bucket
    assert [i.id for i in sources.iter_inputs([f"s3://{bucket}/in/**/img_1?.jpg"], None, opts)] == [
        f"{'a' if n % 2 else 'b'}/img_{n}.jpg" for n in range(10, 20) if n % 2
    ] + [f"b/img_{n}.jpg" for n in range(10, 20) if not n % 2]
    with pytest.raises(ConfigError, match="does not exist"):
        sources.check_inputs([f"s3://{bucket}/nope"], opts)
    with pytest.raises(ConfigError, match="matches no files"):
        sources.check_inputs([f"s3://{bucket}/in/*.png"], opts)
    s3_server.put(f"s3://{bucket}/docs/a/notes.txt", b"x")
    with pytest.raises(ConfigError, match=rf"^folder 's3://{bucket}/docs' holds no images: 0 "):
        sources.check_inputs([f"s3://{bucket}/docs"], opts)


@pytest.mark.parametrize("ext", [".txt", ".csv", ".parquet"])
def test_manifests_on_s3(s3_server: S3Server, bucket: str, ext: str) -> None:
    """Manifests stored on S3: relative entries resolve under the manifest's prefix."""
    opts = StorageOptions(endpoint=s3_server.endpoint)
    entries = ["sub/img_01.jpg", f"s3://{bucket}/in/b/img_02.jpg", "../in/b/img_04.jpg"]
    uri = f"s3://{bucket}/lists/m{ext}"  # outside in/, which other tests list
    if ext == ".txt":
        data = ("# a comment\n" + "\n".join(entries) + "\n").encode()
    elif ext == ".csv":
        data = ("path,label\n" + "".join(f"{e},x\n" for e in entries)).encode()
    else:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"path": entries}), sink)
        data = bytes(sink.getvalue())
    s3_server.put(uri, data)
    assert sources.check_inputs([uri], opts) == ["manifest"]
    assert [(i.id, i.path) for i in sources.iter_inputs([uri], None, opts)] == [
        ("sub/img_01.jpg", f"s3://{bucket}/lists/sub/img_01.jpg"),
        (entries[1], entries[1]),
        ("../in/b/img_04.jpg", f"s3://{bucket}/in/b/img_04.jpg"),
    ]
    if ext == ".csv":
        s3_server.put(uri, b"file,label\nx.jpg,1\n")
        with pytest.raises(ConfigError, match="has no 'path' column"):
            sources.check_inputs([uri], opts)


def test_read_batch_codes(s3_server: S3Server, bucket: str, images: Path) -> None:
    """S3 and local paths mixed in one batch: each row gets its own bytes or error code."""
    opts = StorageOptions(endpoint=s3_server.endpoint, read_concurrency=4)
    names = [f"img_{i:02d}.jpg" for i in range(1, 24, 2)]
    paths = [f"s3://{bucket}/in/a/{n}" for n in names]
    paths += [
        str(images / "b" / "img_00.jpg"),
        f"s3://{bucket}/in/a/gone.jpg",
        "s3://nobucket-x/k.jpg",
        str(images / "nope.jpg"),
    ]
    out = read_batch(items_to_batch([InputItem(str(i), p) for i, p in enumerate(paths)]), opts)
    assert list(out["id"]) == [str(i) for i in range(len(paths))]
    for i, name in enumerate(names):
        assert out["bytes"][i] == (images / "a" / name).read_bytes()
        assert out["error"][i] is None
    assert out["bytes"][12] == (images / "b" / "img_00.jpg").read_bytes()
    assert out["error"][13] == f"not_found: object not found: {paths[13]}"
    assert out["error"][14].startswith("not_found:")
    assert out["error"][15].startswith("not_found:")


def test_object_bytes_as_stored(s3_server: S3Server) -> None:
    """A key ending in .gz is not decompressed on the way: the decoder gets the stored bytes."""
    uri = f"s3://{s3_server.new_bucket()}/raw/x.gz"
    s3_server.put(uri, b"\x1f\x8b not really gzip")
    out = read_batch(items_to_batch([InputItem("x", uri)]), StorageOptions(s3_server.endpoint))
    assert (out["bytes"][0], out["error"][0]) == (b"\x1f\x8b not really gzip", None)


def test_anonymous_uri_reads(s3_server: S3Server) -> None:
    """``s3://anonymous@bucket`` sends unsigned requests: public objects only."""
    opts = StorageOptions(endpoint=s3_server.endpoint)
    name = s3_server.new_bucket()
    client = s3_server.client()
    client.put_object(Bucket=name, Key="pub/x.jpg", Body=b"public", ACL="public-read")  # type: ignore[attr-defined]
    client.put_object(Bucket=name, Key="pub/y.jpg", Body=b"private")  # type: ignore[attr-defined]
    items = list(sources.iter_inputs([f"s3://anonymous@{name}/pub"], None, opts))
    assert [i.path for i in items] == [
        f"s3://anonymous@{name}/pub/x.jpg",
        f"s3://anonymous@{name}/pub/y.jpg",
    ]
    assert read_batch(items_to_batch(items[:1]), opts)["bytes"][0] == b"public"
    with pytest.raises(StorageAuthError, match="anonymous@ sends no credentials"):
        read_batch(items_to_batch(items[1:]), opts)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_part_writer_on_s3(s3_server: S3Server, fmt: str) -> None:
    """Parts land on their final keys in one upload each; ids and statuses read back."""
    opts = StorageOptions(endpoint=s3_server.endpoint)
    out = f"s3://{s3_server.new_bucket()}/res"
    outdir.prepare_output_dir(out, resume=False, overwrite=False, storage_options=opts)
    outdir.write_manifest(out, {"runs": []}, opts)
    proxy = FaultProxy(s3_server.endpoint)
    via_proxy = StorageOptions(endpoint=proxy.url)
    writer = sinks.PartWriter(out, fmt, part_rows=2, run_id="r1", storage_options=via_proxy)
    table = pa.table(
        {
            "id": ["x", "y", "z"],
            "path": ["p1", "p2", "p3"],
            "status": ["ok", "error", "ok"],
            "error": [None, "corrupt: bad", None],
            "width": pa.array([1, None, 3], pa.int32()),
            "height": pa.array([1, None, 3], pa.int32()),
            "label": ["a", None, "b"],
            "score": pa.array([0.5, None, 0.25], pa.float32()),
            "topk_ids": pa.array([[1], None, [2]], pa.list_(pa.int32())),
            "topk_labels": pa.array([["a"], None, ["b"]], pa.list_(pa.string())),
            "topk_scores": pa.array([[0.5], None, [0.25]], pa.list_(pa.float32())),
        },
        schema=get_task("classify").schema(),
    )
    with proxy:
        writer.add(table.slice(0, 2))
        writer.add(table.slice(2))
        writer.close()
    ext = sinks.EXTENSIONS[fmt]
    bucket_path = out.removeprefix("s3:/")
    keys = s3_server.keys(out)
    assert keys[0] == "_manifest.json" and len(keys) == 3
    # Each name carries the run, the part's number, its row count and CRC-32.
    parts = [outdir.PART_RE.match(k) for k in keys[1:]]
    assert [(m["run"], m["seq"], m["rows"], m["ext"]) for m in parts] == [
        ("r1", "00000", "2", ext),
        ("r1", "00001", "1", ext),
    ]
    # one PUT per part, straight to its final key
    assert dict(proxy.requests) == {("PUT", f"{bucket_path}/{k}"): 1 for k in keys[1:]}
    written = outdir.read_written(out, opts)
    assert written.ids == {"x", "y", "z"} and dict(written.statuses) == {"ok": 2, "error": 1}
    assert outdir.read_manifest(out, opts) == {"runs": []}
    assert outdir.read_manifest(f"s3://{s3_server.new_bucket()}/none", opts) is None


def test_part_write_failure_is_one_clear_error(s3_server: S3Server) -> None:
    """A part that still cannot be uploaded after the retries stops the run in one line."""
    out = f"s3://{s3_server.new_bucket()}/res"
    with FaultProxy(s3_server.endpoint, lambda method, path: 503 if method == "PUT" else None) as p:
        opts = StorageOptions(p.url, max_attempts=2)
        writer = sinks.PartWriter(out, "parquet", part_rows=1, run_id="r2", storage_options=opts)
        with pytest.raises(OutputDirError, match=r"cannot write .*SLOW_DOWN during PutObject"):
            writer.add(_one_row())
        (put,) = {path for method, path in p.requests if method == "PUT"}
        assert put.startswith(f"{out.removeprefix('s3:/')}/part-r2-00000-n1-c")
        assert p.count("PUT", put) == 2
    assert s3_server.keys(out) == []


def _one_row() -> pa.Table:
    row = {"id": "x", "path": "p", "status": "error", "error": "corrupt: x"}
    return pa.Table.from_pylist([row], schema=get_task("classify").schema())


# --- whole runs --------------------------------------------------------------------------


def test_cli_s3_in_and_out_matches_local(
    s3_server: S3Server, bucket: str, images: Path, model_args: list[str], tmp_path: Path
) -> None:
    """The same files, local and on S3, give the same rows; the output is read back from S3."""
    local_out = tmp_path / "local"
    _ok(run_cli("run", str(images), "-o", str(local_out), *model_args, *SMALL, "-j", "1", "-q"))
    out_uri = f"s3://{bucket}/out/run1"
    proc = run_cli(
        "run", f"s3://{bucket}/in", "-o", out_uri, *model_args, *SMALL, "-j", "1", "-q",
        "--s3-endpoint", s3_server.endpoint,
    )  # fmt: skip
    _ok(proc)
    assert "ok 24, error 1, skipped 3" in proc.stdout

    fs = _s3fs(s3_server.endpoint)
    remote = pq.read_table(f"{bucket}/out/run1", filesystem=fs)  # _manifest.json is skipped
    local = pq.read_table(local_out)
    assert _rows(remote) == _rows(local)
    assert _rows(remote)["a/corrupt.jpg"][:2] == ("error", "truncated")
    assert set(remote.column("path").to_pylist()) == {
        f"s3://{bucket}/in/{i}" for i in remote.column("id").to_pylist()
    }
    r = remote.sort_by("id").column("topk_scores").to_pylist()
    lo = local.sort_by("id").column("topk_scores").to_pylist()
    assert len(r) == len(lo) == 25
    assert all(
        (a is None and b is None) or np.allclose(a, b, atol=1e-5)
        for a, b in zip(r, lo, strict=True)
    )

    keys = s3_server.keys(out_uri)
    assert "_manifest.json" in keys and all(k.startswith(("part-", "_manifest")) for k in keys)
    assert not any(k.startswith(".") for k in keys)  # no temporaries on S3
    manifest_text = fs.open_input_stream(f"{bucket}/out/run1/_manifest.json").read().decode()
    manifest = json.loads(manifest_text)
    assert manifest["status"] == "complete" and manifest["counts"]["ok"] == 24
    assert manifest["s3_endpoint"] == s3_server.endpoint
    assert "testing-secret" not in manifest_text


def test_s3_manifest_with_s3_paths_via_env_endpoint(
    s3_server: S3Server,
    bucket: str,
    model_args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A manifest stored on S3, listing s3:// URIs and relative keys; endpoint from the env."""
    manifest = "\n".join(
        [
            f"s3://{bucket}/in/a/img_01.jpg",
            "in/b/img_02.jpg",  # relative to the manifest's prefix
            f"s3://{bucket}/in/a/missing.jpg",
            "in/a/corrupt.jpg",
        ]
    )
    s3_server.put(f"s3://{bucket}/list.txt", manifest.encode())
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    out = tmp_path / "out"
    proc = run_cli(
        "run", f"s3://{bucket}/list.txt", "-o", str(out), *model_args, *SMALL, "-j", "0", "-q"
    )
    assert proc.returncode == 3, proc.stderr  # 2 of 4 failed: above --max-error-rate
    rows = _rows(pq.read_table(out))
    assert {k: v[:2] for k, v in rows.items()} == {
        f"s3://{bucket}/in/a/img_01.jpg": ("ok", None),
        "in/b/img_02.jpg": ("ok", None),
        f"s3://{bucket}/in/a/missing.jpg": ("error", "not_found"),
        "in/a/corrupt.jpg": ("error", "truncated"),
    }
    written = json.loads((out / "_manifest.json").read_text())
    assert written["s3_endpoint"] == s3_server.endpoint


def test_s3_output_refuse_overwrite_resume(
    s3_server: S3Server, bucket: str, tiny_checkpoint: tuple[Path, Path]
) -> None:
    opts = StorageOptions(endpoint=s3_server.endpoint)
    inputs, out = [f"s3://{bucket}/in/a"], f"s3://{bucket}/out/ow"
    cfg = _config(tiny_checkpoint, inputs, out, s3_endpoint=s3_server.endpoint, part_rows=4)
    first = batchvision.run(cfg)
    assert (first.ok, first.error) == (12, 1)
    parts = [k for k in s3_server.keys(out) if k.startswith("part-")]
    assert len(parts) == 2  # batches of 8 commit at 4+ rows: 8 + 5

    with pytest.raises(OutputDirError, match="is not empty"):
        batchvision.run(cfg)

    # --resume after losing one part redoes exactly its rows.
    storage.delete_object(f"{out}/{parts[0]}", opts)
    resumed = batchvision.run(
        _config(tiny_checkpoint, inputs, out, s3_endpoint=s3_server.endpoint, resume=True)
    )
    assert resumed.already_done == 5 and resumed.processed == 8
    written = outdir.read_written(out, opts)
    ids = [i for p in outdir.data_files(out, opts) for i in outdir._read_ids_statuses(p, opts)[0]]
    assert len(ids) == len(set(ids)) == 13 == len(written.ids)
    assert outdir.read_manifest(out, opts)["counts"] == {
        "ok": 12,
        "error": 1,
        "rows_written": 13,
        "skipped": 0,
    }

    # --overwrite deletes batchvision's own objects only, and refuses a prefix with others.
    again = batchvision.run(
        _config(tiny_checkpoint, inputs, out, s3_endpoint=s3_server.endpoint, overwrite=True)
    )
    assert again.processed == 13
    assert len(outdir.read_written(out, opts).ids) == 13
    assert len([k for k in s3_server.keys(out) if k.startswith("part-")]) == 1
    s3_server.put(f"{out}/notes/mine.txt", b"user data")
    with pytest.raises(OutputDirError, match=r"did not write \(notes/mine.txt\)"):
        batchvision.run(
            _config(tiny_checkpoint, inputs, out, s3_endpoint=s3_server.endpoint, overwrite=True)
        )
    assert "notes/mine.txt" in s3_server.keys(out)
    with pytest.raises(OutputDirError, match="bucket 'no-such-bucket' does not exist"):
        batchvision.run(
            _config(
                tiny_checkpoint, inputs, "s3://no-such-bucket/o", s3_endpoint=s3_server.endpoint
            )
        )


def _put_lease(s3_server: S3Server, out: str, host: str, pid: int, expires_in_s: float) -> None:
    expires = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=expires_in_s)
    body = {
        "host": host,
        "pid": pid,
        "run_id": "other",
        "started_at": "2026-01-01T00:00:00+00:00",
        "expires_at": expires.isoformat(),
    }
    s3_server.put(f"{out}/{outlock.LOCK_NAME}", json.dumps(body).encode())


def test_s3_lease_one_writer_takeover_and_damaged_part(
    s3_server: S3Server,
    bucket: str,
    tiny_checkpoint: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    opts = StorageOptions(endpoint=s3_server.endpoint)
    inputs, out = [f"s3://{bucket}/in/a"], f"s3://{bucket}/out/lease"
    kw: dict[str, object] = {"s3_endpoint": s3_server.endpoint, "part_rows": 4}

    # A live run elsewhere holds the lease: refused in one line naming it, nothing written.
    _put_lease(s3_server, out, "elsewhere", 4242, 3600)
    for extra in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(OutputDirError) as info:
            batchvision.run(_config(tiny_checkpoint, inputs, out, **kw, **extra))
        assert "in use by another batchvision run (pid 4242 on host elsewhere, started " in str(
            info.value
        )
    assert s3_server.keys(out) == [outlock.LOCK_NAME]

    # Same host, not expired, but its process is gone: taken over. While the run goes on,
    # the lease names this process; at the end it is removed.
    dead = subprocess.Popen(["true"])
    dead.wait()
    _put_lease(s3_server, out, socket.gethostname(), dead.pid, 3600)
    held: list[dict[str, object]] = []

    def progress(_: object) -> None:
        if not held:
            held.append(json.loads(storage.read_object(f"{out}/{outlock.LOCK_NAME}", opts)))

    with caplog.at_level(logging.WARNING, logger="batchvision"):
        first = batchvision.run(_config(tiny_checkpoint, inputs, out, **kw), progress=progress)
    assert (first.ok, first.error) == (12, 1)
    assert any("took over the output lease" in r.getMessage() for r in caplog.records)
    assert held and held[0]["pid"] == os.getpid() and held[0]["host"] == socket.gethostname()
    assert outlock.LOCK_NAME not in s3_server.keys(out)

    # A lease past its expiry is taken over too; --resume then finds a damaged part (cut to
    # 500 bytes), sets it aside and writes its rows again.
    _put_lease(s3_server, out, "elsewhere", 4242, -5)
    parts = [k for k in s3_server.keys(out) if k.startswith("part-")]
    data = storage.read_object(f"{out}/{parts[0]}", opts)
    s3_server.put(f"{out}/{parts[0]}", data[:500])
    resumed = batchvision.run(_config(tiny_checkpoint, inputs, out, resume=True, **kw))
    lost = int(outdir.PART_RE.match(parts[0])["rows"])  # type: ignore[index]
    assert lost > 0 and (resumed.already_done, resumed.processed) == (13 - lost, lost)
    keys = s3_server.keys(out)
    assert f"_damaged-{parts[0]}" in keys and parts[0] not in keys
    assert outlock.LOCK_NAME not in keys
    ids = [i for p in outdir.data_files(out, opts) for i in outdir._read_ids_statuses(p, opts)[0]]
    assert len(ids) == len(set(ids)) == 13


def test_s3_lease_renewed_and_a_lost_lease_stops_the_writer(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outlock, "LEASE_SECONDS", 2.0)  # renewed every 0.5 s
    opts = StorageOptions(endpoint=s3_server.endpoint)
    out = f"s3://{s3_server.new_bucket()}/o"
    uri = f"{out}/{outlock.LOCK_NAME}"

    def expiry() -> str:
        return str(json.loads(storage.read_object(uri, opts))["expires_at"])

    def wait_until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline
            time.sleep(0.05)

    with outlock.hold(out, "r1", opts) as lock:
        first = expiry()
        wait_until(lambda: expiry() != first)  # renewed while held
        _put_lease(s3_server, out, "elsewhere", 1, 3600)  # someone replaced it

        def lost() -> bool:
            try:
                lock.check()
            except OutputDirError:
                return True
            return False

        wait_until(lost)
        writer = sinks.PartWriter(
            out, "parquet", part_rows=1, storage_options=opts, guard=lock.check
        )
        with pytest.raises(OutputDirError, match="lost its lock on --output"):
            writer.add(_one_row())
    assert s3_server.keys(out) == [outlock.LOCK_NAME]  # nothing written; theirs is kept
    assert json.loads(storage.read_object(uri, opts))["host"] == "elsewhere"


# --- faults ------------------------------------------------------------------------------


def test_transient_errors_retried_then_error_row(
    s3_server: S3Server, bucket: str, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    flaky, dead = f"/{bucket}/in/a/img_03.jpg", f"/{bucket}/in/a/img_05.jpg"
    faults = [RESET, 503]  # a reset connection, then SlowDown, then the real answer

    def fault(method: str, path: str) -> int | None:
        if path == dead:
            return 503
        if path == flaky and method == "GET" and faults:
            return faults.pop(0)
        return None

    with FaultProxy(s3_server.endpoint, fault) as proxy:
        cfg = _config(
            tiny_checkpoint, [f"s3://{bucket}/in/a"], str(tmp_path / "out"),
            s3_endpoint=proxy.url, s3_max_attempts=3,
        )  # fmt: skip
        summary = batchvision.run(cfg)
        assert proxy.count("GET", flaky) == 3  # two failures, then the read that worked
        assert proxy.count("HEAD", dead) == 3  # max_attempts, then given up
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    assert rows["img_03.jpg"]["status"] == "ok"
    assert rows["img_05.jpg"]["status"] == "error"
    assert rows["img_05.jpg"]["error"].startswith("unreadable: failed after 3 attempts: ")
    assert "503" in rows["img_05.jpg"]["error"]
    assert (summary.ok, summary.error_codes) == (11, {"truncated": 1, "unreadable": 1})


def test_auth_failure_stops_before_output(
    s3_server: S3Server,
    bucket: str,
    model_args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """moto enforcing auth: the fake keys are unknown, so S3 answers InvalidAccessKeyId."""
    from moto import settings

    out = f"s3://{bucket}/auth-out"
    with monkeypatch.context() as mp:
        mp.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        proc = run_cli(
            "run", f"s3://{bucket}/in", "-o", out, *model_args, "-q",
            "--s3-endpoint", s3_server.endpoint,
        )  # fmt: skip
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "batchvision: error: S3 refused access to s3://"
    ), lines
    # A HEAD has no body to say which: moto's InvalidAccessKeyId shows as ACCESS_DENIED.
    assert "AWS Error ACCESS_DENIED during HeadObject" in lines[0]
    assert "check the AWS credentials" in lines[0]
    assert s3_server.keys(out) == []  # checked before the output was touched


def test_auth_failure_mid_run_in_worker(
    s3_server: S3Server, bucket: str, model_args: list[str], tmp_path: Path
) -> None:
    """A 403 on one object, read in a DataLoader worker, stops the run with the clean error."""
    denied = f"/{bucket}/in/b/img_10.jpg"

    def fault(method: str, path: str) -> int | None:
        return 403 if path == denied else None

    out = tmp_path / "o"
    with FaultProxy(s3_server.endpoint, fault) as proxy:
        proc = run_cli(
            "run", f"s3://{bucket}/in", "-o", str(out), *model_args, *SMALL, "-q",
            "-j", "1", "-b", "4", "--part-rows", "4", "--s3-endpoint", proxy.url,
        )  # fmt: skip
        assert proxy.count("HEAD", denied) == 1  # not retried: it would fail again
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "DataLoader" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"batchvision: error: S3 refused access to s3:/{denied} at {proxy.url}: "
    )
    # The rows done before it are committed, so --resume continues once access is fixed.
    assert len(pq.read_table(out)) >= 4


def test_object_larger_than_max_file_bytes_is_refused_from_its_size(s3_server: S3Server) -> None:
    """--max-file-bytes on S3: the size (HEAD) decides before any byte is fetched."""
    bucket = s3_server.new_bucket()
    uri = f"s3://{bucket}/big/x.jpg"
    s3_server.put(uri, b"\xff" * 5000)
    opts = StorageOptions(endpoint=s3_server.endpoint)
    batch = items_to_batch([InputItem("x", uri)])
    out = read_batch(batch, opts, max_bytes=4999)
    assert out["bytes"][0] is None
    assert out["error"][0] == (
        f"too_large: object is 5000 bytes, more than --max-file-bytes 4999: {uri}"
    )
    assert read_batch(batch, opts, max_bytes=5000)["bytes"][0] == b"\xff" * 5000
