"""The engine seams for every task, driven the way the Ray engine drives them.

What crosses to a worker (spec, options, weights, preprocessing) goes through pickle, as
Ray ships it; the stages then run as plain batch functions. The rows must equal the local
engine's for the same inputs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import batchvision
from batchvision.config import RunConfig
from batchvision.io import sinks
from batchvision.io.sources import items_to_batch, iter_inputs, read_batch
from batchvision.models.registry import load_state_dict, resolve_model
from batchvision.stages.predict import PredictOptions, Predictor
from batchvision.stages.preprocess import decode_batch
from batchvision.tasks import get_task
from batchvision.tasks.segment import decode_mask
from tests.task_models import save_tiny_segformer

pytest.importorskip("transformers")


@pytest.mark.parametrize("task", ["segment", "embed"])
def test_seams_after_pickling_match_the_local_engine(
    task: str,
    photo_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    if task == "segment":
        model_dir = tmp_path / "segformer"
        save_tiny_segformer(model_dir, size=64)
        extra: dict[str, object] = {"model": f"hf:{model_dir}", "mask_dir": str(tmp_path / "m1")}
    else:
        ckpt, labels = tiny_checkpoint
        extra = {"model": "mobilenet_v3_small", "weights": str(ckpt), "labels": str(labels)}
        extra.update(task="embed", normalize=True)
    base = {"inputs": (str(photo_dir / "a"),), "workers": 0, "precision": "fp32", **extra}
    local = RunConfig(output=str(tmp_path / "local"), **base)  # type: ignore[arg-type]
    batchvision.run(local)

    # The driver resolves everything once; the "worker" only receives pickles.
    if task == "segment":
        base["mask_dir"] = str(tmp_path / "m2")
    cfg = RunConfig(output=str(tmp_path / "seams"), **base)  # type: ignore[arg-type]
    spec = resolve_model(cfg.model, cfg.weights, labels_path=cfg.labels, task=cfg.task)
    shipped = pickle.dumps((spec, PredictOptions.from_config(cfg), load_state_dict(spec)))
    w_spec, w_options, w_state = pickle.loads(shipped)
    predictor = Predictor(w_spec, w_options, w_state)
    items = list(iter_inputs(cfg.inputs))
    (tmp_path / "seams").mkdir()
    writer = sinks.PartWriter(str(tmp_path / "seams"), "parquet", mask_dir=cfg.mask_dir)
    for start in range(0, len(items), 5):
        batch = read_batch(items_to_batch(items[start : start + 5]))
        decoded = decode_batch(batch, w_spec.preprocess, max_pixels=cfg.max_pixels)
        writes = get_task(w_spec.task)
        writer.add(writes.to_table(writes.postprocess(predictor(decoded), w_spec)))
    writer.close()

    ours = sorted(pq.read_table(tmp_path / "seams").to_pylist(), key=lambda r: r["id"])
    ref = sorted(pq.read_table(tmp_path / "local").to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in ours] == [r["id"] for r in ref] and len(ours) == 12
    for a, b in zip(ours, ref, strict=True):
        if task == "embed":
            np.testing.assert_allclose(a["embedding"], b["embedding"], rtol=1e-4, atol=1e-6)
        else:
            assert a["classes"] == b["classes"]
            with open(a["mask_path"], "rb") as fa, open(b["mask_path"], "rb") as fb:
                np.testing.assert_array_equal(decode_mask(fa.read()), decode_mask(fb.read()))
