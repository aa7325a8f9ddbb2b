"""Copy the next batch to the device while the model runs on this one.

The local engine's batches arrive in pinned host memory; copying batch ``i + 1`` on a side
CUDA stream while batch ``i`` is computed on the default stream hides the copy. On CPU
there is nothing to overlap and the engine does not use this; the look-ahead logic itself
runs on any device (the tests run it on CPU).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

Batch = dict[str, Any]


def prefetch_to_device(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """Yield ``batches`` in order, each ``image`` tensor already on ``device``.

    The copy of a batch is started (non-blocking, on a side stream for CUDA) before the
    previous batch is handed out, so it overlaps the consumer's work on that one. At most
    one batch is held ahead.
    """
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    pending: Batch | None = None
    for batch in batches:
        staged = _stage(batch, device, stream)
        if pending is not None:
            yield _ready(pending, stream)
        pending = staged
    if pending is not None:
        yield _ready(pending, stream)


def _stage(batch: Batch, device: torch.device, stream: Any) -> Batch:
    image = batch.get("image")
    if not isinstance(image, torch.Tensor) or image.device == device:
        return batch
    if stream is None:
        return {**batch, "image": image.to(device)}
    with torch.cuda.stream(stream):
        return {**batch, "image": image.to(device, non_blocking=True)}


def _ready(batch: Batch, stream: Any) -> Batch:
    if stream is not None:
        current = torch.cuda.current_stream(stream.device)
        current.wait_stream(stream)  # the copy is done before the model reads it
        image = batch.get("image")
        if isinstance(image, torch.Tensor) and image.is_cuda:
            # Its memory was allocated on the side stream; tell the allocator the default
            # stream uses it too, so it is not reused before the model is done with it.
            image.record_stream(current)
    return batch
