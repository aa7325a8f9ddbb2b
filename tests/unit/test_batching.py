"""Out-of-memory halving and the ``--batch-size auto`` search, on CPU with an injected OOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from batchvision.models.registry import resolve_model
from batchvision.models.spec import ModelSpec
from batchvision.stages.batching import (
    INJECT_OOM_ENV,
    BatchSearch,
    injected_oom_limit,
    is_out_of_memory,
    search_batch_size,
)
from batchvision.stages.predict import PredictOptions, Predictor


class FakeDevice:
    """A model call whose time is ``overhead + size * per_image``, OOM above ``fits``."""

    def __init__(self, per_image: float, overhead: float, fits: int = 10**9) -> None:
        self.now = 0.0
        self.per_image, self.overhead, self.fits = per_image, overhead, fits
        self.calls: list[int] = []

    def clock(self) -> float:
        return self.now

    def run(self, n: int) -> None:
        self.calls.append(n)
        if n > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory ({n})")
        self.now += self.overhead + n * self.per_image


def _search(dev: FakeDevice, **kw: object) -> BatchSearch:
    args: dict[str, object] = {"start": 8, "limit": 1024, "budget_s": 1e9, **kw}
    return search_batch_size(dev.run, clock=dev.clock, **args)  # type: ignore[arg-type]


def test_search_stops_where_throughput_stops_improving() -> None:
    # Fixed overhead 0.1 s per call, 1 ms per image: rates 8: 74, 16: 138, 32: 242,
    # 64: 390, 128: 561, 256: 719, 512: 837 (+16%), 1024: 911 (+9%) -> all gains > 5%.
    dev = FakeDevice(per_image=0.001, overhead=0.1)
    assert _search(dev).size == 1024
    # With a smaller overhead, throughput saturates early: 8 -> 16 gains < 5%.
    dev = FakeDevice(per_image=0.001, overhead=0.0001)
    got = _search(dev)
    assert got.size == 8
    assert [b for b, _ in got.trials] == [8, 16]
    assert got.trials[0][1] == pytest.approx(8 / (0.0001 + 0.008))


def test_search_stops_at_out_of_memory_and_keeps_the_last_size_that_fit() -> None:
    dev = FakeDevice(per_image=0.001, overhead=0.1, fits=100)
    got = _search(dev)
    assert got.size == 64
    assert got.trials[-1] == (128, 0.0)
    assert max(dev.calls) == 128


def test_search_halves_below_start_when_start_does_not_fit() -> None:
    dev = FakeDevice(per_image=0.001, overhead=0.1, fits=3)
    got = _search(dev, start=32)
    assert got.size == 2
    assert [b for b, _ in got.trials] == [32, 16, 8, 4, 2]


def test_search_raises_when_one_image_does_not_fit() -> None:
    dev = FakeDevice(per_image=0.001, overhead=0.1, fits=0)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _search(dev, start=4)


def test_search_respects_limit_and_budget() -> None:
    dev = FakeDevice(per_image=0.001, overhead=0.1)
    assert _search(dev, limit=32).size == 32
    dev = FakeDevice(per_image=0.001, overhead=0.1)
    # Each size costs 3 calls; the budget is passed after the second size.
    got = _search(dev, budget_s=0.5)
    assert got.size == 16
    assert len(got.trials) == 2


def test_search_lets_other_errors_through() -> None:
    def run(n: int) -> None:
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        search_batch_size(run, start=8, limit=64, budget_s=10)


def test_is_out_of_memory() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))
    # The CUDA libraries' own allocations fail as plain RuntimeErrors with their status.
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"))
    assert is_out_of_memory(RuntimeError("nvjpegDecodeBatched failed: 5"))  # ALLOCATOR_FAILURE
    assert not is_out_of_memory(RuntimeError("nvjpegDecodeBatched failed: 3"))  # BAD_JPEG
    assert not is_out_of_memory(RuntimeError("nvjpegDecodeBatched failed: 50"))


def test_inject_env_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INJECT_OOM_ENV, raising=False)
    assert injected_oom_limit() is None
    monkeypatch.setenv(INJECT_OOM_ENV, "4")
    assert injected_oom_limit() == 4
    assert PredictOptions.from_config(_config()).inject_oom_above == 4
    monkeypatch.setenv(INJECT_OOM_ENV, "four")
    with pytest.raises(ValueError, match="'four' is not valid"):
        injected_oom_limit()


def test_batch_search_record() -> None:
    rec = BatchSearch(size=16, trials=((8, 100.123), (16, 150.0), (32, 0.0)), seconds=1.23456)
    assert rec.as_record() == {
        "size": 16,
        "trials": [
            {"batch_size": 8, "images_per_second": 100.12},
            {"batch_size": 16, "images_per_second": 150.0},
            {"batch_size": 32, "images_per_second": 0.0},
        ],
        "seconds": 1.235,
    }


def _config() -> object:
    from batchvision.config import RunConfig

    return RunConfig(inputs=("x",), output="y", model="resnet18")


# --- the predictor, with the injected OOM --------------------------------------------------


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    torch.manual_seed(3)
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=7)
    path = Path(tmp_path_factory.mktemp("batching")) / "m.pt"
    torch.save(model.state_dict(), path)
    return resolve_model("mobilenet_v3_small", str(path))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (10, 224, 224, 3), dtype=np.uint8)


def _predictor(spec: ModelSpec, oom_above: int | None) -> Predictor:
    opts = PredictOptions(device="cpu", precision="fp32", top_k=3, inject_oom_above=oom_above)
    return Predictor(spec, opts)


def test_oom_halves_the_batch_and_keeps_every_row(spec: ModelSpec, images: np.ndarray) -> None:
    plain = _predictor(spec, None)
    injected = _predictor(spec, 3)
    want = plain.logits(images)
    got = injected.logits(images)
    # 10 -> 5 -> 2: every row once, in order, same values.
    assert injected.batch_limit == 2
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert plain.batch_limit is None
    # The smaller size is kept: the next batch runs in pieces of 2 straight away.
    again = injected.logits(images[:7])
    torch.testing.assert_close(again, want[:7], rtol=1e-4, atol=1e-4)
    assert injected.batch_limit == 2
    assert injected.batch_size_used(32) == 2
    assert plain.batch_size_used(32) == 32


def test_oom_on_single_images_is_a_real_error(spec: ModelSpec, images: np.ndarray) -> None:
    injected = _predictor(spec, 0)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="injected"):
        injected.logits(images[:4])
    assert injected.batch_limit == 1


def test_oom_in_call_gives_the_same_rows(spec: ModelSpec, images: np.ndarray) -> None:
    n = len(images)
    batch = {
        "id": np.array([f"i{k}" for k in range(n)], dtype=object),
        "path": np.array([f"/p/i{k}.jpg" for k in range(n)], dtype=object),
        "status": np.array(["ok"] * (n - 1) + ["error"], dtype=object),
        "error": np.array([None] * (n - 1) + ["corrupt: x"], dtype=object),
        "width": np.full(n, 224, dtype=np.int32),
        "height": np.full(n, 224, dtype=np.int32),
        "image": images,
    }
    want = _predictor(spec, None)(batch)
    got = _predictor(spec, 2)(batch)
    assert list(got["id"]) == list(want["id"])
    np.testing.assert_array_equal(got["topk_ids"], want["topk_ids"])
    np.testing.assert_allclose(got["topk_scores"], want["topk_scores"], atol=1e-5)


def test_find_batch_size_stops_at_injected_oom(spec: ModelSpec) -> None:
    injected = _predictor(spec, 5)
    got = injected.find_batch_size(start=2, limit=64, budget_s=30)
    assert 1 <= got.size <= 4
    sizes = [b for b, _ in got.trials]
    assert sizes[0] == 2
    assert all(r > 0 for b, r in got.trials if b <= 5)
    if sizes[-1] > 5:  # the search reached the injected limit
        assert got.trials[-1] == (8, 0.0)
    # The search leaves no limit behind: the run's batches start whole.
    assert injected.batch_limit is None


def test_oom_memory_is_freed_outside_the_handler(
    spec: ModelSpec, images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # empty_cache() inside the except block frees nothing the failed forward pass still
    # holds through the traceback: it must run once the handler is left.
    import sys

    import batchvision.stages.predict as predict

    handling: list[object] = []
    monkeypatch.setattr(predict, "free_cached_memory", lambda d: handling.append(sys.exc_info()[0]))
    injected = _predictor(spec, 3)
    injected.logits(images)
    assert handling == [None, None]  # 10 -> 5 -> 2, each freed with no exception alive


def test_a_halved_batch_grows_back_and_backs_off(spec: ModelSpec, images: np.ndarray) -> None:
    injected = _predictor(spec, 3)
    want = _predictor(spec, None).logits(images)
    injected.logits(images)  # 10 -> 5 -> 2, then 5 pieces of 2 fit
    assert injected.batch_limit == 2
    injected.inject_oom_above = None  # the memory is back
    injected.grow_after = 2
    limits = []
    for _ in range(3):
        got = injected.logits(images)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # every row, in order
        limits.append(injected.batch_limit)
    # Call 1: 2 fits (enough in a row) -> 4; 4, 4 fit -> 8. Call 2: 8 fits once (the last
    # piece of 2 is not a full one). Call 3: 8 fits again -> 16, past the batch: whole.
    assert limits == [8, 8, None]
    # A grown size that runs out again halves, and the next growth waits twice as long.
    injected.inject_oom_above = 6
    got = injected.logits(images)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert injected.batch_limit == 5
    assert injected.grow_after == 4
