"""A three-node Ray cluster on loopback loses a worker node mid-run; the run completes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pytest

import batchvision
from batchvision.config import RunConfig
from batchvision.demo import synth
from tests.processes import descendants, title

ray = pytest.importorskip("ray")
from ray._private import ray_constants  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

N_IMAGES = 80
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, list[Any]]]:
    """A head (no CPUs: the driver only) and two worker nodes of 2 logical CPUs each.

    Two CPUs per worker, so the surviving node still fits the unit worker actor after the
    other node is gone.
    """
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": 96 * 2**20},
    )
    workers = [c.add_node(num_cpus=2, object_store_memory=96 * 2**20) for _ in range(2)]
    try:
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multinode")
    rng = np.random.default_rng(11)
    for i in range(N_IMAGES):
        size = (int(rng.integers(64, 160)), int(rng.integers(64, 160)))
        synth.photo_like(rng, size).save(root / f"im_{i:03d}.jpg", quality=85)
    return root


def test_worker_node_removed_mid_run(
    cluster: tuple[Any, list[Any]],
    images: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    c, workers = cluster
    ckpt, labels = tiny_checkpoint
    out = tmp_path / "out"
    removed: dict[str, Any] = {}

    def model_at_work() -> tuple[Any, list[str]] | None:
        """The worker node whose unit worker actor is running a unit now, and its processes'
        titles (Ray titles a worker ``ray::Class.method`` while it runs a method)."""
        for node in workers:
            raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
            titles = [title(p) for p in descendants(raylet)]
            if any("UnitWorker" in t and ")." in t for t in titles):
                return node, titles
        return None

    def remove_once_rows_are_written() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = model_at_work() if list(out.glob("part-*.parquet")) else None
            if found is not None:
                break
            time.sleep(0.05)
        else:
            return
        node, removed["titles"] = found
        removed["rows_before"] = len(
            pads.dataset(str(out), format="parquet").to_table(columns=["id"])
        )
        c.remove_node(node)
        removed["at"] = time.monotonic()

    remover = threading.Thread(target=remove_once_rows_are_written, daemon=True)
    remover.start()
    summary = batchvision.run(
        RunConfig(
            inputs=(str(images),),
            output=str(out),
            model="mobilenet_v3_small",
            weights=str(ckpt),
            labels=str(labels),
            engine="ray",
            batch_size=2,
            part_rows=2,
            # The default pool: 1 actor on 4 CPUs, restarted on the surviving node.
        )
    )
    finished = time.monotonic()
    remover.join(timeout=30)

    assert "at" in removed and removed["at"] < finished, "the node went before the run ended"
    assert 0 < removed["rows_before"] < N_IMAGES
    # The node went with work at stake: the model's actor, in the middle of a unit.
    assert any("UnitWorker" in t and ")." in t for t in removed["titles"]), removed["titles"]
    assert sum(1 for n in ray.nodes() if n["Alive"]) == 2  # head + the surviving worker
    ids = pads.dataset(str(out), format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert len(ids) == N_IMAGES and set(ids) == {f"im_{i:03d}.jpg" for i in range(N_IMAGES)}
    assert (summary.ok, summary.error) == (N_IMAGES, 0)
