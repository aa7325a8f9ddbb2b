"""The look-ahead that overlaps host-to-device copies with compute, run on CPU."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from batchvision.engines.prefetch import prefetch_to_device

CPU = torch.device("cpu")


def _source(n: int, pulled: list[int]) -> Iterator[dict[str, Any]]:
    for i in range(n):
        pulled.append(i)
        yield {"id": i, "image": torch.full((2, 4, 4, 3), i, dtype=torch.uint8)}


def test_yields_every_batch_in_order_one_ahead() -> None:
    pulled: list[int] = []
    seen = []
    for batch in prefetch_to_device(_source(5, pulled), CPU):
        # The next batch was already taken (and its copy started) before this one came out.
        assert pulled[-1] == min(batch["id"] + 1, 4)
        assert int(batch["image"][0, 0, 0, 0]) == batch["id"]
        assert batch["image"].device == CPU
        seen.append(batch["id"])
    assert seen == [0, 1, 2, 3, 4]


def test_batches_without_an_image_tensor_pass_through() -> None:
    batches = [{"_fatal": ValueError("x")}, {"image": "not a tensor"}, {"id": 3}]
    out = list(prefetch_to_device(iter(batches), CPU))
    assert out == batches


def test_empty_and_single() -> None:
    assert list(prefetch_to_device(iter([]), CPU)) == []
    pulled: list[int] = []
    assert [b["id"] for b in prefetch_to_device(_source(1, pulled), CPU)] == [0]


def test_moves_images_to_another_device_type() -> None:
    # The meta device stands in for a GPU: the staged copy lands on it, other keys stay.
    meta = torch.device("meta")
    batch = {"id": 0, "image": torch.zeros((1, 2, 2, 3), dtype=torch.uint8)}
    (out,) = list(prefetch_to_device(iter([batch]), meta))
    assert out["image"].device.type == "meta"
    assert out["id"] == 0
    assert batch["image"].device == CPU  # the input batch is not modified


class _RecordingCuda:
    """Stands in for ``torch.cuda``: records the stream and event calls in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.events = 0

    def Stream(self, device: torch.device) -> str:
        return "side"

    def stream(self, stream: str) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def Event(self) -> Any:
        calls, n = self.calls, self.events
        self.events += 1

        class Event:
            def record(self, stream: str) -> None:
                assert stream == "side"
                calls.append(("record", n))

        event = Event()
        event.n = n  # type: ignore[attr-defined]
        return event

    def current_stream(self, device: torch.device) -> Any:
        calls = self.calls

        class Current:
            def wait_event(self, event: Any) -> None:
                calls.append(("wait_event", event.n))

            def wait_stream(self, stream: Any) -> None:
                calls.append(("wait_stream", -1))

        return Current()


def test_the_model_waits_for_its_own_batch_copy_only() -> None:
    # The copy of batch k+1 is queued (its event recorded) before batch k is handed out:
    # batch k must wait for its own event, never for the whole side stream.
    cuda = _RecordingCuda()
    meta = torch.device("meta")
    pulled: list[int] = []
    handed = []
    for batch in prefetch_to_device(_source(3, pulled), meta, cuda=cuda):
        cuda.calls.append(("use", batch["id"]))
        handed.append(batch["id"])
    assert handed == [0, 1, 2]
    assert cuda.calls == [
        ("record", 0),
        ("record", 1),  # batch 1's copy queued before batch 0 is used
        ("wait_event", 0),
        ("use", 0),
        ("record", 2),
        ("wait_event", 1),
        ("use", 1),
        ("wait_event", 2),
        ("use", 2),
    ]


def test_an_out_of_memory_copy_leaves_the_batch_on_the_host(monkeypatch, caplog) -> None:
    import batchvision.engines.prefetch as prefetch

    freed: list[bool] = []

    def free(device: torch.device) -> None:
        # Called outside the except block: no exception is being handled any more, so the
        # failed copy's frames (and the memory they hold) are already released.
        import sys

        freed.append(sys.exc_info()[0] is None)

    monkeypatch.setattr(prefetch, "free_cached_memory", free)
    real_to = torch.Tensor.to

    def to(self: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
        if args and args[0] == torch.device("meta") and self.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_to(self, *args, **kw)

    monkeypatch.setattr(torch.Tensor, "to", to)
    small = {"id": 0, "image": torch.zeros((1, 2, 2, 3), dtype=torch.uint8)}
    big = {"id": 1, "image": torch.ones((4, 2, 2, 3), dtype=torch.uint8)}
    out = list(prefetch_to_device(iter([small, big]), torch.device("meta"), cuda=_RecordingCuda()))
    assert out[0]["image"].device.type == "meta"
    assert out[1]["image"].device == CPU and int(out[1]["image"].sum()) == 48  # kept as it was
    assert freed == [True]
    assert "out of memory on meta copying a batch of 4 image(s)" in caplog.text
