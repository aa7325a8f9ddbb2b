"""The Ray engine from the command line: option validation, and kill -9 then --resume."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from batchvision.cli import main
from batchvision.demo import synth
from tests.conftest import run_cli

N_IMAGES = 96
WAIT_S = 120.0


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code or 0), capsys.readouterr().err


BASE = ("run", "some_dir", "-m", "resnet18", "-o", "out")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ("--engine", "ray", "--concurrency", "0"),
            "--concurrency '0' is not valid; give N (a fixed pool of N >= 1 actors) or MIN,MAX",
        ),
        (("--engine", "ray", "--concurrency", "4,2"), "--concurrency '4,2' is not valid"),
        (("--engine", "ray", "--concurrency", "two"), "--concurrency 'two' is not valid"),
        (("--engine", "ray", "--num-gpus", "-1"), "--num-gpus must be >= 0, got -1.0"),
        (("--engine", "ray", "--num-cpus", "-0.5"), "--num-cpus must be >= 0, got -0.5"),
        (
            ("--ray-address", "auto", "--concurrency", "2"),
            "--ray-address, --concurrency only apply to --engine ray, not --engine 'local'",
        ),
        (("--num-gpus", "1"), "--num-gpus only apply to --engine ray"),
        (("--engine", "spark"), "'spark' is not one of 'local', 'ray'"),
    ],
)
def test_ray_option_errors(
    capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], message: str
) -> None:
    code, err = _cli(capsys, *BASE, *flags)
    assert code == 2
    assert err.startswith("batchvision: error: ")
    assert message in err


def test_missing_ray_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchvision.engines.base import get_engine
    from batchvision.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'batchvision\[ray\]'"):
        get_engine("ray")


@pytest.fixture(scope="module")
def many_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("many_ray")
    rng = np.random.default_rng(5)
    for i in range(N_IMAGES):
        path = root / ("p" if i % 2 else "q") / f"im_{i:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        size = (int(rng.integers(64, 128)), int(rng.integers(64, 128)))
        synth.photo_like(rng, size).save(path, "JPEG", quality=85)
    return root


def _descendants(root: int) -> set[int]:
    """Every process below ``root`` (from /proc), e.g. a local Ray instance's processes."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _parts(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet"))


def _ids(out: Path) -> list[str]:
    return pads.dataset(str(out), format="parquet").to_table(columns=["id"])["id"].to_pylist()


@pytest.mark.timeout(300)
def test_kill_9_driver_then_resume(
    ray_local: str, many_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt, labels = tiny_checkpoint
    out = tmp_path / "out"
    args = [
        "run",
        str(many_dir),
        "-m",
        "mobilenet_v3_small",
        "-w",
        str(ckpt),
        "--labels",
        str(labels),
        "-o",
        str(out),
        "--engine",
        "ray",
        "-b",
        "2",
        "--part-rows",
        "2",
        "-q",
    ]
    # The killed run starts its own local Ray instance (no address given).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchvision", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    tree: set[int] = set()
    try:
        deadline = time.monotonic() + WAIT_S
        while len(_parts(out)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no part file written in time"
            time.sleep(0.05)
        tree = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        # The dead driver's Ray instance (GCS, raylet, workers) must not outlive the test.
        tree |= _descendants(proc.pid) if proc.poll() is None else set()
        for pid in [proc.pid, *tree]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.stderr:
            proc.stderr.close()
    assert tree, "the driver started no Ray processes?"
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in tree if _alive(p)]

    first = _ids(out)
    assert 0 < len(first) < N_IMAGES, "the driver was killed mid-run"
    assert len(set(first)) == len(first)

    # Resume, attached to the running test instance this time.
    done = run_cli(*args, "--resume", "--ray-address", ray_local, timeout=240)
    assert done.returncode == 0, done.stderr
    ids = _ids(out)
    assert len(ids) == N_IMAGES and len(set(ids)) == N_IMAGES
    expected = {p.relative_to(many_dir).as_posix() for p in many_dir.rglob("*.jpg")}
    assert set(ids) == expected
    assert f"already done {len(first)}" in done.stdout
