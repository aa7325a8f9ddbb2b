"""decode_ahead: the next batch decoded on a background thread, one ahead, in order; errors
raised at the consumer; an early close stops the thread; on CUDA, the event order (here
with recording fakes of torch.cuda's streams and events)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from batchvision.engines import decode_ahead as da
from batchvision.engines.decode_ahead import decode_ahead

CPU = torch.device("cpu")


def _batches(n: int | None) -> Iterator[dict]:
    counter = itertools.count() if n is None else range(n)
    for i in counter:
        yield {"i": i, "image": torch.full((2,), i)}


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "decode-ahead"]


def test_batches_come_in_order_decoded_on_another_thread() -> None:
    where: list[str] = []

    def decode(b: dict) -> dict:
        where.append(threading.current_thread().name)
        return {**b, "image": b["image"] * 10}

    out = list(decode_ahead(_batches(6), decode, CPU))
    assert [b["i"] for b in out] == list(range(6))
    assert [b["image"].tolist() for b in out] == [[10 * i, 10 * i] for i in range(6)]
    assert set(where) == {"decode-ahead"}
    assert _threads() == []


def test_at_most_one_batch_ahead() -> None:
    started: list[int] = []
    ahead: list[int] = []

    def decode(b: dict) -> dict:
        started.append(b["i"])
        return b

    for b in decode_ahead(_batches(8), decode, CPU):
        deadline = time.monotonic() + 10
        while b["i"] < 7 and max(started) <= b["i"] and time.monotonic() < deadline:
            time.sleep(0.001)  # the next one is decoded while the model works on this one
        time.sleep(0.03)  # a slow model: the thread would run further ahead if it could
        ahead.append(max(started) - b["i"])
    assert ahead == [1] * 7 + [0]


def test_an_error_in_decode_is_raised_at_its_batch() -> None:
    def decode(b: dict) -> dict:
        if b["i"] == 3:
            raise ValueError("bad batch 3")
        return b

    got: list[int] = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for b in decode_ahead(_batches(6), decode, CPU):
            got.append(b["i"])
    assert got == [0, 1, 2]
    assert _threads() == []


def test_an_error_in_the_source_is_raised_too() -> None:
    def source() -> Iterator[dict]:
        yield {"i": 0}
        raise OSError("storage went away")

    it = decode_ahead(source(), lambda b: b, CPU)
    assert next(it)["i"] == 0
    with pytest.raises(OSError, match="storage went away"):
        next(it)


def test_closing_early_stops_the_thread() -> None:
    decoded: list[int] = []

    def decode(b: dict) -> dict:
        decoded.append(b["i"])
        time.sleep(0.01)
        return b

    it = decode_ahead(_batches(None), decode, CPU)  # endless source
    assert [next(it)["i"] for _ in range(3)] == [0, 1, 2]
    it.close()
    assert _threads() == []
    assert max(decoded) <= 3  # batch 3 at most was in progress, none after it


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.current: list[object] = []  # the decode thread's stream context
        self.last_decoded = -1  # written by the decode thread only

    def add(self, *event: object) -> None:
        self.events.append((*event, threading.current_thread().name))


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, log: _Log) -> None:
    class Stream:
        def __init__(self, device: torch.device | None = None, name: str = "side") -> None:
            self.name = name

        def wait_event(self, event: Event) -> None:
            log.add("wait_event", self.name, event.batch)

    class Event:
        def record(self, stream: Stream) -> None:
            self.batch = log.last_decoded  # recorded on the decode thread, after decode
            log.add("record", stream.name, self.batch)

    class StreamContext:
        def __init__(self, stream: Stream) -> None:
            self.stream = stream

        def __enter__(self) -> None:
            log.current.append(self.stream.name)

        def __exit__(self, *exc: object) -> None:
            log.current.pop()

    model_stream = Stream(name="model")
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "stream", StreamContext)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: model_stream)
    monkeypatch.setattr(da, "keep_for", lambda t, s: log.add("keep_for", s.name, int(t[0])))


def test_cuda_the_consumer_waits_for_the_decode_streams_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = _Log()
    _fake_cuda(monkeypatch, log)

    def decode(b: dict) -> dict:
        log.add("decode", b["i"], tuple(log.current))
        log.last_decoded = b["i"]
        return b

    for b in decode_ahead(_batches(3), decode, torch.device("cuda", 0)):
        log.add("use", b["i"])

    def batch_of(event: tuple) -> object:
        return event[1] if event[0] in ("decode", "use") else event[2]

    for i in range(3):
        mine = [e for e in log.events if batch_of(e) == i]
        assert [e[0] for e in mine] == ["decode", "record", "wait_event", "keep_for", "use"]
        decoded, record, wait, keep, use = mine
        assert decoded[2] == ("side",) and decoded[-1] == "decode-ahead"  # on its stream
        assert record[1] == "side" and record[-1] == "decode-ahead"
        assert wait[1] == "model" and wait[-1] == "MainThread"
        assert keep[1] == "model" and use[-1] == "MainThread"
