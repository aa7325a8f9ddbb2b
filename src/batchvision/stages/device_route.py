"""Which images the device decoder takes, decided where the bytes are read.

The device decode path (``--decode-device cuda``) sends sequential 8-bit RGB or grayscale
JPEGs to torchvision's batched nvJPEG decoder. Deciding which ones (a header and EXIF
parse per image) and decoding all the others on the CPU is per-image work that must not
run on the model's thread: :func:`route_batch` does both where the bytes are read (the
local engine's worker processes), so the model's process receives only the device's
JPEGs, as one byte buffer with their headers, and every other image already decoded to
the model's size.

The routes:

- device: JPEG and MPO (multi-picture JPEG, as Pillow reports many camera files; the
  device decodes its first picture, as Pillow does), baseline or extended sequential
  Huffman, 8-bit, RGB or grayscale, within ``max_pixels`` and whose whole resize (the
  device resizes before cropping) fits ``max_input_pixels``;
- CPU, in the worker: everything else, through ``decode_batch`` (``decode_one``), so its
  rows (status, error code, width, height) are those of ``--decode-device cpu``.
  Progressive JPEGs (SOF2) are among them: torchvision decodes them with libjpeg on the
  CPU anyway, one at a time under a global lock.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image

from batchvision.config import DEFAULT_MAX_INPUT_PIXELS, DEFAULT_MAX_PIXELS, PreprocessConfig
from batchvision.stages.decode import _ORIENTATION, _TRANSPOSED
from batchvision.stages.preprocess import decode_batch, output_size

#: A routed batch carries its device JPEGs under this key, in place of ``bytes``: ``rows``
#: (their rows in the batch), ``offsets``/``lengths`` (where each lies in ``data``, all
#: their bytes in one uint8 buffer), ``width``/``height`` (as stored) and ``orientation``.
DEVICE = "_device"
#: ... and under this one ``decode_batch``'s output for the rows decoded on the CPU, with
#: ``rows``.
CPU = "_cpu"

# Start-of-frame markers the device decoder takes: baseline and extended sequential,
# Huffman coded. Progressive (0xC2) and arithmetic-coded frames go to the CPU.
_SEQUENTIAL = frozenset({0xC0, 0xC1})
# Every other start-of-frame marker (0xC4 DHT, 0xC8 JPG and 0xCC DAC are not frames).
_OTHER_FRAMES = frozenset(range(0xC2, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def frame_type(data: bytes) -> tuple[int, int] | None:
    """``(marker, bit depth)`` of the JPEG's start-of-frame segment, or ``None``.

    Walks the marker segments from the start of the file, as a decoder does, up to the
    first frame header; ``None`` when there is none before the scan or the file is cut.
    """
    if data[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or the scan before any frame
            return None
        if marker in _SEQUENTIAL or marker in _OTHER_FRAMES:
            return (marker, data[pos + 4]) if pos + 4 < end else None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def device_decodable(data: bytes | None, max_pixels: int) -> tuple[int, int, int] | None:
    """``(width, height, orientation)`` when the device decoder can take ``data``.

    ``width``/``height`` are as displayed (after the EXIF orientation), as the CPU path
    reports them. Reads the header only. Anything else (other formats, progressive or
    arithmetic-coded or 12-bit JPEGs, CMYK/YCCK, too many pixels, an unreadable header
    or EXIF block) returns ``None`` and goes to the CPU path, which decides its row
    exactly as ``--decode-device cpu`` does.
    """
    if not data or frame_type(data) not in ((0xC0, 8), (0xC1, 8)):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        if img.format not in ("JPEG", "MPO") or img.mode not in ("RGB", "L"):
            return None
        w, h = img.size
        if w < 1 or h < 1 or w * h > max_pixels:
            return None
        value = img.getexif().get(_ORIENTATION)
        orientation = int(value) if isinstance(value, int) and 1 <= value <= 8 else 1
        return (h, w, orientation) if orientation in _TRANSPOSED else (w, h, orientation)
    except Exception:  # the CPU path reports it as its error row
        return None


def route_batch(
    batch: dict[str, Any],
    preprocess: PreprocessConfig,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = False,
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
) -> dict[str, Any]:
    """A read batch split between the device decoder and the CPU, the CPU's part decoded.

    Args:
        batch: a read batch (``id``, ``path``, ``bytes``, ``error``, and any other column,
            which is kept).
        preprocess: the resize and crop, for the CPU-decoded images and for the bound on
            the device's whole resize.
        max_pixels: decompression-bomb guard, as ``decode_batch``'s.
        draft: reduced-size decoding of the CPU-decoded JPEGs (the device decodes at
            full size).
        max_input_pixels: as ``decode_batch``'s; the device resizes the whole image
            before cropping, so an image whose full resize exceeds it is decoded on the
            CPU, which resamples only the crop (or refuses the image as it would anyway).

    Returns:
        ``batch`` without ``bytes``, with :data:`DEVICE` (the device's JPEGs) and
        :data:`CPU` (``decode_batch``'s output for every other row without a read
        error, and their ``rows``).
    """
    n = len(batch["id"])
    errors = batch.get("error")
    if errors is None:
        errors = np.full(n, None, dtype=object)
    rows: list[int] = []
    headers: list[tuple[int, int, int]] = []
    cpu_rows: list[int] = []
    for i, data in enumerate(batch["bytes"]):
        if errors[i] is not None:
            continue
        header = device_decodable(data, max_pixels)
        if header is not None and _full_resize_pixels(header, preprocess) <= max_input_pixels:
            rows.append(i)
            headers.append(header)
        else:
            cpu_rows.append(i)
    datas = [batch["bytes"][i] for i in rows]
    lengths = np.array([len(d) for d in datas], dtype=np.int64)
    offsets = np.zeros(len(datas), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    buffer = np.empty(int(lengths.sum()), dtype=np.uint8)
    for offset, d in zip(offsets, datas, strict=True):
        buffer[offset : offset + len(d)] = np.frombuffer(d, dtype=np.uint8)
    stored = [(h, w) if o in _TRANSPOSED else (w, h) for w, h, o in headers]
    device = {
        "rows": np.array(rows, dtype=np.int64),
        "offsets": offsets,
        "lengths": lengths,
        "width": np.array([s[0] for s in stored], dtype=np.int64),
        "height": np.array([s[1] for s in stored], dtype=np.int64),
        "orientation": np.array([h[2] for h in headers], dtype=np.int64),
        "data": buffer,
    }
    take = np.array(cpu_rows, dtype=np.int64)
    sub = {key: np.asarray(batch[key], dtype=object)[take] for key in ("id", "path", "bytes")}
    sub["error"] = np.full(len(cpu_rows), None, dtype=object)
    cpu = decode_batch(
        sub, preprocess, max_pixels=max_pixels, draft=draft, max_input_pixels=max_input_pixels
    )
    out = {key: value for key, value in batch.items() if key != "bytes"}
    return {**out, DEVICE: device, CPU: {**cpu, "rows": take}}


def _full_resize_pixels(header: tuple[int, int, int], cfg: PreprocessConfig) -> int:
    rw, rh = output_size(header[0], header[1], cfg)
    return rw * rh
