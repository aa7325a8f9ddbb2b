"""Model outputs back to the host without stopping the device's queue.

A task's ``predict`` may leave its columns as tensors on the model's device. Reading them
back with ``.cpu()`` would block the calling thread until the device has run everything
queued so far, so the engine could not queue the next batch until this one is done.
:func:`start_readback` instead queues non-blocking copies into pinned host memory and
records an event after them; :meth:`Readback.wait` (on whichever thread finishes the
batch) waits for that event only. On the CPU the columns are already on the host and
``wait`` returns them at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Columns = dict[str, Any]


class Readback:
    """A batch's columns on their way to the host: :meth:`wait` returns them as numpy."""

    def __init__(self, columns: Columns, event: Any = None) -> None:
        self._columns = columns
        self._event = event

    def wait(self) -> Columns:
        """The columns, numpy where they were tensors, once their copies are done."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        columns = self._columns
        return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in columns.items()}


def start_readback(
    columns: Columns,
    device: torch.device,
    *,
    new_event: Callable[[], Any] | None = None,
    host_buffer: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Readback:
    """Queue the copies of ``columns``' device tensors to the host; don't wait for them.

    Args:
        columns: a task's predicted columns: numpy arrays, or tensors on ``device``.
        device: the model's device. Off CUDA nothing is queued: tensors are read as they
            are (a CPU tensor already is host memory).
        new_event: makes the event recorded after the copies (``torch.cuda.Event``); the
            tests pass a recording fake.
        host_buffer: makes the host tensor a device tensor is copied into (pinned memory,
            so the copy is asynchronous); the tests pass a plain CPU tensor.
    """
    if device.type != "cuda":
        return Readback({k: _on_host(v) for k, v in columns.items()})
    new_event = new_event or torch.cuda.Event
    host_buffer = host_buffer or _pinned_like
    host: Columns = {}
    for k, v in columns.items():
        if isinstance(v, torch.Tensor) and v.device.type != "cpu":
            buf = host_buffer(v)
            buf.copy_(v, non_blocking=True)
            host[k] = buf
        else:
            host[k] = v
    event = new_event()
    event.record()  # on the current stream, after the copies (and the model's work)
    return Readback(host, event)


def _on_host(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.device.type != "cpu":
        return value.cpu()
    return value


def _pinned_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
