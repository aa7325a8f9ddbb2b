"""``segment``: a class per pixel, at each image's displayed size, as a lossless PNG."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from batchvision.io.sinks import COMMON_FIELDS
from batchvision.stages.batching import free_cached_memory, is_out_of_memory
from batchvision.stages.readback import start_readback
from batchvision.stages.upsample import MIN_UPSAMPLE_BYTES, upsample_argmax
from batchvision.tasks import register_task
from batchvision.tasks.base import ListedLabels, take_rows, without_image

if TYPE_CHECKING:
    from batchvision.config import RunConfig
    from batchvision.models.spec import ModelSpec
    from batchvision.stages.predict import Predictor

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

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


#: Largest buffer of class maps read back to the host in one copy: a batch of 1080p maps
#: (2 MB each at uint8) goes in one; of 12 MP maps, in copies of 21 maps.
READBACK_BYTES = 256 * 2**20


def map_dtype(spec: ModelSpec) -> type[np.unsignedinteger[Any]]:
    """uint8 class maps up to 256 classes, uint16 past that."""
    return np.uint8 if spec.num_classes <= 256 else np.uint16


def device_map_dtype(dtype: type[np.unsignedinteger[Any]]) -> torch.dtype:
    """The dtype a class map is made in on the device, of the host's ``dtype`` size: uint8,
    or int16 (whose bits, viewed as uint16 on the host, are the class ids up to 65535;
    torch's uint16 has few kernels)."""
    return torch.uint8 if dtype == np.uint8 else torch.int16


@torch.inference_mode()
def segment(
    predictor: Predictor, images: torch.Tensor | np.ndarray, sizes: list[tuple[int, int]]
) -> list[np.ndarray]:
    """Class maps at ``sizes`` ((height, width) per image): uint8, or uint16 past 256.

    Each map is made on the device straight into its slice of a flat buffer in the map's
    dtype (never the argmax's int64, 8 bytes a pixel: 96 MB for 12 MP), and a buffer of
    maps (up to ``READBACK_BYTES``) crosses to the host in one copy, with one wait for the
    device per buffer (:func:`~batchvision.stages.readback.start_readback`). The maps returned
    are views of those host buffers.
    """
    logits = predictor.logits(images)
    dtype = map_dtype(predictor.spec)
    chunks = _chunks(sizes, READBACK_BYTES // np.dtype(dtype).itemsize)
    readbacks = []
    i = 0
    for chunk in chunks:
        flat = torch.empty(
            sum(h * w for h, w in chunk), dtype=device_map_dtype(dtype), device=logits.device
        )
        start = 0
        for h, w in chunk:
            _upsample(predictor, logits[i], (h, w), flat[start : start + h * w].view(h, w))
            start, i = start + h * w, i + 1
        readbacks.append(start_readback({"maps": flat}, logits.device))
    maps = []
    for chunk, readback in zip(chunks, readbacks, strict=True):
        pixels = readback.wait()["maps"].view(dtype)
        start = 0
        for h, w in chunk:
            maps.append(pixels[start : start + h * w].reshape(h, w))
            start += h * w
    return maps


def _chunks(sizes: list[tuple[int, int]], max_pixels: int) -> list[list[tuple[int, int]]]:
    """``sizes`` in runs of at most ``max_pixels`` pixels in all (a larger map alone)."""
    chunks: list[list[tuple[int, int]]] = []
    pixels = max_pixels
    for h, w in sizes:
        if pixels + h * w > max_pixels:
            chunks.append([])
            pixels = 0
        chunks[-1].append((h, w))
        pixels += h * w
    return chunks


def _upsample(
    predictor: Predictor,
    logits: torch.Tensor,
    size: tuple[int, int],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`upsample_argmax` (into ``out``, when given); out of device memory, retried in
    bands half as large (kept on the predictor for later images), down to
    ``MIN_UPSAMPLE_BYTES``."""
    while True:
        try:
            return upsample_argmax(logits, size, predictor.upsample_bytes, out=out)
        except Exception as e:
            if not is_out_of_memory(e) or predictor.upsample_bytes <= MIN_UPSAMPLE_BYTES:
                raise
            message = str(e).splitlines()[0][:120]
        # Outside the handler: the failed band's traceback no longer holds its memory.
        free_cached_memory(predictor.device)
        predictor.upsample_bytes = max(MIN_UPSAMPLE_BYTES, predictor.upsample_bytes // 2)
        logger.warning(
            "out of memory on %s upsampling a %dx%d class map (%s): retrying in "
            "bands of at most %d MiB, and keeping that size",
            *(predictor.device, size[1], size[0], message),
            predictor.upsample_bytes // 2**20,
        )


def encode_mask(class_map: np.ndarray) -> bytes:
    """A class map as a lossless PNG: mode L (uint8) or 16-bit greyscale (uint16)."""
    return _png(_mask_image(class_map))


def _mask_image(class_map: np.ndarray) -> Image.Image:
    # Pillow picks the mode from the dtype: uint8 -> L, little-endian uint16 -> I;16.
    arr = class_map if class_map.dtype == np.uint8 else class_map.astype("<u2")
    return Image.fromarray(np.ascontiguousarray(arr))


def _png(img: Image.Image) -> bytes:
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
    list<struct> as is); error rows get ``None``. The masks are encoded on
    ``torch.get_num_threads()`` threads (the process's share of the cores, as the engines
    set it): zlib releases the GIL, and a 1080p mask takes tens of milliseconds.
    """
    n = len(batch["status"])
    masks = np.full(n, None, dtype=object)
    classes = np.full(n, None, dtype=object)
    mask_w = np.zeros(n, dtype=np.int32)
    mask_h = np.zeros(n, dtype=np.int32)
    ok = np.asarray(batch["status"]) == "ok"
    maps = batch["class_map"]
    rows = [i for i, m in enumerate(maps) if ok[i] and m is not None and m.size > 0]
    done = _in_threads(lambda i: _mask_row(maps[i], labels), rows)
    for i, (png, present) in zip(rows, done, strict=True):
        masks[i], classes[i] = png, present
        mask_h[i], mask_w[i] = maps[i].shape
    out = {k: v for k, v in batch.items() if k != "class_map"}
    out.update(mask=masks, mask_width=mask_w, mask_height=mask_h, classes=classes)
    return out


def _mask_row(class_map: np.ndarray, labels: Sequence[str]) -> tuple[bytes, list[dict[str, Any]]]:
    """One map's PNG and its classes present, most pixels first."""
    img = _mask_image(class_map)
    # Pillow's histogram of an L image counts the 256 ids in one pass; np.bincount would
    # first widen the map to int64 (8 bytes a pixel).
    counts = (
        np.asarray(img.histogram())
        if img.mode == "L"
        else np.bincount(class_map.reshape(-1), minlength=len(labels))
    )
    present = np.flatnonzero(counts)
    order = present[np.argsort(-counts[present], kind="stable")]
    listed = [
        {
            "id": int(c),
            "label": labels[c] if c < len(labels) else str(c),
            "fraction": float(counts[c] / class_map.size),
        }
        for c in order
    ]
    return _png(img), listed


def _in_threads(fn: Callable[[int], _T], items: list[int]) -> list[_T]:
    """``fn`` over ``items``, in order, on up to ``torch.get_num_threads()`` threads."""
    threads = min(len(items), torch.get_num_threads())
    if threads <= 1:
        return [fn(i) for i in items]
    # A pool per batch: threads cost microseconds against a mask's milliseconds, and no
    # pool outlives a forked worker.
    with ThreadPoolExecutor(threads, thread_name_prefix="masks") as pool:
        return list(pool.map(fn, items))


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
            group = take_rows(images, idx)[:, : key[0], : key[1]]
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
