"""The Ray engine from the command line: option validation, and kill -9 then --resume."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from batchvision.cli import main
from batchvision.demo import synth
from tests.conftest import run_cli
from tests.processes import descendants, survivors, title

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
    titles: list[str] = []
    try:
        deadline = time.monotonic() + WAIT_S
        while len(_parts(out)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no part file written in time"
            time.sleep(0.05)
        tree = descendants(proc.pid)  # its local Ray instance: GCS, raylet, agents, workers
        titles = [title(p) for p in tree]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:  # failed before the kill: leave nothing behind
            tree = descendants(proc.pid)
            proc.kill()
            proc.wait()
            survivors(tree, within=0)
        if proc.stderr:
            proc.stderr.close()
    assert any("raylet" in t for t in titles), "the driver started no Ray instance?"
    # Nothing here kills them: they must end by themselves (the survivors are killed after).
    assert not survivors(tree, within=30), "the killed driver's Ray processes live on"

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


N_LISTED = 4_000


@pytest.fixture(scope="module")
def long_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text manifest of 4,000 images (links to 4 small JPEGs): long enough that a run
    ignoring a signal would go on well after it; the model's work, not the driver's
    writing, takes most of the time, as in a real run."""
    root = tmp_path_factory.mktemp("long_manifest")
    rng = np.random.default_rng(8)
    (root / "base").mkdir()
    (root / "img").mkdir()
    for i in range(4):
        synth.photo_like(rng, (96, 96)).save(root / "base" / f"b{i}.jpg", "JPEG", quality=85)
    lines = []
    for i in range(N_LISTED):
        name = f"img/im_{i:05d}.jpg"
        (root / name).symlink_to(root / "base" / f"b{i % 4}.jpg")
        lines.append(name)
    (root / "inputs.txt").write_text("\n".join(lines) + "\n")
    return root / "inputs.txt"


def _ignore_sigint() -> None:
    # What a shell without job control gives a background job (a wrapper script's
    # ``batchvision ... &``): SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "sigint"]
)
def test_a_signal_to_the_driver_alone_stops_the_run(
    long_manifest: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    signum: int,
    code: int,
) -> None:
    """As a scheduler or a wrapper script sends it: to the driver process only, which was
    started with SIGINT ignored (a background job of a script). It stops within seconds,
    writes the completed rows, ends its Ray instance and prints the command that resumes."""
    ckpt, labels = tiny_checkpoint
    out = tmp_path / "out"
    args = [
        "run",
        str(long_manifest),
        "-m",
        "mobilenet_v3_small",
        "-w",
        str(ckpt),
        "--labels",
        str(labels),
        "--resize-size",
        "64",
        "--crop-size",
        "64",
        "-o",
        str(out),
        "--engine",
        "ray",
        "-b",
        "16",
        "--part-rows",
        "16",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchvision", *args, "-q"],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint if signum == signal.SIGINT else _default_sigint,
    )
    tree: set[int] = set()
    try:
        deadline = time.monotonic() + WAIT_S
        while not _parts(out):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no part file written in time"
            time.sleep(0.05)
        tree = descendants(proc.pid)
        os.kill(proc.pid, signum)
        stdout, stderr = proc.communicate(timeout=60)  # not the minutes the rest would take
    finally:
        if proc.poll() is None:
            tree |= descendants(proc.pid)
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, (stdout, stderr)
    assert "Traceback" not in stdout + stderr
    assert not survivors(tree, within=30), "the driver's Ray processes outlived it"

    written = _ids(out)
    # Ray itself may print a "(raylet) Task ... failed" line about the actors it ended.
    summary = re.search(r"^(\d+) images in ", stdout, re.MULTILINE)
    assert summary, stdout
    processed = int(summary.group(1))
    assert 0 < processed < N_LISTED
    assert len(written) == len(set(written)) == processed  # every completed row is written
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["runs"][-1]["rows_written"] == processed
    lines = stdout.splitlines()
    command = shlex.split(lines[lines.index("interrupted; to finish, run:") + 1])
    assert command[1:] == [*args, "-q", "--resume"]

    # The local engine finishes the rest sooner on 2 cores; resuming works across engines.
    command[command.index("--engine") + 1] = "local"
    done = run_cli(*command[1:], timeout=240)
    assert done.returncode == 0, done.stderr
    assert f"already done {processed}" in done.stdout
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == N_LISTED
    assert set(ids) == set(long_manifest.read_text().split())


def test_an_unreachable_cluster_fails_in_one_line_before_the_output_exists(
    many_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt, labels = tiny_checkpoint
    out = tmp_path / "out"
    args = ["run", str(many_dir), "-m", "mobilenet_v3_small", "-w", str(ckpt)]
    args += ["--labels", str(labels), "-o", str(out), "--engine", "ray", "-q"]
    done = run_cli(*args, "--ray-address", "127.0.0.1:1", "--ray-connect-timeout", "5", timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("batchvision: error: --ray-address '127.0.0.1:1': no Ray ")
    assert "within 5 s" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # no retries printed
    assert not out.exists(), "the output folder was touched"


class _Silent(socketserver.BaseRequestHandler):
    def handle(self) -> None:  # accepts, reads, never answers: not a Ray cluster
        with contextlib.suppress(OSError):
            while self.request.recv(65536):
                pass


def test_a_listener_that_is_not_ray_fails_in_bounded_time_in_one_line(
    many_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    """The TCP check passes (something listens), so ray.init itself must give up: by
    default Ray tries 20 times, about 41 s each, printing three warnings a try."""
    ckpt, labels = tiny_checkpoint
    out = tmp_path / "out"
    args = ["run", str(many_dir), "-m", "mobilenet_v3_small", "-w", str(ckpt)]
    args += ["--labels", str(labels), "-o", str(out), "--engine", "ray", "-q"]
    # All interfaces: Ray may connect to this host's own IP address for 127.0.0.1.
    with socketserver.ThreadingTCPServer(("0.0.0.0", 0), _Silent) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        address = f"127.0.0.1:{server.server_address[1]}"
        try:
            args += ["--ray-address", address, "--ray-connect-timeout", "3"]
            done = run_cli(*args, timeout=90)
        finally:
            server.shutdown()
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        f"batchvision: error: --ray-address {address!r}: cannot attach to a Ray cluster ("
    ), done.stderr
    assert "GCS address (port 6379 unless changed)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # Ray's warnings set aside
    assert not out.exists(), "the output folder was touched"


def test_ray_client_without_its_package_gives_the_install_command(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    many_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    ray_local: str,
) -> None:
    """Checked even while this process is attached to a Ray instance (as a library user's may
    be): the setup is wrong whatever the state of this process."""
    ckpt, labels = tiny_checkpoint
    out = tmp_path / "out"
    monkeypatch.setitem(sys.modules, "grpc", None)  # import grpc -> ImportError
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = ["run", str(many_dir), "-m", "mobilenet_v3_small", "-w", str(ckpt)]
    args += ["--labels", str(labels), "-o", str(out), "--engine", "ray"]
    code, err = _cli(capsys, *args, "--ray-address", "ray://127.0.0.1:1")
    assert code == 2
    assert err.strip() == (
        "batchvision: error: --ray-address 'ray://127.0.0.1:1' needs Ray Client, which is "
        "not installed: pip install 'ray[client]'"
    )
    assert not out.exists()
