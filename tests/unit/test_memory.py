"""Heap trimming: the housekeeping that keeps a long run's resident memory flat."""

from __future__ import annotations

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
