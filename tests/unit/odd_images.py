"""Builders of odd image bytes for the stage-level tests: every builder is deterministic.

Everything is made in memory with Pillow, numpy, zlib and struct, so that a test states
exactly which oddity it feeds to the decoder.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112

#: What each EXIF orientation asks a viewer to do to the stored pixels to show them upright.
ORIENTATION_OPS: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

#: Quadrant colours of :func:`quadrants`: top-left, top-right, bottom-left, bottom-right.
QUADRANT_COLOURS = ((220, 30, 30), (30, 200, 40), (30, 40, 220), (240, 230, 30))


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    """``img`` saved as ``fmt`` into bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **params)  # type: ignore[arg-type]
    return buf.getvalue()


def solid(colour: tuple[int, ...], size: tuple[int, int] = (16, 16), mode: str = "RGB"):
    """A one-colour image."""
    return Image.new(mode, size, colour)


def quadrants(width: int = 64, height: int = 48) -> Image.Image:
    """An asymmetric RGB pattern: four differently coloured quadrants.

    Each of the 8 EXIF orientations moves the colours to a different arrangement, so the
    corner colours identify which transform was applied.
    """
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    hh, hw = height // 2, width // 2
    arr[:hh, :hw] = QUADRANT_COLOURS[0]
    arr[:hh, hw:] = QUADRANT_COLOURS[1]
    arr[hh:, :hw] = QUADRANT_COLOURS[2]
    arr[hh:, hw:] = QUADRANT_COLOURS[3]
    return Image.fromarray(arr)


def corner_colours(img: Image.Image, inset: int = 6) -> list[tuple[int, ...]]:
    """Colours near the four corners (TL, TR, BL, BR), away from JPEG edge ringing."""
    w, h = img.size
    points = [(inset, inset), (w - 1 - inset, inset), (inset, h - 1 - inset)]
    points.append((w - 1 - inset, h - 1 - inset))
    return [tuple(img.getpixel(p)) for p in points]  # type: ignore[arg-type]


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A cheap photo-like RGB image: smooth colour field, a sharp-edged patch, mild noise."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    field = Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(field).astype(np.int16)
    arr[height // 3 : height // 2, width // 4 : width // 2] = (250, 20, 40)
    # Sensor-like noise from one tile, so that even 12 Mpixel images stay cheap to make.
    tile = rng.normal(0.0, 4.0, (min(height, 128), min(width, 128), 3)).astype(np.int16)
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    arr += np.tile(tile, reps)[:height, :width]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def with_orientation(
    img: Image.Image, orientation: int, fmt: str = "JPEG", **params: object
) -> bytes:
    """``img`` encoded with an EXIF Orientation tag (stored pixels are ``img`` as is)."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return encode(img, fmt, exif=exif.tobytes(), **params)


@functools.lru_cache(maxsize=4)
def large_jpeg(width: int = 4000, height: int = 3000, orientation: int | None = None) -> bytes:
    """A large photo-like JPEG (cached: encoding 12 Mpixels costs a fraction of a second)."""
    img = photo(width, height, seed=7)
    if orientation is None:
        return encode(img, "JPEG", quality=90)
    return with_orientation(img, orientation, quality=90)


# --- hand-written PNG headers ------------------------------------------------------------------


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_header(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A PNG that claims ``width`` x ``height`` RGB pixels but carries almost no pixel data.

    Only the header is real: decoding the pixels would fail (or take enormous memory), so a
    ``too_large`` answer proves the size was refused from the header alone.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = idat if idat is not None else zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    )


# --- damaged and non-image content -------------------------------------------------------------


def truncated(data: bytes, fraction: float = 0.5) -> bytes:
    """The first ``fraction`` of ``data``: a download or copy cut short."""
    return data[: int(len(data) * fraction)]


def _jpeg_until_scan(img: Image.Image) -> tuple[bytes, bytes]:
    """A baseline JPEG split into its headers (through the SOS segment) and the scan data."""
    data = encode(img, "JPEG", quality=90)
    sos = data.find(b"\xff\xda")
    length = int.from_bytes(data[sos + 2 : sos + 4], "big")
    return data[: sos + 2 + length], data[sos + 2 + length :]


def jpeg_random_scan(seed: int = 0, n: int = 3000) -> bytes:
    """Valid JPEG headers followed by random bytes instead of the compressed scan."""
    head, _ = _jpeg_until_scan(photo(96, 64, seed=1))
    return head + np.random.default_rng(seed).bytes(n) + b"\xff\xd9"


def jpeg_undefined_huffman_table() -> bytes:
    """A JPEG whose scan names Huffman tables that were never defined: a fatal libjpeg error."""
    data = bytearray(encode(photo(96, 64, seed=1), "JPEG", quality=90))
    sos = data.find(b"\xff\xda")
    for i in range(data[sos + 4]):  # Ns components, each (Cs, Td<<4 | Ta)
        data[sos + 5 + 2 * i + 1] = 0x33
    return bytes(data)


def png_damaged_pixels(seed: int = 0) -> bytes:
    """A PNG with valid chunks and CRCs whose compressed pixel data is garbage."""
    rng = np.random.default_rng(seed)
    good = encode(photo(96, 64, seed=2), "PNG")
    idat = good.find(b"IDAT")
    length = int.from_bytes(good[idat - 4 : idat], "big")
    payload = bytearray(good[idat + 4 : idat + 4 + length])
    payload[10:200] = rng.bytes(190)
    return good[: idat - 4] + _chunk(b"IDAT", bytes(payload)) + good[idat + 4 + length + 4 :]


TEXT = b"id,label\n1,cat\n2,dog\nthis is a text file, not an image\n"
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n"
HTML = b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n"


# --- modes and multi-frame files ---------------------------------------------------------------


def i16_png(values: Sequence[Sequence[int]]) -> bytes:
    """A 16-bit greyscale PNG of the given values (opens as Pillow mode ``I;16``)."""
    return encode(Image.fromarray(np.asarray(values, dtype=np.uint16)), "PNG")


def tiff_of(arr: np.ndarray) -> bytes:
    """A TIFF of a 2-D array (int32 -> mode ``I``, float32 -> mode ``F``)."""
    return encode(Image.fromarray(arr), "TIFF")


def animated(fmt: str, colours: Sequence[tuple[int, int, int]], size=(24, 16)) -> bytes:
    """A multi-frame GIF/WebP whose frames are solid ``colours``, in order."""
    frames = [Image.new("RGB", size, c) for c in colours]
    params: dict[str, object] = {"save_all": True, "append_images": frames[1:], "duration": 100}
    params["loop"] = 0
    if fmt == "WEBP":
        params["lossless"] = True
    return encode(frames[0], fmt, **params)


def palette_with_transparency(size=(8, 8)) -> bytes:
    """A palette PNG (``P`` + tRNS): index 0 is transparent red, index 1 opaque blue.

    The left half uses index 0, the right half index 1.
    """
    img = Image.new("P", size, 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    img.paste(1, (size[0] // 2, 0, size[0], size[1]))
    return encode(img, "PNG", transparency=0)
