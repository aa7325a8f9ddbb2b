"""Keeping a long run's memory flat: hand freed heap memory back to the system.

A batch loop allocates and frees large blocks (decoded images, activations) between small
allocations that live on (rows, Python objects). glibc's malloc then keeps the freed
space as fragmented heap, and resident memory grows with the number of images although
nothing is leaked: measured on the local engine, about 50-1,300 KB per image depending on
the decoding threads, i.e. gigabytes for 20,000 images. ``malloc_trim`` returns those free
pages: called every 64 images (every 2 batches of 32), the local engine's peak RSS for
20,000 images came within 5% of that for 1,000 (it was 2.55x; docs/benchmarks.md).
Counting images rather than batches keeps trims as rare with small batches as with large
ones: each trim makes the next batch fault its freed pages back in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
        return trim  # glibc only; musl and macOS lack it
    except OSError:
        return None


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; ``False`` where the C library can't."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


#: Images between two trims.
TRIM_EVERY_IMAGES = 64


class HeapTrimmer:
    """Calls :func:`release_free_memory` once at least ``every`` images have gone by."""

    def __init__(self, every: int = TRIM_EVERY_IMAGES) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.calls = 0
        self.trims = 0
        self._images = 0

    def __call__(self, images: int = 1) -> None:
        """Count ``images`` more (a batch's worth); trim when ``every`` have accumulated."""
        self.calls += 1
        self._images += images
        if self._images >= self.every:
            self._images = 0
            if release_free_memory():
                self.trims += 1
