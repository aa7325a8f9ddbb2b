"""The output folder as a user meets it: a full disk mid-run, an --output that cannot be."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from batchvision.demo import synth
from batchvision.io import outlock
from tests.conftest import run_cli, tiny_run_args

N = 40


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imgs40")
    rng = np.random.default_rng(3)
    for i in range(N):
        synth.photo_like(rng, (64 + i, 64)).save(root / f"im_{i:02d}.jpg", "JPEG", quality=85)
    return root


def _args(src: Path, out: Path | str, tiny: tuple[Path, Path], *extra: str) -> list[str]:
    return tiny_run_args(src, out, tiny, "-q", *extra, workers=0)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB filesystem (tmpfs), so that writes really fail with ENOSPC."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_disk_full_mid_run_stops_cleanly_then_resumes(
    images: Path, tiny_checkpoint: tuple[Path, Path], small_disk: Path
) -> None:
    # Leave room for the lock's reserve, the manifest and a few parts of 4 rows (~4 KiB each).
    filler = small_disk / "filler"
    free = 512 * 1024 - outlock.RESERVE_BYTES - 28 * 1024
    filler.write_bytes(b"\0" * free)
    out = small_disk / "out"
    args = _args(images, out, tiny_checkpoint)

    proc = run_cli(*args, timeout=120)
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("batchvision: error:")]
    assert "No space left on device (the disk or quota is full)" in line
    assert "the parts written before are complete" in line and "--resume" in line

    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no temporary, no lock
    ids: list[str] = []
    for part in sorted(out.glob("part-*.parquet")):
        ids.extend(pq.read_table(part).column("id").to_pylist())  # each part is whole
    assert 0 < len(ids) < N and len(ids) == len(set(ids))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "failed"
    run = manifest["runs"][-1]
    assert run["status"] == "failed" and "No space left on device" in run["error_message"]
    assert run["rows_written"] == len(ids)

    filler.unlink()  # space freed: the same command with --resume finishes the run
    resumed = run_cli(*args, "--resume", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    table = ds.dataset(out, format="parquet").to_table()
    all_ids = table.column("id").to_pylist()
    assert len(all_ids) == len(set(all_ids)) == N
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert [r["status"] for r in manifest["runs"]] == ["failed", "complete"]


@pytest.mark.parametrize(
    ("output", "says"),
    [
        ("{file}/out", "a part of its path is a file, not a folder"),
        ("{file}", "exists and is not a folder"),
        ("/proc/batchvision-test/out", "cannot be created"),
    ],
)
def test_output_that_cannot_be_a_folder_is_one_line(
    images: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path, output: str, says: str
) -> None:
    somefile = tmp_path / "somefile"
    somefile.write_text("not a folder\n")
    out = output.format(file=somefile)
    proc = run_cli(*_args(images, out, tiny_checkpoint), timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"batchvision: error: --output {out!r}") and says in line
    assert somefile.read_text() == "not a folder\n"
