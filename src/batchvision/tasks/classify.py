"""``classify``: the top-k classes of each image, with softmax probabilities."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from batchvision.errors import ConfigError
from batchvision.io.sinks import list_array
from batchvision.tasks import register_task
from batchvision.tasks.base import Task, ok_rows, scatter_rows, without_image

if TYPE_CHECKING:
    from batchvision.config import RunConfig
    from batchvision.models.spec import ModelSpec
    from batchvision.stages.predict import Predictor

#: Rows of the classification schema (zero-shot writes the same columns).
LABEL_FIELDS = (
    pa.field("label", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("topk_ids", pa.list_(pa.int32())),
    pa.field("topk_labels", pa.list_(pa.string())),
    pa.field("topk_scores", pa.list_(pa.float32())),
)


def check_top_k(top_k: int, spec: ModelSpec) -> None:
    """``top_k`` must lie within the model's classes."""
    if not 1 <= top_k <= spec.num_classes:
        raise ConfigError(
            f"--top-k {top_k} is not valid for {spec.arch} with {spec.num_classes} classes; "
            f"choose 1..{spec.num_classes}"
        )


@torch.inference_mode()
def topk_tensors(
    predictor: Predictor, images: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k class ids (int32) and softmax probabilities (float32) per image, left on the
    model's device (read back with the rest of the batch's columns)."""
    probs = torch.softmax(predictor.logits(images), dim=1)
    scores, ids = probs.topk(predictor.top_k, dim=1)
    return ids.to(torch.int32), scores


def topk(predictor: Predictor, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk_tensors` as numpy arrays on the host."""
    k = predictor.top_k
    if len(images) == 0:
        return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
    ids, scores = topk_tensors(predictor, images)
    return ids.cpu().numpy(), scores.cpu().numpy()


def topk_columns(
    batch: dict[str, Any],
    k: int,
    scores_of: Callable[[Any], tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, Any]:
    """``topk_ids``/``topk_scores`` for a batch (zeros on error rows), ``image`` dropped.

    ``scores_of(images)`` gives the ok rows' ids and scores as tensors on the model's
    device; the columns stay there (see :mod:`batchvision.stages.readback`).
    """
    n = len(batch["status"])
    ok, images = ok_rows(batch)
    out = without_image(batch)
    if images is None:
        out["topk_ids"] = np.zeros((n, k), dtype=np.int32)
        out["topk_scores"] = np.zeros((n, k), dtype=np.float32)
        return out
    ids, scores = scores_of(images)
    out["topk_ids"] = scatter_rows(ids, ok, n)
    out["topk_scores"] = scatter_rows(scores, ok, n)
    return out


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


def label_columns(batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, pa.Array]:
    """The classification schema's columns of a labelled batch."""
    return {
        "label": pa.array(batch["label"].tolist(), pa.string()),
        "score": pa.array(batch["score"], pa.float32(), mask=~ok),
        "topk_ids": list_array(batch["topk_ids"], ok, pa.int32()),
        "topk_labels": list_array(batch["topk_labels"], ok, pa.string()),
        "topk_scores": list_array(batch["topk_scores"], ok, pa.float32()),
    }


def top1_hits(table: pa.Table, label: str) -> np.ndarray:
    """Rows whose top-1 ``label`` is ``label``."""
    if "label" not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    eq = pc.fill_null(pc.equal(table.column("label"), label), False)
    return np.asarray(eq.to_numpy(zero_copy_only=False), dtype=bool)


class LabelTask(Task):
    """A task whose rows are the classification schema (classify, zero-shot)."""

    fields = LABEL_FIELDS
    report_view = "labels"
    light_columns = ("label", "score")
    row_columns = ("label", "score", "topk_labels", "topk_scores")

    def postprocess(self, batch: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
        return label_batch(batch, spec.labels)

    def columns(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, pa.Array]:
        return label_columns(batch, ok)

    def label_values(self, table: pa.Table, ok: pa.Array) -> pa.Array | None:
        if "label" not in table.column_names:
            return None
        return table.column("label").filter(ok)

    def label_hits(self, table: pa.Table, label: str) -> np.ndarray | None:
        return top1_hits(table, label)


@register_task
class Classify(LabelTask):
    """The model's own classes: top-k ids, labels and softmax probabilities."""

    name = "classify"

    def check(self, config: RunConfig, spec: ModelSpec) -> None:
        check_top_k(config.top_k, spec)

    def setup(self, predictor: Predictor) -> None:
        check_top_k(predictor.top_k, predictor.spec)

    def predict(self, predictor: Predictor, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return topk_columns(batch, predictor.top_k, lambda images: topk_tensors(predictor, images))
