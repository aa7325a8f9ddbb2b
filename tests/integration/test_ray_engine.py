"""The Ray engine on a real local Ray instance: parity with the local engine, bad inputs,
a killed predictor actor, and the public ``batchvision.ray`` callables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pytest

import batchvision
from batchvision.config import RunConfig
from batchvision.errors import OutputDirError
from tests.unit import odd_images

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.timeout(240)

BATCH = 8
#: Samples in each shard that tests.integration.test_shards.pack writes.
PER_SHARD_IN_TEST = 8
#: file name -> (bytes, the error code it must give)
BAD_FILES = {
    "bad/text.jpg": (odd_images.TEXT, "not_image"),
    "bad/empty.jpg": (b"", "empty"),
    "bad/cut.jpg": (
        odd_images.truncated(odd_images.encode(odd_images.photo(300, 200), "JPEG"), 0.3),
        None,  # truncated or decode_failed, whatever the local engine says
    ),
    "bad/scan.jpg": (odd_images.jpeg_random_scan(), None),
    "bad/huffman.jpg": (odd_images.jpeg_undefined_huffman_table(), None),
}


@pytest.fixture(scope="module")
def mixed_dir(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photo_dir's 24 JPEGs plus damaged and non-image files."""
    root = tmp_path_factory.mktemp("mixed")
    for sub in ("a", "b"):
        shutil.copytree(photo_dir / sub, root / sub)
    for name, (data, _) in BAD_FILES.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _config(inputs: tuple[str, ...], out: Path, tiny: tuple[Path, Path], **kw: Any) -> RunConfig:
    ckpt, labels = tiny
    settings: dict[str, Any] = {
        "model": "mobilenet_v3_small",
        "weights": str(ckpt),
        "labels": str(labels),
        "precision": "fp32",  # no bf16 rounding between the engines
        "batch_size": BATCH,
        "top_k": 3,
        "part_rows": BATCH,
    }
    return RunConfig(inputs=inputs, output=str(out), **{**settings, **kw})


def read_rows(out: Path) -> dict[str, dict[str, Any]]:
    """Rows by id; fails on a repeated id."""
    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "an id was written more than once"
    return by_id


def _code(row: dict[str, Any]) -> str | None:
    return None if row["error"] is None else row["error"].split(":", 1)[0]


