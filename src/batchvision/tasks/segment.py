"""``segment``: a class per pixel, at each image's displayed size, as a lossless PNG."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from batchvision.io.sinks import COMMON_FIELDS
from batchvision.stages.batching import free_cached_memory, is_out_of_memory
from batchvision.stages.upsample import MIN_UPSAMPLE_BYTES, upsample_argmax
from batchvision.tasks import register_task
from batchvision.tasks.base import ListedLabels, without_image

if TYPE_CHECKING:
    from batchvision.config import RunConfig
    from batchvision.models.spec import ModelSpec
    from batchvision.stages.predict import Predictor

logger = logging.getLogger(__name__)

#: zlib level for mask PNGs: class maps are flat regions, so level 1 already compresses
#: them well, several times faster than Pillow's default 6 (see benchmarks/bench_masks.py).
PNG_COMPRESS_LEVEL = 1
CLASS_STRUCT = pa.struct(
    [pa.field("id", pa.int32()), pa.field("label", pa.string()), pa.field("fraction", pa.float32())]
)
MASK_FIELDS = (
    pa.field("mask_width", pa.int32()),
    pa.field("mask_height", pa.int32()),
    pa.field("classes", pa.list_(CLASS_STRUCT)),
)


def map_dtype(spec: ModelSpec) -> type[np.unsignedinteger[Any]]:
    """uint8 class maps up to 256 classes, uint16 past that."""
    return np.uint8 if spec.num_classes <= 256 else np.uint16


@torch.inference_mode()
def segment(
    predictor: Predictor, images: torch.Tensor | np.ndarray, sizes: list[tuple[int, int]]
) -> list[np.ndarray]:
    """Class maps at ``sizes`` ((height, width) per image): uint8, or uint16 past 256."""
    logits = predictor.logits(images)
    dtype = map_dtype(predictor.spec)
    return [
        _upsample(predictor, logits[i], size).cpu().numpy().astype(dtype)
        for i, size in enumerate(sizes)
    ]


def _upsample(predictor: Predictor, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """:func:`upsample_argmax`; out of device memory, retried in bands half as large (kept
    on the predictor for later images), down to ``MIN_UPSAMPLE_BYTES``."""
    while True:
        try:
            return upsample_argmax(logits, size, predictor.upsample_bytes)
        except Exception as e:
            if not is_out_of_memory(e) or predictor.upsample_bytes <= MIN_UPSAMPLE_BYTES:
                raise
            free_cached_memory(predictor.device)
            predictor.upsample_bytes = max(MIN_UPSAMPLE_BYTES, predictor.upsample_bytes // 2)
            logger.warning(
                "out of memory on %s upsampling a %dx%d class map (%s): retrying in "
                "bands of at most %d MiB, and keeping that size",
                *(predictor.device, size[1], size[0], str(e).splitlines()[0][:120]),
                predictor.upsample_bytes // 2**20,
            )


def encode_mask(class_map: np.ndarray) -> bytes:
    """A class map as a lossless PNG: mode L (uint8) or 16-bit greyscale (uint16)."""
    # Pillow picks the mode from the dtype: uint8 -> L, little-endian uint16 -> I;16.
    arr = class_map if class_map.dtype == np.uint8 else class_map.astype("<u2")
    img = Image.fromarray(np.ascontiguousarray(arr))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    """The class map back from ``encode_mask``'s PNG (uint8 or uint16)."""
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img)
    return arr.astype(np.uint16) if arr.dtype != np.uint8 else arr


def mask_batch(batch: dict[str, np.ndarray], labels: Sequence[str]) -> dict[str, np.ndarray]:
    """``class_map`` to ``mask`` (PNG bytes), ``mask_width``/``mask_height`` and ``classes``.

    ``classes`` holds, per image, a list of ``{"id", "label", "fraction"}`` for the classes
    present, most pixels first (plain Python values, so the column converts to Arrow's
    list<struct> as is); error rows get ``None``.
    """
    n = len(batch["status"])
    masks = np.full(n, None, dtype=object)
    classes = np.full(n, None, dtype=object)
    mask_w = np.zeros(n, dtype=np.int32)
    mask_h = np.zeros(n, dtype=np.int32)
    ok = np.asarray(batch["status"]) == "ok"
    for i, m in enumerate(batch["class_map"]):
        if not ok[i] or m is None or m.size == 0:
            continue
        masks[i] = encode_mask(m)
        mask_h[i], mask_w[i] = m.shape
        counts = np.bincount(m.reshape(-1), minlength=len(labels))
        present = np.flatnonzero(counts)
        order = present[np.argsort(-counts[present], kind="stable")]
        classes[i] = [
            {
                "id": int(c),
                "label": labels[c] if c < len(labels) else str(c),
                "fraction": float(counts[c] / m.size),
            }
            for c in order
        ]
    out = {k: v for k, v in batch.items() if k != "class_map"}
    out.update(mask=masks, mask_width=mask_w, mask_height=mask_h, classes=classes)
    return out


@register_task
class Segment(ListedLabels):
    """Semantic segmentation: logits upsampled bilinearly on the device, then argmax."""

    name = "segment"
    #: Rows carry the PNG in ``mask``; with ``--mask-dir`` a ``mask_path`` instead
    #: (:func:`batchvision.io.sinks.masks_to_files`).
    fields = (pa.field("mask", pa.binary()), *MASK_FIELDS)
    options = (("mask_dir", "--mask-dir"),)
    report_view = "classes"
    labelled_column = "classes"
    light_columns = ("classes",)
    row_columns = ("mask", "mask_path", "mask_width", "mask_height", "classes")

    def schemas(self) -> dict[str, pa.Schema]:
        files = pa.schema([*COMMON_FIELDS, pa.field("mask_path", pa.string()), *MASK_FIELDS])
        return {**super().schemas(), "segment_files": files}

    def predict(self, predictor: Predictor, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``class_map``: 2-D class maps at each image's displayed size (an empty ``(0, 0)``
        map on error rows, so the column stays all arrays for Ray Data's tensor columns)."""
        ok = np.flatnonzero(batch["status"] == "ok")
        empty = np.zeros((0, 0), map_dtype(predictor.spec))
        maps = np.empty(len(batch["status"]), dtype=object)
        for i in range(len(maps)):
            maps[i] = empty
        images = batch["image"]
        # Inputs of different sizes (no crop) run in groups of equal size, unpadded.
        if "input_height" in batch:
            keys = [(int(batch["input_height"][i]), int(batch["input_width"][i])) for i in ok]
        else:
            keys = [tuple(images.shape[1:3])] * len(ok)
        for key in dict.fromkeys(keys):
            idx = np.array([i for i, k in zip(ok, keys, strict=True) if k == key])
            sizes = [(int(batch["height"][i]), int(batch["width"][i])) for i in idx]
            group = images[idx, : key[0], : key[1]]
            for i, m in zip(idx, segment(predictor, group, sizes), strict=True):
                maps[i] = m
        out = without_image(batch)
        out["class_map"] = maps
        return out

    def postprocess(self, batch: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
        return mask_batch(batch, spec.labels)

    def columns(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, pa.Array]:
        return {
            "mask": pa.array(batch["mask"].tolist(), pa.binary()),
            "mask_width": pa.array(batch["mask_width"], pa.int32(), mask=~ok),
            "mask_height": pa.array(batch["mask_height"], pa.int32(), mask=~ok),
            "classes": pa.array(batch["classes"].tolist(), pa.list_(CLASS_STRUCT)),
        }

    def manifest_fields(self, spec: ModelSpec, config: RunConfig) -> dict[str, Any]:
        return {"labels": list(spec.labels)}
