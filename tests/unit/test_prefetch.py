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
