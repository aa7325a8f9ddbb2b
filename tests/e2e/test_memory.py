"""Flat memory, measured: the local engine's peak memory does not follow the image count.

Each measurement runs ``batchvision.run`` in a fresh process (tests/memory_child.py) on
``SMALL`` and then on ``LARGE`` images (the same photo-like JPEGs, hard-linked under
distinct names: what grows is the number of inputs and rows) while this process samples
the anonymous resident memory of the run's process and of its decode workers. The peak
may grow by less than ``BOUND_KB_PER_IMAGE`` per extra image.

Anonymous memory (``RssAnon``) rather than all of RSS: RSS also counts the mapped pages
of torch's shared libraries, which depend on the state of the page cache: the RSS peaks
of identical runs on the 2-core test machine ranged from 817 to 1,027 MB, while the
anonymous peaks of repeated runs stay within about 4 MB. A leak is anonymous memory.

Both decoding plans the CPU runs: decoding on threads of the model's process (the default
without a GPU; the workers only read) and decoding in the worker processes (the default
with a GPU), so both processes' heap trims (batchvision.memory) are under test. A last
test injects a 100 KB/image leak to show that the bound catches one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchvision.bench.procmem import kill_tree, process_tree
from batchvision.bench.runner import link_farm, write_manifest
from batchvision.demo import synth

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads /proc (Linux only)"
)

CHILD = Path(__file__).parents[1] / "memory_child.py"
#: Past the first batches' warm-up (the model process's memory climbs for several
#: batches before its plateau), then 512 images more.
SMALL, LARGE = 192, 704
BATCH = 16
#: Allowed growth of a peak per extra image. Measured (2 cores, tiny model, 64x64 input):
#: 1 to 8 KB/image for the model's process, under 1 KB/image for the workers; the
#: injected leak of 100 KB/image gives 100 in the model's process and 100 summed over
#: the workers.
BOUND_KB_PER_IMAGE = 40
SAMPLE_S = 0.02
TIMEOUT_S = 180


@dataclass
class Peaks:
    """One run's peaks of anonymous resident memory (KiB), and its counts."""

    images: int
    main_kb: int
    workers_kb: int
    ok: int
    error: int


def anon_kb(pid: int) -> int:
    """``RssAnon`` of ``pid`` in KiB (0 for a process that has gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class AnonSampler(threading.Thread):
    """Peaks of the root process's anonymous memory and of the sum over its descendants."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.main_kb = self.workers_kb = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        samples = 0
        while not self.stopped.is_set():
            if samples % 10 == 0:  # listing every process is slower than reading a few
                workers = process_tree(self.root)[1:]
            self.main_kb = max(self.main_kb, anon_kb(self.root))
            self.workers_kb = max(self.workers_kb, sum(anon_kb(p) for p in workers))
            samples += 1
            self.stopped.wait(SAMPLE_S)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Manifests of ``SMALL`` and ``LARGE`` images: 32 JPEGs of varied sizes, repeated."""
    root = tmp_path_factory.mktemp("flat_memory")
    rng = np.random.default_rng(7)
    originals = []
    for i in range(32):
        size = (int(rng.integers(160, 480)), int(rng.integers(160, 480)))
        path = root / f"photo_{i:02d}.jpg"
        synth.photo_like(rng, size).save(path, quality=90)
        originals.append(str(path))
    farm = link_farm(originals, LARGE, root / "farm")
    out = {}
    for n in (SMALL, LARGE):
        out[n] = root / f"images-{n}.txt"
        write_manifest(out[n], farm[:n])
    return out


def measure(
    manifest: Path,
    tmp_path: Path,
    checkpoint: tuple[Path, Path],
    decode_threads: int | None,
    leak_kb: int = 0,
) -> Peaks:
    """Run the local engine over ``manifest`` in a fresh process; its peaks and counts."""
    weights, labels = checkpoint
    n = len(manifest.read_text().splitlines())
    params: dict[str, Any] = {
        "inputs": [str(manifest)],
        "output": str(tmp_path / f"out-{n}-{leak_kb}"),
        "model": "mobilenet_v3_small",
        "weights": str(weights),
        "labels": str(labels),
        "device": "cpu",
        "batch_size": BATCH,
        "workers": 2,  # the same on any machine (the default is one per core)
        "decode_threads": decode_threads,
        "part_rows": 64,  # rows wait in memory until a part is written: the same bound
        "preprocess": {"resize_size": 64, "crop_size": 64},  # a faster model, same pipeline
        "leak_kb": leak_kb,
    }
    result = tmp_path / f"result-{n}-{leak_kb}.json"
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(params), str(result)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    sampler = AnonSampler(proc.pid)
    sampler.start()
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise
    finally:
        sampler.stopped.set()
        sampler.join()
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    counts = json.loads(result.read_text())
    return Peaks(n, sampler.main_kb, sampler.workers_kb, counts["ok"], counts["error"])


def growth_kb_per_image(small: Peaks, large: Peaks) -> dict[str, float]:
    """How much each peak grew per extra image, in KiB."""
    extra = large.images - small.images
    return {
        "model process": (large.main_kb - small.main_kb) / extra,
        "decode workers": (large.workers_kb - small.workers_kb) / extra,
    }


def describe(small: Peaks, large: Peaks) -> str:
    return (
        f"{small.images} images: model process {small.main_kb / 1024:.1f} MB, workers "
        f"{small.workers_kb / 1024:.1f} MB; {large.images} images: "
        f"{large.main_kb / 1024:.1f} MB, {large.workers_kb / 1024:.1f} MB"
    )


@pytest.mark.parametrize(
    "decode_threads", [None, 0], ids=["decode-in-model-process", "decode-in-workers"]
)
def test_peak_memory_does_not_grow_with_the_image_count(
    manifests: dict[int, Path],
    tmp_path: Path,
    tiny_checkpoint: tuple[Path, Path],
    decode_threads: int | None,
) -> None:
    small = measure(manifests[SMALL], tmp_path, tiny_checkpoint, decode_threads)
    large = measure(manifests[LARGE], tmp_path, tiny_checkpoint, decode_threads)
    assert (small.ok, small.error, large.ok, large.error) == (SMALL, 0, LARGE, 0)
    # Real processes were measured: a model process, and decode workers beside it.
    assert small.main_kb > 50 * 1024 and large.workers_kb > 10 * 1024, describe(small, large)
    for who, kb in growth_kb_per_image(small, large).items():
        assert kb < BOUND_KB_PER_IMAGE, (
            f"{who}: peak anonymous memory grew {kb:.1f} KB per image "
            f"(bound {BOUND_KB_PER_IMAGE}); {describe(small, large)}"
        )


def test_the_bound_catches_a_leak_of_100_kb_per_image(
    manifests: dict[int, Path], tmp_path: Path, tiny_checkpoint: tuple[Path, Path]
) -> None:
    small = measure(manifests[SMALL], tmp_path, tiny_checkpoint, 0, leak_kb=100)
    large = measure(manifests[LARGE], tmp_path, tiny_checkpoint, 0, leak_kb=100)
    assert (small.ok, large.ok) == (SMALL, LARGE)
    growth = growth_kb_per_image(small, large)
    # Each process keeps 100 KB for every image it counted (the workers share theirs).
    assert all(kb > BOUND_KB_PER_IMAGE for kb in growth.values()), (growth, describe(small, large))
    assert growth["model process"] == pytest.approx(100, abs=BOUND_KB_PER_IMAGE / 2)
