"""Thumbnails, mask overlays and detection boxes: bytes in, small embeddable JPEG/PNG data URIs out.

Decoding reuses ``stages.decode`` (EXIF orientation, JPEG draft scaling, bomb guard), so
the report shows each image the way the model saw it.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from batchvision.config import DEFAULT_MAX_PIXELS
from batchvision.stages.decode import decode_image

ALPHA = 0.5


def thumbnail(data: bytes, size: int) -> Image.Image:
    """``data`` decoded upright and shrunk to ``size`` pixels on its longest side.

    Raises:
        DecodeError: bytes that are not a decodable image.
    """
    decoded = decode_image(data, max_pixels=DEFAULT_MAX_PIXELS, min_size=(size, size))
    img = decoded.image
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    return img


def data_uri(img: Image.Image, fmt: str = "JPEG") -> str:
    """``img`` as a ``data:`` URI (JPEG for photos, PNG for masks)."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=80)
    else:
        img.save(buf, fmt, optimize=False)
    mime = "jpeg" if fmt == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def decode_mask(data: bytes) -> np.ndarray:
    """A class-map PNG (mode L, P or 16-bit) as a 2-D integer array of class ids.

    Raises:
        ValueError: bytes that are not a single-channel image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise ValueError(f"mask has mode {img.mode}, expected a single-channel map")
            arr = np.asarray(img)
    except (OSError, SyntaxError) as e:
        raise ValueError(f"mask is not a readable PNG: {e}") from e
    return arr.astype(np.int64)


def palette(ids: np.ndarray) -> np.ndarray:
    """A distinct RGB colour per class id (the PASCAL VOC bit-interleaved palette).

    Id 0 is black, the convention for background; the palette is defined for any id, so
    models with thousands of classes still get stable colours.
    """
    ids = np.asarray(ids, dtype=np.int64)
    rgb = np.zeros((*ids.shape, 3), dtype=np.int64)
    c = ids.copy()
    for j in range(8):
        for ch in range(3):
            rgb[..., ch] |= ((c >> ch) & 1) << (7 - j)
        c >>= 3
    return rgb.astype(np.uint8)


def hex_colour(class_id: int) -> str:
    """The palette colour of ``class_id`` as ``#rrggbb`` (for the legend)."""
    r, g, b = (int(v) for v in palette(np.array([class_id]))[0])
    return f"#{r:02x}{g:02x}{b:02x}"


def overlay(base: Image.Image | None, mask: np.ndarray, size: int) -> Image.Image:
    """``mask``'s palette colours alpha-blended over ``base``, ``size`` px longest side.

    The mask is resized with nearest-neighbour sampling (class ids must not be blended);
    without ``base`` (image unavailable) the blend is over mid grey.
    """
    mh, mw = mask.shape
    if base is not None:
        w, h = base.size
    else:
        scale = size / max(mw, mh)
        w, h = max(1, round(mw * scale)), max(1, round(mh * scale))
    rows = np.minimum((np.arange(h) * mh) // h, mh - 1)
    cols = np.minimum((np.arange(w) * mw) // w, mw - 1)
    colours = palette(mask[rows][:, cols]).astype(np.float32)
    under = (
        np.asarray(base.convert("RGB"), dtype=np.float32)
        if base is not None
        else np.full((h, w, 3), 128, np.float32)
    )
    blend = (1 - ALPHA) * under + ALPHA * colours
    return Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8), "RGB")


def draw_boxes(base: Image.Image, detections: list[dict[str, Any]], scale: float) -> Image.Image:
    """``detections`` (boxes in the displayed image's pixels) drawn on ``base`` (that image
    shrunk by ``scale``), each in its label's palette colour, with its label and score."""
    from PIL import ImageDraw

    img = base.convert("RGB")
    draw = ImageDraw.Draw(img)
    for d in detections:
        colour = hex_colour(int(d["label_id"]) + 1)  # id 0's palette colour is black
        box = [float(d[k]) * scale for k in ("x0", "y0", "x1", "y1")]
        box[2], box[3] = max(box[0], box[2]), max(box[1], box[3])
        draw.rectangle(box, outline=colour, width=2)
        draw.text((box[0] + 2, box[1] + 1), f"{d.get('label')} {float(d['score']):.2f}",
                  fill=colour)  # fmt: skip
    return img
