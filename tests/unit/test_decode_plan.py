"""Where the local engine decodes: the plan for each device, and a small /dev/shm."""

from __future__ import annotations

import logging

import pytest
import torch

import batchvision.engines.local as local
from batchvision.config import RunConfig
from batchvision.engines.local import DecodePlan, in_flight_bytes


def _cfg(**kw: object) -> RunConfig:
    return RunConfig(inputs=("x",), output="y", model="resnet50", **kw)  # type: ignore[arg-type]


def test_in_flight_bytes_counts_every_prefetched_batch() -> None:
    # 4 workers x 2 prefetched + 2 here, of 256 crops of 224x224x3.
    assert in_flight_bytes(4, 256, (224, 224)) == 10 * 256 * 224 * 224 * 3


def test_a_small_dev_shm_decodes_on_threads_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cuda = torch.device("cuda")  # only compared, never used
    cfg = _cfg(decode_threads=0, workers=4)
    need = in_flight_bytes(4, 256, (224, 224))  # 367 MB
    monkeypatch.setattr(local, "shm_free_bytes", lambda: 64 << 20)  # a container's default
    monkeypatch.setattr(local, "usable_cores", lambda: 6)
    with caplog.at_level(logging.WARNING):
        plan = DecodePlan.choose(cfg, cuda, need)
    assert plan == DecodePlan("threads", threads=6)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "/dev/shm has 64 MB free" in line and "need about 367 MB" in line
    assert "--shm-size=1g" in line
    # Room enough, or no shared memory to measure: the workers decode.
    monkeypatch.setattr(local, "shm_free_bytes", lambda: 8 << 30)
    assert DecodePlan.choose(cfg, cuda, need) == DecodePlan("workers")
    monkeypatch.setattr(local, "shm_free_bytes", lambda: None)
    assert DecodePlan.choose(cfg, cuda, need) == DecodePlan("workers")
    # Decoding on threads already (the CPU default) needs no shared memory at all.
    monkeypatch.setattr(local, "shm_free_bytes", lambda: 0)
    caplog.clear()
    assert DecodePlan.choose(_cfg(decode_threads=2), torch.device("cpu"), need).where == "threads"
    assert not caplog.records
