"""Copy the next batch to the device while the model runs on this one.

The local engine's batches arrive in pinned host memory; copying batch ``i + 1`` on a side
CUDA stream while batch ``i`` is computed on the default stream hides the copy. Each copy
records an event on the side stream, and the model's stream waits for that event only
(``wait_event``): waiting for the side stream instead (``wait_stream``) would also wait for
the copy of batch ``i + 1``, queued there before batch ``i`` is handed out, and the copy
would no longer overlap anything. On CPU there is nothing to overlap and the engine does
not use this; the look-ahead logic itself runs on any device, and the stream and event
calls go through an object the tests replace with a recording fake.

A copy that runs out of device memory leaves its batch in host memory: the predictor then
copies it piece by piece, at the size its own out-of-memory halving has reached.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from batchvision.stages.batching import free_cached_memory, is_out_of_memory

logger = logging.getLogger(__name__)

Batch = dict[str, Any]


def prefetch_to_device(
    batches: Iterable[Batch], device: torch.device, cuda: Any = None
) -> Iterator[Batch]:
    """Yield ``batches`` in order, each ``image`` tensor already on ``device``.

    The copy of a batch is started (non-blocking, on a side stream for CUDA) before the
    previous batch is handed out, so it overlaps the consumer's work on that one. At most
    one batch is held ahead.

    Args:
        batches: host batches (``image`` pinned for an asynchronous copy).
        device: where the model runs.
        cuda: what provides ``Stream``, ``stream``, ``current_stream`` and ``Event``
            (``torch.cuda``; the tests pass a recording fake).
    """
    cuda = cuda if cuda is not None else (torch.cuda if device.type == "cuda" else None)
    stream = cuda.Stream(device) if cuda is not None else None
    pending: tuple[Batch, Any] | None = None
    for batch in batches:
        staged = _stage(batch, device, stream, cuda)
        if pending is not None:
            yield _ready(*pending, cuda)
        pending = staged
    if pending is not None:
        yield _ready(*pending, cuda)


def _stage(batch: Batch, device: torch.device, stream: Any, cuda: Any) -> tuple[Batch, Any]:
    """``batch`` with its copy queued, and the event recorded after the copy (or None)."""
    image = batch.get("image")
    if not isinstance(image, torch.Tensor) or image.device == device:
        return batch, None
    out_of_memory = False
    try:
        if stream is None:
            return {**batch, "image": image.to(device)}, None
        with cuda.stream(stream):
            moved = image.to(device, non_blocking=True)
            event = cuda.Event()
            event.record(stream)
        return {**batch, "image": moved}, event
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        out_of_memory = True
    # Outside the handler, so the failed copy's traceback no longer holds its memory.
    if out_of_memory:
        free_cached_memory(device)
        logger.warning(
            "out of memory on %s copying a batch of %d image(s) there ahead of the model: "
            "the model takes it from host memory, in pieces if it must",
            *(device, len(image)),
        )
    return batch, None


def _ready(batch: Batch, event: Any, cuda: Any) -> Batch:
    if event is not None:
        image = batch["image"]
        current = cuda.current_stream(image.device)
        current.wait_event(event)  # this batch's copy is done before the model reads it
        if image.is_cuda:
            # Its memory was allocated on the side stream; tell the allocator the model's
            # stream uses it too, so it is not reused before the model is done with it.
            image.record_stream(current)
    return batch
