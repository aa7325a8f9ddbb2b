"""Heap trimming: the housekeeping that keeps a long run's resident memory flat.

The counting is tested with a stand-in trim; what a trim does to a real heap, in a fresh
process. tests/e2e/test_memory.py measures the engine's memory over many images."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from batchvision import memory


def test_trimmer_trims_once_every_n_images(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: calls.append)
    trim = memory.HeapTrimmer(every=3)
    for _ in range(10):
        trim()  # one image a call
    assert calls == [0, 0, 0] and trim.trims == 3 and trim.calls == 10
    # Counted in images, not calls: batches of 8 against every=64 trim every 8th batch,
    # batches of 128 every batch.
    small, large = memory.HeapTrimmer(), memory.HeapTrimmer()
    for _ in range(32):
        small(8)
        large(128)
    assert memory.TRIM_EVERY_IMAGES == 64 and small.trims == 4 and large.trims == 32


def test_no_malloc_trim_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    assert memory.release_free_memory() is False
    trim = memory.HeapTrimmer(every=1)
    trim()
    assert (trim.calls, trim.trims) == (1, 0)
    with pytest.raises(ValueError, match="every must be >= 1"):
        memory.HeapTrimmer(every=0)


# Runs in a fresh interpreter: the heap of a pytest process holds too much else.
_FRAGMENT_AND_TRIM = """
import json, sys
from batchvision import memory

def anon_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("RssAnon:"))

size = int(sys.argv[1])  # not a constant: the compiler would fold b"x" * 2000 into one object
trim = memory.HeapTrimmer(every=4)
base = anon_mb()
blocks = [b"x" * size for _ in range(50_000)]  # 100 MB of heap chunks, below mmap's threshold
pin = b"y" * size  # allocated last: the freed chunks cannot shrink the heap from its top
held = anon_mb()
del blocks
trim(3)  # 3 of 4 images: no trim yet
freed = anon_mb()
trim(1)
print(json.dumps({"base": base, "held": held, "freed": freed, "trimmed": anon_mb(),
                  "trims": trim.trims}))
"""


def test_trim_hands_freed_heap_pages_back_to_the_system() -> None:
    if memory._malloc_trim() is None:
        pytest.skip("malloc_trim is glibc's")
    proc = subprocess.run(
        [sys.executable, "-c", _FRAGMENT_AND_TRIM, "2000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    mb = json.loads(proc.stdout)
    assert mb["held"] - mb["base"] > 80, mb
    # Freed, the chunks stay resident (what makes a long run's memory grow) until the trim.
    assert mb["freed"] - mb["base"] > 80, mb
    assert mb["trims"] == 1 and mb["trimmed"] - mb["base"] < 20, mb
