"""Model outputs to output columns: the last pure stage before the sink."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from batchvision.models.spec import ModelSpec

#: zlib level for mask PNGs: class maps are flat regions, so level 1 already compresses
#: them well, several times faster than Pillow's default 6 (see benchmarks/bench_masks.py).
PNG_COMPRESS_LEVEL = 1


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


def postprocess_batch(batch: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
    """A predicted batch to the columns the sink writes; every engine calls this one."""
    if spec.task == "segment":
        return mask_batch(batch, spec.labels)
    if spec.task == "embed":
        return dict(batch)
    return label_batch(batch, spec.labels)
