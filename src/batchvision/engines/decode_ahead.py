"""Decode the next batch on its own thread (and CUDA stream) while the model runs on this one.

torchvision's batched CUDA ``decode_jpeg`` synchronises its stream at the start and the
end of each call, under a global lock: called between model batches, it keeps the model's
thread waiting for the whole decode. :func:`decode_ahead` runs the decode on one
background thread instead, one batch ahead, so batch k+1 is decoded while the model
computes batch k.

On CUDA the thread decodes and resizes on a side stream of its own (the decoder allocates
its outputs on the caller's current stream and writes them on its own, synchronised with
the caller's at the end of the call). It records an event on that stream when a batch is
done; the consumer's stream waits for that event before using the batch, and each of the
batch's CUDA tensors is marked as used by the consumer's stream (``record_stream``), so
the allocator does not hand its memory to the side stream's next batch while the model
still reads it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

logger = logging.getLogger(__name__)

Batch = dict[str, Any]

# How long closing the iterator waits for the thread's batch in progress.
_JOIN_SECONDS = 60.0


def decode_ahead(
    batches: Iterable[Batch], decode: Callable[[Batch], Batch], device: torch.device
) -> Iterator[Batch]:
    """``decode(batch)`` for each of ``batches``, in order, computed one batch ahead.

    ``batches`` is iterated and ``decode`` run on one background thread (on CUDA, with its
    own stream), at most one batch ahead of the consumer: while the consumer holds batch
    k, only batch k+1 is being decoded or waiting, so memory stays bounded. An exception
    from ``batches`` or ``decode`` is raised here, at the batch it happened on. Closing
    the iterator early (``close()``, or dropping it) stops the thread: it finishes the
    batch in progress, if any, and takes no other.
    """
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    ready: list[tuple[str, Any]] = []  # at most one item: the gate below bounds it
    have = threading.Condition()
    gate = threading.Semaphore(1)  # taken per batch decoded; the consumer gives it back
    stop = threading.Event()

    def put(kind: str, value: Any) -> None:
        with have:
            ready.append((kind, value))
            have.notify()

    def run() -> None:
        try:
            it = iter(batches)
            while True:
                gate.acquire()
                if stop.is_set():
                    return
                batch = next(it, None)
                if batch is None:
                    break
                put("batch", _decode_on(stream, decode, batch))
            put("end", None)
        except BaseException as e:  # handed to the consumer, raised there
            put("error", e)

    thread = threading.Thread(target=run, name="decode-ahead", daemon=True)
    thread.start()
    try:
        while True:
            with have:
                have.wait_for(lambda: bool(ready))
                kind, value = ready.pop(0)
            if kind == "end":
                return
            if kind == "error":
                raise value
            out, event = value
            gate.release()  # the next batch may start while the consumer has this one
            yield _ready(out, event, device)
    finally:
        stop.set()
        gate.release()  # wakes the thread if it waits for the gate
        thread.join(_JOIN_SECONDS)
        if thread.is_alive():
            logger.warning("decode: the decode thread did not stop within %.0f s", _JOIN_SECONDS)


def _decode_on(stream: Any, decode: Callable[[Batch], Batch], batch: Batch) -> tuple[Batch, Any]:
    """``decode(batch)`` on ``stream`` (``None``: no CUDA), and the event marking its end."""
    if stream is None:
        return decode(batch), None
    with torch.cuda.stream(stream):
        out = decode(batch)
        event = torch.cuda.Event()
        event.record(stream)
    return out, event


def _ready(batch: Batch, event: Any, device: torch.device) -> Batch:
    """``batch`` made safe to use on the consumer's current stream."""
    if event is None:
        return batch
    current = torch.cuda.current_stream(device)
    current.wait_event(event)  # the decode is done before the consumer's work reads it
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            keep_for(value, current)
    return batch


def keep_for(tensor: torch.Tensor, stream: Any) -> None:
    """Mark a CUDA ``tensor``'s memory (allocated on the decode stream) as used by ``stream``."""
    if tensor.is_cuda:
        tensor.record_stream(stream)
