"""Crash safety with real processes: kill -9 and Ctrl-C mid-run, then --resume."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import batchvision
from batchvision import PreprocessOverrides, RunConfig
from batchvision.demo import synth
from tests.conftest import run_cli, tiny_run_args
from tests.processes import descendants, survivors

N_IMAGES = 120
WAIT_S = 90.0


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # Child processes inherit this: a few shared cores, oversubscribed threads are 10x slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def many_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 small photo-like JPEGs in two folders (ids carry the sub-folder)."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(77)
    for i in range(N_IMAGES):
        path = root / ("x" if i % 3 else "y") / f"im_{i:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        size = (int(rng.integers(64, 128)), int(rng.integers(64, 128)))
        synth.photo_like(rng, size).save(path, "JPEG", quality=85)
    return root


def _expected_ids(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}


def _args(src: Path, out: Path, tiny: tuple[Path, Path]) -> list[str]:
    return tiny_run_args(src, out, tiny, workers=1)


def _default_sigint() -> None:
    # A terminal job receives Ctrl-C; a job started in the background of a shell without
    # job control (``make test &``, nohup) inherits SIGINT ignored, and Python then keeps it
    # ignored. Reset it in the child so that the test sends what a terminal sends.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ignore_sigint() -> None:
    # What a shell without job control gives a background job (``batchvision ... &`` in a
    # script, or a wrapper that starts it so): SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start(args: list[str], sigint_ignored: bool = False) -> subprocess.Popen[str]:
    """``python -m batchvision ARGS`` in its own process group (like a terminal job)."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchvision", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
        preexec_fn=_ignore_sigint if sigint_ignored else _default_sigint,
    )


