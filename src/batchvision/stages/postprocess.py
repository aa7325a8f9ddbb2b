"""Top-k ids to labels: the last pure stage before the sink."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def label_batch(batch: dict[str, np.ndarray], labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Add ``label``/``score`` (top-1) and ``topk_labels``; error rows get ``None``/NaN."""
    ok = batch["status"] == "ok"
    ids = batch["topk_ids"]
    names = np.asarray(labels, dtype=object)
    topk_labels = names[ids] if ids.size else np.empty(ids.shape, dtype=object)
    out = dict(batch)
    out["label"] = np.where(ok, topk_labels[:, 0] if ids.shape[1] else None, None)
    out["score"] = np.where(ok, batch["topk_scores"][:, 0], np.nan).astype(np.float32)
    out["topk_labels"] = topk_labels
    return out
