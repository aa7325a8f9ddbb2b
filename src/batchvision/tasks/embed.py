"""``embed``: one feature vector per image, written as a fixed-size list."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from batchvision.io.sinks import COMMON_FIELDS
from batchvision.tasks import register_task
from batchvision.tasks.base import Task, ok_rows, scatter_rows, without_image

if TYPE_CHECKING:
    from batchvision.config import RunConfig
    from batchvision.models.spec import ModelSpec
    from batchvision.stages.predict import Predictor


@torch.inference_mode()
def embed(predictor: Predictor, images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Features ``(N, D)`` float32 on the model's device, L2-normalised when the options
    say so."""
    feats = predictor.logits(images).reshape(len(images), -1)
    if predictor.normalize:
        feats = F.normalize(feats, dim=1)
    return feats


@register_task
class Embed(Task):
    """The model's pooled (or, for image-text models, projected) image features."""

    name = "embed"
    #: ``fixed_size_list<float32>[d]``: what Lance, LanceDB and DuckDB's ARRAY type search
    #: on; pandas and pyarrow read it as they read a list. The schema made for the docs has
    #: ``d`` = 0; a run's parts have the model's size (the manifest's ``embedding_dim``).
    fields = (pa.field("embedding", pa.list_(pa.float32(), 0)),)
    options = (("normalize", "--normalize"),)
    #: Parts of an earlier layout (variable-size lists) cannot share a folder with these.
    resume_fields = ("embedding_type",)

    def predict(self, predictor: Predictor, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["status"])
        out = without_image(batch)
        ok, images = ok_rows(batch)
        if images is None:
            out["embedding"] = np.zeros((n, predictor.spec.embedding_dim or 0), dtype=np.float32)
        else:
            out["embedding"] = scatter_rows(embed(predictor, images), ok, n)
        return out

    def columns(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, pa.Array]:
        emb = np.ascontiguousarray(batch["embedding"], dtype=np.float32)
        d = emb.shape[1]
        column = pa.FixedSizeListArray.from_arrays(
            pa.array(emb.reshape(-1)), d, mask=pa.array(~np.asarray(ok, dtype=bool))
        )
        return {"embedding": column}

    def table_schema(self, columns: dict[str, pa.Array]) -> pa.Schema:
        d = columns["embedding"].type.list_size
        return pa.schema([*COMMON_FIELDS, pa.field("embedding", pa.list_(pa.float32(), d))])

    def manifest_fields(self, spec: ModelSpec, config: RunConfig) -> dict[str, Any]:
        return {
            "embedding_dim": spec.embedding_dim,
            "embedding_type": f"fixed_size_list<float32>[{spec.embedding_dim}]",
        }
