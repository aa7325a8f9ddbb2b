"""Batch sizes that fit the device: out-of-memory detection and the ``--batch-size auto`` search.

The predictor splits a batch that runs out of device memory and retries the same rows in
halves (see ``Predictor.logits``); ``--batch-size auto`` times the model on synthetic input
at doubling batch sizes, once per run, and keeps the size past which throughput stops
improving or memory runs out.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from batchvision.stages.predict import Predictor

logger = logging.getLogger(__name__)

#: Test hook: ``N`` makes the predictor raise ``torch.cuda.OutOfMemoryError`` for every model
#: call on more than ``N`` images, on any device, so the out-of-memory handling runs on
#: CPU in tests. Never set it in production.
INJECT_OOM_ENV = "BATCHVISION_INJECT_OOM_ABOVE"

#: ``--batch-size auto``: first size tried, largest size tried and time budget, per device type.
SEARCH_START = {"cpu": 8, "cuda": 32}
SEARCH_LIMIT = {"cpu": 256, "cuda": 4096}
SEARCH_BUDGET_S = {"cpu": 15.0, "cuda": 60.0}
#: A doubling must raise throughput by more than this fraction to be kept.
MIN_GAIN = 0.05


def injected_oom_limit() -> int | None:
    """The test hook's ``N`` from the environment, or ``None``."""
    value = os.environ.get(INJECT_OOM_ENV)
    if not value:
        return None
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"{INJECT_OOM_ENV}={value!r} is not valid; give an integer >= 0") from None
    if limit < 0:
        raise ValueError(f"{INJECT_OOM_ENV}={value!r} is not valid; give an integer >= 0")
    return limit


#: How the CUDA libraries report a failed allocation of their own workspace (cuBLAS,
#: cuDNN, nvJPEG): torch raises these as plain RuntimeErrors, not OutOfMemoryError.
_ALLOC_FAILURES = (
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cudnn_status_not_enough_workspace",
    "nvjpeg_status_allocator_failure",
)


#: torchvision reports nvJPEG's status as a number ("nvjpegDecodeBatched failed: 5"):
#: 5 is ``NVJPEG_STATUS_ALLOCATOR_FAILURE``.
_NVJPEG_ALLOC_FAILED = re.compile(r"nvjpeg\w* failed: 5\b")


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is a device out-of-memory error (CUDA's, or a backend's or CUDA
    library's RuntimeError)."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    message = str(e).lower()
    return isinstance(e, RuntimeError) and (
        any(s in message for s in _ALLOC_FAILURES) or bool(_NVJPEG_ALLOC_FAILED.search(message))
    )


def free_cached_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back after an out-of-memory error."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class BatchSearch:
    """What ``--batch-size auto`` measured: the chosen size and every trial."""

    size: int
    #: ``(batch size, images/s)`` per trial, in order; images/s is 0 where memory ran out.
    trials: tuple[tuple[int, float], ...] = field(default_factory=tuple)
    seconds: float = 0.0

    def as_record(self) -> dict[str, object]:
        """The manifest's ``batch_size_search`` record."""
        return {
            "size": self.size,
            "trials": [{"batch_size": b, "images_per_second": round(r, 2)} for b, r in self.trials],
            "seconds": round(self.seconds, 3),
        }


def search_batch_size(
    run: Callable[[int], None],
    *,
    start: int,
    limit: int,
    budget_s: float,
    iterations: int = 2,
    min_gain: float = MIN_GAIN,
    clock: Callable[[], float] = time.perf_counter,
    on_oom: Callable[[], None] = lambda: None,
) -> BatchSearch:
    """The batch size with the best throughput, by doubling from ``start``.

    Each size runs once to warm up (and to find out whether it fits), then ``iterations``
    timed runs. The search stops at the first size that runs out of memory, that does not
    raise throughput by more than ``min_gain`` over the best so far, that exceeds ``limit``,
    or once ``budget_s`` has passed; the best size so far is kept. If ``start`` itself does
    not fit, it is halved until a size fits.

    Args:
        run: runs the model once on a batch of the given size (synchronised).

    Raises:
        the out-of-memory error when even a batch of 1 does not fit.
    """
    t_start = clock()
    trials: list[tuple[int, float]] = []
    size = max(1, min(start, limit))
    best, best_rate = 0, 0.0
    while size <= limit:
        try:
            run(size)
            t0 = clock()
            for _ in range(iterations):
                run(size)
            rate = size * iterations / max(clock() - t0, 1e-9)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            on_oom()
            trials.append((size, 0.0))
            if best or size == 1:
                if not best:
                    raise
                break
            size //= 2  # nothing fits yet: go down, not up
            limit = size
            continue
        trials.append((size, rate))
        if best and rate <= best_rate * (1 + min_gain):
            break
        best, best_rate = size, rate
        if clock() - t_start > budget_s:
            break
        size *= 2
    return BatchSearch(size=max(1, best), trials=tuple(trials), seconds=clock() - t_start)


@torch.inference_mode()
def find_batch_size(
    predictor: Predictor,
    start: int | None = None,
    limit: int | None = None,
    budget_s: float | None = None,
) -> BatchSearch:
    """``--batch-size auto``: the batch size with the best throughput that fits.

    Times ``predictor``'s model on synthetic uint8 input of the model's input size, on the device,
    at doubling sizes (see :func:`search_batch_size`); defaults depend on the device type.
    """
    kind = predictor.device.type if predictor.device.type in SEARCH_START else "cpu"
    h, w = predictor.input_size()
    gen = torch.Generator(device="cpu").manual_seed(0)
    sample = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=gen)
    sample = sample.to(predictor.device)

    def run(n: int) -> None:
        predictor._logits(sample.expand(n, h, w, 3).contiguous(), trial=True)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize(predictor.device)

    search = search_batch_size(
        run,
        start=start or SEARCH_START[kind],
        limit=limit or SEARCH_LIMIT[kind],
        budget_s=SEARCH_BUDGET_S[kind] if budget_s is None else budget_s,
        on_oom=lambda: free_cached_memory(predictor.device),
    )
    free_cached_memory(predictor.device)
    logger.info(
        "--batch-size auto: %d on %s (%s) in %.1f s",
        search.size,
        predictor.device,
        ", ".join(f"{b}: {r:.0f} img/s" if r else f"{b}: out of memory" for b, r in search.trials),
        search.seconds,
    )
    return search
