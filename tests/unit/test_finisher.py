"""The finishing thread: order, bounded depth, errors, and the model's thread never
waiting for a batch's readback."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from batchvision.engines.finisher import Finisher


def test_items_are_finished_in_order_and_close_drains() -> None:
    done: list[int] = []

    def finish(i: int) -> None:
        time.sleep(0.001 * (i % 3))  # uneven work must not reorder anything
        done.append(i)

    f = Finisher(finish, depth=3)
    for i in range(50):
        f.submit(i)
    f.close()
    assert done == list(range(50))


def test_submit_blocks_while_depth_items_wait() -> None:
    release = threading.Event()
    started = threading.Event()

    def finish(i: int) -> None:
        started.set()
        release.wait(5)

    f = Finisher(finish, depth=2)
    f.submit(0)
    assert started.wait(5)  # item 0 is being finished; 1 and 2 fill the queue
    f.submit(1)
    f.submit(2)
    blocked = threading.Thread(target=f.submit, args=(3,))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # bounded: the fourth waits for room
    release.set()
    blocked.join(5)
    assert not blocked.is_alive()
    f.close()


def test_an_error_is_raised_in_the_submitting_thread_once() -> None:
    done: list[int] = []

    def finish(i: int) -> None:
        if i == 2:
            raise OSError("disk full")
        done.append(i)

    f = Finisher(finish, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for i in range(100):
            f.submit(i)
    f.close()  # already raised: not again, and the thread ends
    assert done == [0, 1]  # nothing after the failed item is finished


def test_close_raises_an_error_of_the_last_items() -> None:
    def finish(i: int) -> None:
        raise ValueError(f"bad {i}")

    f = Finisher(finish)
    f.submit(0)
    with pytest.raises(ValueError, match="bad 0"):
        f.close()


def test_the_model_thread_queues_the_next_batch_before_a_readback_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the local engine, batch k's readback is waited for off the model's thread: the
    wait of batch k can block until batch k+1 is launched without stopping the run."""
    from PIL import Image

    import batchvision
    from batchvision.config import PreprocessOverrides, RunConfig
    from batchvision.stages import predict
    from batchvision.stages.readback import Readback

    src = tmp_path / "in"
    src.mkdir()
    for i in range(20):
        Image.new("RGB", (40, 30), (i * 10, 0, 0)).save(src / f"{i:02d}.png")
    launched = threading.Condition()
    count = [0]
    timed_out: list[int] = []
    real_launch = predict.Predictor.launch

    class Gated(Readback):
        def __init__(self, inner: Readback, k: int) -> None:
            self.inner, self.k = inner, k

        def wait(self):  # type: ignore[no-untyped-def]
            with launched:
                if not launched.wait_for(lambda: count[0] > self.k + 1, timeout=1.5):
                    timed_out.append(self.k)
            return self.inner.wait()

    def launch(self, batch):  # type: ignore[no-untyped-def]
        out = real_launch(self, batch)
        with launched:
            k = count[0]
            count[0] += 1
            launched.notify_all()
        return Gated(out, k)

    monkeypatch.setattr(predict.Predictor, "launch", launch)
    summary = batchvision.run(
        RunConfig(
            inputs=(str(src),), output=str(tmp_path / "out"), model="mobilenet_v3_small",
            weights="random", batch_size=4, workers=0,
            preprocess=PreprocessOverrides(resize_size=32, crop_size=32),
        )
    )  # fmt: skip
    assert summary.ok == 20 and count[0] == 5
    # Only the last batch had no next one to wait for; a serial loop times out on every one.
    assert timed_out == [4]
    table = pq.read_table(tmp_path / "out")
    assert sorted(table.column("id").to_pylist()) == sorted(f"{i:02d}.png" for i in range(20))
    assert np.all(np.isfinite(table.column("score").to_numpy()))