def _wait_for_parts(proc: subprocess.Popen[str], out: Path, n: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(list(out.glob("part-*.parquet"))) < n:
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            pytest.fail(f"run ended (rc {proc.returncode}) before {n} parts:\n{stdout}{stderr}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"no {n} part files within {WAIT_S} s")
        time.sleep(0.01)


def _visible_ids(out: Path) -> list[str]:
    """Ids in every visible part; each part must be a complete, readable file."""
    ids: list[str] = []
    for part in sorted(out.glob("part-*.parquet")):
        table = pq.read_table(part)  # a half-written part would fail here
        assert table.num_rows > 0
        ids.extend(table.column("id").to_pylist())
    return ids


def _assert_complete(out: Path, expected: set[str]) -> None:
    table = ds.dataset(out, format="parquet").to_table()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate rows after resume"
    assert set(ids) == expected
    assert set(table.column("status").to_pylist()) == {"ok"}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete"
    runs = manifest["runs"]
    assert runs[-1]["already_done"] + runs[-1]["rows_written"] == len(expected)
    # The killed run recorded nothing, yet the totals count every row in the folder.
    assert manifest["counts"]["rows_written"] == len(expected)
    assert manifest["counts"]["ok"] == len(expected)


def test_kill_9_then_resume(
    many_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = _args(many_dir, out, tiny_checkpoint)
    proc = _start(args)
    _wait_for_parts(proc, out, 2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: DataLoader workers die too
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    before = _visible_ids(out)
    assert len(before) >= 8 and len(before) == len(set(before))
    assert len(before) < N_IMAGES, "the run finished before it could be killed"
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "running"  # the dead run never finished it

    resumed = run_cli(*args, "--resume", "-q", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"already done {len(before)}" in resumed.stdout
    assert f"ok {N_IMAGES - len(before)}, error 0" in resumed.stdout
    assert not list(out.glob(".*.tmp"))
    _assert_complete(out, _expected_ids(many_dir))
    # The killed run never recorded itself: only the resumed run is in the manifest.
    (run,) = json.loads((out / "_manifest.json").read_text())["runs"]
    assert (run["already_done"], run["rows_written"]) == (len(before), N_IMAGES - len(before))


def _check_interrupted_then_resume(stdout: str, out: Path, args: list[str]) -> None:
    """An interrupted run wrote every row it completed, once, recorded itself as
    interrupted, and printed the command that resumes it; that command finds them done."""
    written = _visible_ids(out)
    processed = int(stdout.split(" images in ", 1)[0])
    assert 1 <= processed < N_IMAGES
    assert len(written) == len(set(written)) == processed  # every completed row is written
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["runs"][-1]["rows_written"] == processed
    lines = stdout.splitlines()
    command = shlex.split(lines[lines.index("interrupted; to finish, run:") + 1])
    assert command[0] == "batchvision" and command[-1] == "--resume"
    assert command[1:-1] == args
    resumed = run_cli(*command[1:], "-q", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"already done {processed}" in resumed.stdout


def test_ctrl_c_writes_rows_and_prints_resume_command(
    many_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = _start(_args(many_dir, out, tiny_checkpoint))
    _wait_for_parts(proc, out, 1)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: main process and workers
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stdout + stderr

    _check_interrupted_then_resume(stdout, out, _args(many_dir, out, tiny_checkpoint))
    _assert_complete(out, _expected_ids(many_dir))
    assert [r["status"] for r in json.loads((out / "_manifest.json").read_text())["runs"]] == [
        "interrupted",
        "complete",
    ]


@pytest.mark.parametrize(
    ("signum", "sigint_ignored", "group", "code"),
    [
        # What Kubernetes sends first, to the main process only.
        (signal.SIGTERM, False, False, 143),
        # What Slurm sends first, to every process of the job, workers included.
        (signal.SIGTERM, False, True, 143),
        # A scheduler's or wrapper's ``kill -INT`` to a run it started in the background.
        (signal.SIGINT, True, False, 130),
    ],
    ids=["sigterm", "sigterm-to-all", "sigint-started-ignored"],
)
def test_signal_to_the_main_process_writes_rows_and_prints_resume_command(
    many_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    signum: int,
    sigint_ignored: bool,
    group: bool,
    code: int,
) -> None:
    out = tmp_path / "out"
    proc = _start(_args(many_dir, out, tiny_checkpoint), sigint_ignored=sigint_ignored)
    _wait_for_parts(proc, out, 1)
    workers = descendants(proc.pid)
    if group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)  # the main process alone, not its workers
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, (stdout, stderr)
    assert "Traceback" not in stdout + stderr
    assert not survivors(workers, within=20), "decode workers outlived the run"

    _check_interrupted_then_resume(stdout, out, _args(many_dir, out, tiny_checkpoint))
    _assert_complete(out, _expected_ids(many_dir))


def test_kill_9_of_the_main_process_ends_its_workers(
    tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    # Batches of a few large JPEGs: a worker's batch of file bytes is more than a pipe
    # holds, so with nobody left to read it the worker blocks in writing it, and a worker
    # that only checked on its parent between batches would stay forever.
    src = tmp_path / "large"
    src.mkdir()
    rng = np.random.default_rng(3)
    for i in range(60):
        synth.photo_like(rng, (640, 480)).save(src / f"im_{i:02d}.jpg", "JPEG", quality=95)
    out = tmp_path / "out"
    args = _args(src, out, tiny_checkpoint)
    args[args.index("--workers") + 1] = "2"
    args[args.index("-b") + 1] = "4"
    proc = _start(args)
    _wait_for_parts(proc, out, 1)
    workers = descendants(proc.pid)
    assert len(workers) >= 2, "no decode workers to watch"
    os.kill(proc.pid, signal.SIGKILL)  # the main process alone, as the OOM killer does
    proc.wait(timeout=30)
    left = survivors(workers, within=20)
    proc.communicate(timeout=30)  # orphaned workers would hold its output pipes open
    assert not left, "decode workers outlived the killed run"


def test_resume_with_nothing_left(
    tiny_checkpoint: tuple[Path, Path], tmp_path: Path, many_dir: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted((many_dir / "y").glob("*.jpg"))[:6]:
        (src / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    ckpt, labels = tiny_checkpoint
    first = batchvision.run(
        RunConfig(
            inputs=(str(src),),
            output=str(out),
            model="mobilenet_v3_small",
            weights=str(ckpt),
            labels=str(labels),
            preprocess=PreprocessOverrides(resize_size=64, crop_size=64),
            batch_size=2,
            workers=0,
            part_rows=4,
            top_k=2,
        )
    )
    assert first.ok == 6
    parts = {p.name: p.read_bytes() for p in out.glob("part-*")}

    proc = run_cli(*_args(src, out, tiny_checkpoint), "--resume", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("0 images in ")
    assert "ok 0, error 0, skipped 0 (hidden or not an image name), already done 6" in proc.stdout
    assert {p.name: p.read_bytes() for p in out.glob("part-*")} == parts  # no new rows
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert [r["rows_written"] for r in manifest["runs"]] == [6, 0]
    assert [r["already_done"] for r in manifest["runs"]] == [0, 6]


def _wait_for_marker(proc: subprocess.Popen[str], marker: Path) -> str:
    deadline = time.monotonic() + WAIT_S
    while not marker.exists() or not marker.read_text():
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            pytest.fail(f"run ended (rc {proc.returncode}) before the hook:\n{stdout}{stderr}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"the writer did not reach the hook within {WAIT_S} s")
        time.sleep(0.01)
    return marker.read_text()


@pytest.mark.parametrize("point", ["part_write", "part_rename"])
def test_kill_9_inside_a_parts_write_then_resume(
    many_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    point: str,
) -> None:
    """Killed with half a part in its temporary, or between its fsync and rename.

    Meanwhile a second run into the folder, fresh or ``--resume``, is refused: the first
    one holds the output's lock. Once it is dead, ``--resume`` takes the lock over.
    """
    out = tmp_path / "out"
    marker = tmp_path / "held"
    args = _args(many_dir, out, tiny_checkpoint)
    monkeypatch.setenv("BATCHVISION_FAULT_INJECT", f"{point}_hang:{marker}")
    proc = _start(args)
    tmp = Path(_wait_for_marker(proc, marker))
    monkeypatch.delenv("BATCHVISION_FAULT_INJECT")
    assert tmp.parent == out and tmp.name.startswith(".part-") and tmp.exists()
    if point == "part_rename":  # complete and synced, not yet renamed
        assert pq.read_table(tmp).num_rows == 4
    before = _visible_ids(out)
    assert len(before) == 8  # the hook holds the third part

    for extra in ([], ["--resume"]):
        second = run_cli(*args, *extra, "-q", timeout=120)
        assert second.returncode == 2, second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith(f"batchvision: error: --output {str(out)!r} is in use by")
        assert f"(pid {proc.pid} on host " in line
    assert _visible_ids(out) == before

    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert tmp.exists()  # what kill -9 leaves: a hidden temporary, never a visible part
    resumed = run_cli(*args, "--resume", "-q", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"already done {len(before)}" in resumed.stdout
    assert not list(out.glob(".*.tmp"))
    _assert_complete(out, _expected_ids(many_dir))