def assert_same_rows(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> None:
    assert a.keys() == b.keys()
    for i, ra in a.items():
        rb = b[i]
        for col in ("path", "status", "error", "width", "height", "label", "topk_labels"):
            assert ra[col] == rb[col], (i, col, ra[col], rb[col])
        assert ra["topk_ids"] == rb["topk_ids"], i
        if ra["status"] == "ok":
            np.testing.assert_allclose(ra["topk_scores"], rb["topk_scores"], rtol=1e-4, atol=2e-5)
            np.testing.assert_allclose(ra["score"], rb["score"], rtol=1e-4, atol=2e-5)
        else:
            assert ra["score"] is None and rb["score"] is None


@pytest.fixture(scope="module")
def engine_runs(
    ray_local: str,
    mixed_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """The local and the Ray engine on the same folder: summaries and rows."""
    out: dict[str, Any] = {}
    for engine in ("local", "ray"):
        dest = tmp_path_factory.mktemp(f"out_{engine}")
        kw: dict[str, Any] = {"workers": 1} if engine == "local" else {}
        cfg = _config((str(mixed_dir),), dest, tiny_checkpoint, engine=engine, overwrite=True, **kw)
        out[engine] = (batchvision.run(cfg), read_rows(dest))
    return out


def test_engine_parity(engine_runs: dict[str, Any], mixed_dir: Path) -> None:
    (local_sum, local_rows), (ray_sum, ray_rows) = engine_runs["local"], engine_runs["ray"]
    expected = {p.relative_to(mixed_dir).as_posix() for p in mixed_dir.rglob("*.jpg")}
    assert set(ray_rows) == expected
    assert_same_rows(local_rows, ray_rows)
    assert (ray_sum.ok, ray_sum.error) == (local_sum.ok, local_sum.error) == (24, len(BAD_FILES))
    assert ray_sum.error_codes == local_sum.error_codes
    assert ray_sum.device == "cpu" and ray_sum.precision == "fp32"
    assert ray_sum.stage_seconds["inference"] > 0 and ray_sum.stage_seconds["decode"] > 0
    # fp32 sums differ in the last bits with thread count and batch composition: hence the
    # small tolerances. Predictions are not constant: the comparison above could have failed.
    assert len({r["label"] for r in ray_rows.values() if r["status"] == "ok"}) > 1


def test_bad_inputs_are_error_rows_as_in_local(engine_runs: dict[str, Any]) -> None:
    _, rows = engine_runs["ray"]
    for name, (_, code) in BAD_FILES.items():
        row = rows[name]
        assert row["status"] == "error" and row["label"] is None and row["topk_ids"] is None
        if code is not None:
            assert _code(row) == code, (name, row["error"])
        assert row["error"].split(":", 1)[0] in {"truncated", "corrupt", "decode_failed", code}


def test_missing_file_in_manifest(
    ray_local: str,
    photo_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """A manifest entry whose file is gone is one not_found row in both engines."""
    photos = sorted(photo_dir.rglob("*.jpg"))[:5]
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join([*map(str, photos), str(tmp_path / "gone.jpg")]) + "\n")
    rows = {}
    for engine in ("local", "ray"):
        kw: dict[str, Any] = {"workers": 0} if engine == "local" else {}
        cfg = _config((str(manifest),), tmp_path / engine, tiny_checkpoint, engine=engine, **kw)
        summary = batchvision.run(cfg)
        assert (summary.ok, summary.error) == (5, 1)
        assert summary.error_codes == {"not_found": 1}
        rows[engine] = read_rows(tmp_path / engine)
    assert_same_rows(rows["local"], rows["ray"])


def test_killed_predictor_actor_is_replaced_and_its_batch_retried(
    ray_local: str,
    photo_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "actor-died"
    monkeypatch.setenv("BATCHVISION_FAULT_INJECT", f"predictor_exit_once:{marker}")
    out = tmp_path / "out"
    summary = batchvision.run(
        _config((str(photo_dir),), out, tiny_checkpoint, engine="ray", batch_size=4)
    )
    # The hook fired: an actor process exited in the middle of a batch...
    assert marker.exists() and int(marker.read_text()) > 0
    # ...and Ray replaced it and retried that batch: every id exactly once.
    rows = read_rows(out)
    expected = {p.relative_to(photo_dir).as_posix() for p in photo_dir.rglob("*.jpg")}
    assert set(rows) == expected
    assert (summary.ok, summary.error) == (24, 0)
    assert all(r["status"] == "ok" and r["label"] for r in rows.values())
    # Ray itself did it: the driver's duplicate guard never had to drop a row.
    assert "already has" not in caplog.text


def test_public_callables_in_a_users_pipeline(
    engine_runs: dict[str, Any], mixed_dir: Path, tiny_checkpoint: tuple[Path, Path]
) -> None:
    """batchvision.ray.Decoder/Predictor in a plain ray.data pipeline give the engine's rows."""
    import batchvision.ray as bvr

    ckpt, labels = tiny_checkpoint
    spec, weights = bvr.resolve("mobilenet_v3_small", str(ckpt), labels=str(labels))
    paths = sorted(str(p) for p in mixed_dir.rglob("*.jpg"))
    ds = ray.data.from_items([{"path": p} for p in paths])
    ds = ds.map_batches(bvr.Decoder(spec.preprocess), batch_size=5)
    ds = ds.map_batches(
        bvr.Predictor,
        fn_constructor_kwargs={
            "spec": spec,
            "state_dict": weights,
            "options": bvr.PredictOptions(precision="fp32", top_k=3),
        },
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=5,
    )
    got = {r["path"]: r for r in ds.take_all()}
    _, engine_rows = engine_runs["ray"]
    assert set(got) == set(paths)
    for row in engine_rows.values():
        mine = got[row["path"]]
        assert mine["status"] == row["status"]
        if row["status"] == "ok":
            assert mine["label"] == row["label"]
            assert list(mine["topk_labels"]) == row["topk_labels"]
            np.testing.assert_allclose(
                mine["topk_scores"], row["topk_scores"], rtol=1e-4, atol=2e-5
            )
        else:
            assert mine["error"] == row["error"]


def test_public_predictor_resolves_its_own_model(
    ray_local: str, photo_dir: Path, tiny_checkpoint: tuple[Path, Path]
) -> None:
    """Constructor kwargs alone (model, weights, labels) are enough for a user's pipeline."""
    import batchvision.ray as bvr

    ckpt, labels = tiny_checkpoint
    paths = sorted(str(p) for p in photo_dir.rglob("*.jpg"))[:6]
    ds = ray.data.from_items([{"id": f"x{i}", "path": p} for i, p in enumerate(paths)])
    ds = ds.map_batches(bvr.Decoder(model="mobilenet_v3_small", weights=str(ckpt)), batch_size=3)
    ds = ds.map_batches(
        bvr.Predictor,
        fn_constructor_kwargs={
            "model": "mobilenet_v3_small",
            "weights": str(ckpt),
            "labels": str(labels),
            "options": bvr.PredictOptions(top_k=2),
        },
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=3,
    )
    rows = ds.take_all()
    assert sorted(r["id"] for r in rows) == [f"x{i}" for i in range(6)]
    names = set(labels.read_text().split())
    for r in rows:
        assert r["status"] == "ok" and r["label"] in names and len(r["topk_labels"]) == 2
        assert r["topk_scores"][0] >= r["topk_scores"][1] > 0


def test_resume_of_a_finished_run_does_nothing(
    ray_local: str, photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = batchvision.run(_config((str(photo_dir),), out, tiny_checkpoint, engine="ray"))
    again = batchvision.run(
        _config((str(photo_dir),), out, tiny_checkpoint, engine="ray", resume=True)
    )
    assert (first.ok, again.processed, again.already_done) == (24, 0, 24)
    assert len(read_rows(out)) == 24


def test_oom_halving_and_batch_size_auto(
    ray_local: str,
    engine_runs: dict[str, Any],
    mixed_dir: Path,
    photo_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An (injected) OOM in the actors halves their batches and loses no row; ``auto`` is
    resolved once, in a task with the actors' resources; both are in the manifest."""
    import json

    from batchvision.stages.batching import INJECT_OOM_ENV

    _, local_rows = engine_runs["local"]
    monkeypatch.setenv(INJECT_OOM_ENV, "3")
    out = tmp_path / "oom"
    summary = batchvision.run(_config((str(mixed_dir),), out, tiny_checkpoint, engine="ray"))
    rows = read_rows(out)
    assert (summary.ok, summary.error) == (24, len(BAD_FILES))
    assert_same_rows(local_rows, rows)  # every id once, the same predictions
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    assert run["batch_size"] == 2  # 8 -> 4 -> 2 in the actors
    assert run["batch_size_search"] is None

    monkeypatch.setenv(INJECT_OOM_ENV, "16")
    out = tmp_path / "auto"
    cfg = _config((str(photo_dir),), out, tiny_checkpoint, engine="ray", batch_size="auto")
    summary = batchvision.run(cfg)
    expected = {p.relative_to(photo_dir).as_posix() for p in photo_dir.rglob("*.jpg")}
    assert set(read_rows(out)) == expected and summary.ok == 24
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    assert run["batch_size"] == run["batch_size_search"]["size"]
    assert 8 <= run["batch_size"] <= 16


def test_odd_files_and_names_give_the_local_engines_rows(
    ray_local: str, photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    """A FIFO, a symlink to /dev/zero, an oversized file and a Latin-1 name through Ray's
    decode tasks: no hang, no crash, the same rows as the local engine, and resume."""
    import os

    root = tmp_path / "in"
    root.mkdir()
    photos = sorted(photo_dir.rglob("*.jpg"))[:3]
    for p in photos:
        shutil.copy(p, root / p.name)
    with open(os.fsencode(root) + b"/latin1_\xe9.jpg", "wb") as f:
        f.write(photos[0].read_bytes())
    os.mkfifo(root / "x.jpg")
    (root / "zero.png").symlink_to("/dev/zero")
    (root / "huge.jpg").write_bytes(b"\xff" * 400_001)
    limits = {"max_file_bytes": 400_000, "max_error_rate": 1.0}
    local = read_rows_of(
        batchvision.run(_config((str(root),), tmp_path / "local", tiny_checkpoint, **limits))
    )
    ray_out = tmp_path / "ray"
    first = batchvision.run(_config((str(root),), ray_out, tiny_checkpoint, engine="ray", **limits))
    rows = read_rows(ray_out)
    assert_same_rows(rows, local)
    assert rows["file:latin1_%E9.jpg"]["status"] == "ok"
    assert rows["file:latin1_%E9.jpg"]["path"] == f"file://{root}/latin1_%E9.jpg"
    assert {i: _code(r) for i, r in rows.items() if r["status"] != "ok"} == {
        "x.jpg": "not_a_file",
        "zero.png": "not_a_file",
        "huge.jpg": "too_large",
    }
    again = batchvision.run(
        _config((str(root),), ray_out, tiny_checkpoint, engine="ray", resume=True, **limits)
    )
    assert (first.processed, again.processed, again.already_done) == (7, 0, 7)


def read_rows_of(summary: Any) -> dict[str, dict[str, Any]]:
    return read_rows(Path(summary.output))


def _manifest(photo_dir: Path, tmp_path: Path) -> Path:
    spec = tmp_path / "inputs.txt"
    spec.write_text("".join(f"{p}\n" for p in sorted(photo_dir.rglob("*.jpg"))))
    return spec


def _parts(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("part-*"))


def test_a_unit_committed_before_its_worker_died_is_not_written_twice(
    ray_local: str,
    photo_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = tmp_path / "died-after-commit"
    monkeypatch.setenv("BATCHVISION_FAULT_INJECT", f"unit_exit_after_commit_once:{marker}")
    out = tmp_path / "out"
    spec = _manifest(photo_dir, tmp_path)
    summary = batchvision.run(_config((str(spec),), out, tiny_checkpoint, engine="ray"))
    # The worker ended after committing a unit's part and before replying: Ray ran the
    # unit again on a new worker, whose part took the same name.
    assert marker.exists()
    assert len(read_rows(out)) == 24  # every id once
    assert len(_parts(out)) == 24 // BATCH
    assert (summary.ok, summary.error) == (24, 0)


def test_resume_skips_committed_units_without_reading_them(
    ray_local: str, photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    spec = _manifest(photo_dir, tmp_path)
    batchvision.run(_config((str(spec),), out, tiny_checkpoint, engine="ray"))
    parts = _parts(out)
    assert [p.split("-")[1:3] for p in parts] == [["u000", f"{k:08d}"] for k in range(3)]
    # One unit lost (as if killed before its commit), another's bytes replaced: resume
    # redoes the lost unit alone, and never reads the committed ones (a reader would fail).
    (out / parts[1]).unlink()
    (out / parts[2]).write_bytes(b"not read by --resume")
    again = batchvision.run(_config((str(spec),), out, tiny_checkpoint, engine="ray", resume=True))
    assert (again.ok, again.already_done) == (BATCH, 24 - BATCH)
    assert _parts(out) == parts
    assert (out / parts[2]).read_bytes() == b"not read by --resume"
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["ok"] == 24 and manifest["status"] == "complete"


def test_resume_refuses_inputs_that_changed(
    ray_local: str, photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    spec = _manifest(photo_dir, tmp_path)
    batchvision.run(_config((str(spec),), out, tiny_checkpoint, engine="ray"))
    lines = spec.read_text().splitlines()
    spec.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # two swapped
    with pytest.raises(OutputDirError, match=r"the inputs of unit 000-00000000 .* changed"):
        batchvision.run(_config((str(spec),), out, tiny_checkpoint, engine="ray", resume=True))


def test_outputs_resume_across_engines_where_they_can(
    ray_local: str, photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    spec = _manifest(photo_dir, tmp_path)
    # The local engine resumes by id, so it finishes a Ray run's output...
    out = tmp_path / "from_ray"
    batchvision.run(_config((str(spec),), out, tiny_checkpoint, engine="ray"))
    (out / _parts(out)[0]).unlink()
    done = batchvision.run(_config((str(spec),), out, tiny_checkpoint, resume=True))
    assert (done.ok, done.already_done) == (BATCH, 24 - BATCH)
    assert len(read_rows(out)) == 24
    # ...but the Ray engine resumes by unit, and says so of a local engine's output.
    out = tmp_path / "from_local"
    batchvision.run(_config((str(spec),), out, tiny_checkpoint))
    with pytest.raises(OutputDirError, match=r"was written by the local engine .* --engine local"):
        batchvision.run(_config((str(spec),), out, tiny_checkpoint, engine="ray", resume=True))


def test_shards_in_both_engines_and_a_damaged_one_resumed(
    ray_local: str, photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    """WebDataset and Parquet shards (one cut short) give the same rows in both engines,
    kept columns included; the Ray engine's --resume reads the damaged shard again."""
    from tests.integration.test_shards import pack

    packed = pack(photo_dir, tmp_path / "packed")
    cut = packed["wds"] / "00002.tar"
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 3])
    inputs = (str(packed["wds"]), str(packed["pq"]))
    got = {}
    for engine in ("local", "ray"):
        cfg = _config(
            inputs,
            tmp_path / engine,
            tiny_checkpoint,
            engine=engine,
            keep_columns=("txt", "caption"),
            max_error_rate=1.0,
        )
        got[engine] = (batchvision.run(cfg), read_rows(tmp_path / engine))
    (local, local_rows), (ray_run, ray_rows) = got["local"], got["ray"]
    assert (ray_run.ok, ray_run.error) == (local.ok, local.error)
    assert local.error == 1 and 24 < local.ok < 48  # the cut shard's row; its samples read
    assert ray_rows.keys() == local_rows.keys()
    assert ray_rows["00000.parquet#3"]["caption"] and ray_rows["00000.parquet#3"]["txt"] is None
    assert ray_rows["00002.tar"]["error"].startswith("shard_truncated: ")
    for ident, row in local_rows.items():
        assert ray_rows[ident]["txt"] == row["txt"] and ray_rows[ident]["caption"] == row["caption"]
    ok = {i: r for i, r in local_rows.items() if r["status"] == "ok"}
    assert_same_rows(ok, {i: ray_rows[i] for i in ok})

    cut.write_bytes(whole)
    again = batchvision.run(
        _config(
            inputs,
            tmp_path / "ray",
            tiny_checkpoint,
            engine="ray",
            resume=True,
            keep_columns=("txt", "caption"),
        )
    )
    assert again.error == 0 and again.ok == PER_SHARD_IN_TEST
    final = read_rows(tmp_path / "ray")
    assert "00002.tar" not in final and len(final) == 48
