"""Bytes to an upright RGB Pillow image, with every failure turned into a coded error.

Decoding never reads files: it takes bytes, so the same function serves local files,
object storage and Ray blocks.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from batchvision.errors import RowError

_ORIENTATION = ExifTags.Base.Orientation
# EXIF orientations 5-8 swap width and height.
_TRANSPOSED = frozenset({5, 6, 7, 8})
# EXIF orientations whose display mirrors the stored x (left-right) or y axis.
_FLIPS_X = frozenset({2, 3, 6, 7})
_FLIPS_Y = frozenset({3, 4, 7, 8})
# JPEG, and MPO (multi-picture JPEG, common from phone cameras) decode through libjpeg.
_DRAFTABLE = frozenset({"JPEG", "MPO"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WHITE = (255, 255, 255, 255)
# What Pillow raises on malformed input, across its plugins (struct.error: bad headers).
_DECODE_FAILURES = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


class DecodeError(RowError):
    """Bytes that cannot become an image (``empty``, ``not_image``, ``too_large``, ...)."""


@dataclass(frozen=True)
class Decoded:
    """A decoded image and its size as displayed (after EXIF rotation, before any reduction)."""

    image: Image.Image
    width: int
    height: int
    #: After a reduced-size (draft) decode: where the full image lies in ``image``'s pixel
    #: coordinates, ``(left, top, right, bottom)``. DCT scaling rounds each side up to
    #: whole pixels, so the last pixel covers part of the image only, and an EXIF rotation
    #: can move that partial pixel to the left or top. ``None``: decoded at full size.
    region: tuple[float, float, float, float] | None = None


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    min_size: tuple[int, int] | None = None,
    check_size: Callable[[int, int], None] | None = None,
) -> Decoded:
    """Decode ``data`` into an upright RGB image.

    Args:
        data: the file's bytes; the content, not any file name, decides the format.
        max_pixels: images with more pixels than this are refused from their header,
            before any pixel is decoded (decompression-bomb guard).
        min_size: ``(width, height)`` the decoded image must keep at least, upright. When
            given, large JPEGs are decoded at a reduced scale (libjpeg DCT scaling) that
            still covers it; the reported width/height stay those of the full image.
        check_size: called with the header's ``(width, height)`` (as stored, before any
            EXIF rotation) before any pixel is decoded; raises ``DecodeError`` to refuse
            the image (the preprocessing's own bound on what it makes of it).

    Raises:
        DecodeError: with code ``empty``, ``not_image``, ``too_large``, ``truncated``
            or ``corrupt``.
    """
    if not data:
        raise DecodeError("empty", "file is empty (0 bytes)")
    img = _open(data, max_pixels)
    if check_size is not None:
        check_size(*img.size)
    try:
        if img.format not in _DRAFTABLE:
            # Only JPEG needs draft() before load(). Pillow's PNG reads EXIF by loading the
            # pixels, and a load that fails there must raise, not leave a black image; TIFF's
            # load applies the EXIF orientation itself, so the size must be read after it.
            img.load()
        orientation = _orientation(img)
        full_w, full_h = img.size
        if orientation in _TRANSPOSED:
            full_w, full_h = full_h, full_w
        if min_size is not None and img.format in _DRAFTABLE:
            want = min_size[::-1] if orientation in _TRANSPOSED else min_size
            img.draft(None, (max(1, want[0]), max(1, want[1])))
        img.load()
        if orientation not in (None, 1):
            img = ImageOps.exif_transpose(img)
        region = None
        if img.size != (full_w, full_h):
            region = _draft_region(img.size, (full_w, full_h), orientation)
        return Decoded(image=to_rgb(img), width=full_w, height=full_h, region=region)
    except DecodeError:
        raise
    except _DECODE_FAILURES as e:
        raise _classify(e) from e


def _draft_region(
    size: tuple[int, int], full: tuple[int, int], orientation: int | None
) -> tuple[float, float, float, float]:
    """The full image's extent in a drafted image of ``size`` (both upright)."""
    (dw, dh), (w, h) = size, full
    scale = next((s for s in (2, 4, 8) if -(-w // s) == dw), w / dw)
    left = (dw * scale - w) / scale if orientation in _FLIPS_X else 0.0
    top = (dh * scale - h) / scale if orientation in _FLIPS_Y else 0.0
    return (left, top, left + w / scale, top + h / scale)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    # --max-pixels is the one limit, checked below from the header. Pillow's own guard (a
    # process-wide setting: it warns above MAX_IMAGE_PIXELS, 89 megapixels by default, and
    # refuses above twice that) would otherwise decide first. It is set to --max-pixels
    # rather than switched off, so Pillow's checks of sizes found while decoding (GIF
    # frames, ICO/ICNS entries) still refuse anything past twice our limit. Set at every
    # decode: then it holds in each process that decodes (DataLoader workers, Ray tasks)
    # whatever else ran there.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            # Our own check below replaces Pillow's warning (between 1x and 2x the limit).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # more than twice --max-pixels
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{found.group(1)} pixels" if found else "the image size"
        raise DecodeError("too_large", f"{size} exceeds --max-pixels {max_pixels}") from e
    except UnidentifiedImageError as e:
        raise DecodeError("not_image", "content is not a recognised image format") from e
    except _DECODE_FAILURES as e:
        raise _classify(e) from e
    w, h = img.size
    if w * h > max_pixels:
        raise DecodeError(
            "too_large", f"{w}x{h} = {w * h} pixels exceeds --max-pixels {max_pixels}"
        )
    if w < 1 or h < 1:
        raise DecodeError("corrupt", f"image has an empty size {w}x{h}")
    return img


def _orientation(img: Image.Image) -> int | None:
    # JPEG/TIFF/WebP expose EXIF from the header; reading it for PNG may decode the
    # image, which is fine since the size was checked already.
    try:
        value = img.getexif().get(_ORIENTATION)
    except Exception:
        return None  # unreadable EXIF must not cost the image
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _classify(e: BaseException) -> DecodeError:
    text = str(e).strip() or type(e).__name__
    lower = text.lower()
    # "broken data stream" is a decoder (libjpeg/zlib/LZW) error on damaged data; cut-off
    # files are reported by Pillow as "truncated" instead.
    if "truncat" in lower or isinstance(e, EOFError):
        return DecodeError("truncated", text)
    return DecodeError("corrupt", text)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha composited on white, 16/32-bit scaled to 8 bits."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(img), mode), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return img.convert("RGB")


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    if mode.startswith("I;16") or arr.dtype == np.uint16:
        return (arr.astype(np.uint32) // 257).astype(np.uint8)
    if mode == "F":
        return np.clip(arr, 0, 255).astype(np.uint8)
    # 32-bit integer images: 16-bit content is common (PNG 'I' mode), keep it in range.
    if arr.size and arr.max() > 255:
        return np.clip(arr // 257, 0, 255).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)
