"""``embed``: one feature vector per image, written as a fixed-size list."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from batchvision.tasks import register_task
from batchvision.tasks.base import Task, ok_rows, without_image

if TYPE_CHECKING:
    from batchvision.models.spec import ModelSpec
    from batchvision.stages.predict import Predictor


@torch.inference_mode()
def embed(predictor: Predictor, images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Features ``(N, D)`` float32, L2-normalised when the options say so."""
    feats = predictor.logits(images).reshape(len(images), -1)
    if predictor.normalize:
        feats = F.normalize(feats, dim=1)
    return feats.cpu().numpy()


@register_task
class Embed(Task):
    """The model's pooled (or, for image-text models, projected) image features."""

    name = "embed"
    fields = (pa.field("embedding", pa.list_(pa.float32())),)
    options = (("normalize", "--normalize"),)

    def predict(self, predictor: Predictor, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["status"])
        out = without_image(batch)
        emb = np.zeros((n, predictor.spec.embedding_dim or 0), dtype=np.float32)
        ok, images = ok_rows(batch)
        if images is not None:
            feats = embed(predictor, images)
            if emb.shape[1] != feats.shape[1]:
                emb = np.zeros((n, feats.shape[1]), dtype=np.float32)
            emb[ok] = feats
        out["embedding"] = emb
        return out

    def columns(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, pa.Array]:
        from batchvision.io.sinks import list_array

        emb = np.asarray(batch["embedding"], dtype=np.float32)
        return {"embedding": list_array(emb, ok, pa.float32())}

    def manifest_fields(self, spec: ModelSpec) -> dict[str, Any]:
        return {"embedding_dim": spec.embedding_dim}
