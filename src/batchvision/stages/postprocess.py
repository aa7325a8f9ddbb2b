"""Model outputs to output columns: the last pure stage before the sink."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from batchvision.models.spec import ModelSpec


def label_batch(batch: dict[str, np.ndarray], labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Add ``label``/``score`` (top-1) and ``topk_labels``; error rows get ``None``/NaN."""
    ok = np.asarray(batch["status"]) == "ok"
    names = np.asarray(labels, dtype=object)
    topk_labels = names[batch["topk_ids"]]
    label = topk_labels[:, 0].copy()
    label[~ok] = None
    out = dict(batch)
    out["label"] = label
    out["score"] = np.where(ok, batch["topk_scores"][:, 0], np.nan).astype(np.float32)
    out["topk_labels"] = topk_labels
    return out


def postprocess_batch(batch: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
    """A predicted batch to the columns the sink writes; every engine calls this one."""
    return label_batch(batch, spec.labels)
