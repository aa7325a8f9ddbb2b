"""Batched JPEG decoding and resizing on the model's device, with a per-image CPU fallback.

``torchvision.io.decode_jpeg`` decodes a list of JPEG byte tensors in one call on the GPU
(nvjpeg's batched decoder); with ``device="cpu"`` the same call decodes them one by one
with libjpeg-turbo, which is how the tests run this module: everything around the
decoder (routing, fallback, EXIF orientation, resize, crop, padding) is the same code on
both. Each image is then turned upright, resized with antialiasing and center-cropped as
a float tensor on the device (torchvision's ``ImageClassification`` on tensors) and
rounded back to uint8, so the predictor normalises it on the device as usual.

Which images the device takes, and the CPU decoding of all the others, is decided by
:func:`~batchvision.stages.device_route.route_batch`, in the worker processes that read
the bytes (or here, for a batch that arrives unrouted). Here:

- the decode call is bounded by the decoded bytes it makes (``max_decode_bytes``), and
  each call's images are resized, and their full-size pixels released, before the next
  call: a batch's full-resolution images are never all alive together;
- a call that fails (the batched decoder raises on any bad image, or runs out of
  memory) is split in halves, recursively: k bad images among n cost O(k log n) calls.
  A single image the device cannot decode goes to the CPU path (``decode_one``), so its
  row is the one ``--decode-device cpu`` gives;
- images of one decoded size are resized together (one interpolate per size), after an
  integer area-average pre-shrink of downscales past ``MAX_RESIZE_FACTOR`` (16x per
  axis; :func:`preshrink_factors`): CUDA's antialiased kernels refuse large factors
  ("Too much shared memory required", past about 47x bicubic). A resize that still fails
  sends that image to the CPU path.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from batchvision.config import DEFAULT_MAX_INPUT_PIXELS, DEFAULT_MAX_PIXELS, PreprocessConfig
from batchvision.stages.batching import free_cached_memory, is_out_of_memory
from batchvision.stages.decode import _TRANSPOSED
from batchvision.stages.device_route import CPU, DEVICE, route_batch
from batchvision.stages.preprocess import decode_one, draft_floor, output_size, row_columns

logger = logging.getLogger(__name__)

_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}

#: Decoded bytes (width x height x 3 of each image) one decode call may make: bounds the
#: full-resolution pixels alive at once (256 12-megapixel photos are 9 GB).
MAX_DECODE_BYTES = 1 << 30
#: Float32 bytes one resize call may stack: many small images share a call (one launch
#: per size), a large image has one of its own (stacking it would only copy it).
MAX_RESIZE_BYTES = 64 << 20
#: The largest shrink per axis left to one antialiased resize. CUDA's antialiased kernels
#: refuse large factors ("Too much shared memory required", from about 47x bicubic);
#: 16x keeps a margin of three for bicubic, and more for bilinear.
MAX_RESIZE_FACTOR = 16
#: A shrink past ``MAX_RESIZE_FACTOR`` is first done in part by an integer factor (area
#: average), leaving the antialiased resize a shrink of at least this factor and less than
#: twice it (as Pillow's ``reducing_gap``). The composed filter is a little blurrier than
#: the direct one: with 4 the uint8 result stays within a mean of 0.6 and a maximum of 4
#: of the CPU path's for 2000x2000 to 32 (a gap of 3 gave a mean of 0.7, 2 gave 2.6;
#: tests/unit/test_device_decode.py).
PRESHRINK_GAP = 4

Decoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """CHW uint8 RGB tensors on ``device``; raises if any image cannot be decoded there."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec's.
        warnings.simplefilter("ignore", DeprecationWarning)
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))


def upright(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """``(C, H, W)`` as displayed under EXIF ``orientation`` (Pillow's ``exif_transpose``)."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return img.flip(2)
    if orientation == 3:  # ROTATE_180
        return img.flip(1, 2)
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return img.flip(1)
    if orientation == 5:  # TRANSPOSE
        return img.transpose(1, 2)
    if orientation == 6:  # ROTATE_270 (clockwise)
        return torch.rot90(img, -1, (1, 2))
    if orientation == 7:  # TRANSVERSE
        return img.transpose(1, 2).flip(1, 2)
    if orientation == 8:  # ROTATE_90 (counter-clockwise)
        return torch.rot90(img, 1, (1, 2))
    return img


def preshrink_factors(height: int, width: int, out_h: int, out_w: int) -> tuple[int, int]:
    """Integer ``(fy, fx)`` to area-average an image by before resizing it to the output.

    ``1`` for an axis that shrinks by ``MAX_RESIZE_FACTOR`` or less; otherwise the factor
    that leaves the antialiased resize a shrink of at least ``PRESHRINK_GAP`` and less
    than twice that.
    """

    def factor(size: int, out: int) -> int:
        if size <= out * MAX_RESIZE_FACTOR:
            return 1
        return size // (out * PRESHRINK_GAP)

    return factor(height, out_h), factor(width, out_w)


def resize_crop_batch(x: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 on any device to model-sized ``(N, h, w, 3)`` uint8 there.

    Antialiased resize to the size ``cfg`` gives (as the PIL path), after the integer
    pre-shrink of :func:`preshrink_factors`, then the center crop (zero-padded where the
    crop is larger), rounded back to uint8.
    """
    if cfg.resize_mode == "model":  # as decoded: the model resizes
        return x.permute(0, 2, 3, 1)
    h, w = x.shape[2:]
    rw, rh = output_size(w, h, cfg)
    mode = _MODES[cfg.interpolation]
    y = x.float()
    if (rh, rw) != (h, w):
        if mode == "nearest-exact":
            y = F.interpolate(y, size=(rh, rw), mode=mode)
        else:
            fy, fx = preshrink_factors(h, w, rh, rw)
            if fy > 1 or fx > 1:
                # Adaptive pooling: windows of fy (fx) pixels, one more where the size is
                # not a multiple, so the image's extent maps exactly onto the output's.
                y = F.adaptive_avg_pool2d(y, (h // fy, w // fx))
            y = F.interpolate(y, size=(rh, rw), mode=mode, antialias=True, align_corners=False)
    out = y.round_().clamp_(0, 255).to(torch.uint8)
    if not cfg.uncropped:
        out = _center_crop(out, cfg.crop_size, floor=cfg.crop_offset == "floor")
    return out.permute(0, 2, 3, 1)


def resize_crop_tensor(img: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """One ``(3, H, W)`` uint8 image to model-sized ``(h, w, 3)``: :func:`resize_crop_batch`."""
    return resize_crop_batch(img[None], cfg)[0]


def _center_crop(img: torch.Tensor, size: tuple[int, int], *, floor: bool) -> torch.Tensor:
    ch, cw = size
    n, c, h, w = img.shape
    if ch > h or cw > w:  # torchvision pads with zeros, then crops
        top, left = max(0, (ch - h) // 2), max(0, (cw - w) // 2)
        padded = img.new_zeros((n, c, max(ch, h), max(cw, w)))
        padded[:, :, top : top + h, left : left + w] = img
        img, (h, w) = padded, padded.shape[2:]
        floor = False
    if floor:
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
    return img[:, :, top : top + ch, left : left + cw]


@dataclass(frozen=True)
class _Jpeg:
    """One device-bound JPEG: its row, its bytes (a view of the batch's buffer), header."""

    row: int
    data: torch.Tensor
    width: int  # as stored
    height: int
    orientation: int

    @property
    def decoded_bytes(self) -> int:
        return self.width * self.height * 3

    @property
    def displayed(self) -> tuple[int, int]:
        """``(width, height)`` after the EXIF orientation, as the CPU path reports them."""
        if self.orientation in _TRANSPOSED:
            return self.height, self.width
        return self.width, self.height


def decode_batch_device(
    batch: dict[str, Any],
    preprocess: PreprocessConfig,
    device: torch.device,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = False,
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
    max_decode_bytes: int = MAX_DECODE_BYTES,
) -> dict[str, np.ndarray | torch.Tensor]:
    """``decode_batch``'s output, with ``image`` as a uint8 NHWC tensor on ``device``.

    Args:
        batch: a read batch, or one :func:`~batchvision.stages.device_route.route_batch`
            routed already (in the worker processes); an unrouted one is routed here.
        preprocess: resize, crop and interpolation.
        device: where to decode and resize.
        max_pixels: decompression-bomb guard, as ``decode_batch``'s.
        draft: reduced-size decoding, for the CPU-decoded images only.
        max_input_pixels: as ``decode_batch``'s (see ``route_batch``).
        max_decode_bytes: decoded bytes one decode call may make (at least one image).

    Returns:
        ``id``, ``path``, ``status``, ``error``, ``width``, ``height`` equal to
        ``decode_batch``'s, ``image`` on ``device`` (and ``input_height``/``input_width``
        for uncropped modes).
    """
    if DEVICE not in batch:
        batch = route_batch(
            batch,
            preprocess,
            max_pixels=max_pixels,
            draft=draft,
            max_input_pixels=max_input_pixels,
        )
    n = len(batch["id"])
    errors = np.array(batch.get("error", np.full(n, None, dtype=object)), dtype=object)
    width = np.zeros(n, dtype=np.int32)
    height = np.zeros(n, dtype=np.int32)
    pieces: list[tuple[list[int], torch.Tensor]] = []  # rows and their (k, h, w, 3) images
    _take_cpu_rows(batch[CPU], preprocess, device, errors, width, height, pieces)
    jpegs = _jpegs(batch[DEVICE])
    failed: list[_Jpeg] = []
    for decoded in _decode_pieces(jpegs, device, max_decode_bytes):
        # Resized as each call returns: its full-size pixels go before the next call.
        done, unsized = _resize_groups(decoded, preprocess)
        failed.extend(unsized)
        for group, images in done:
            pieces.append(([job.row for job in group], images))
            for job in group:
                width[job.row], height[job.row] = job.displayed
    if failed:
        logger.debug("decode: %d of %d image(s) left to the CPU by the device", len(failed), n)
    floor = draft_floor(preprocess) if draft else None
    for job in failed:
        arr, errors[job.row], width[job.row], height[job.row] = decode_one(
            job.data.numpy().tobytes(),
            preprocess,
            max_pixels=max_pixels,
            min_size=floor,
            max_input_pixels=max_input_pixels,
        )
        if arr is not None:
            pieces.append(([job.row], torch.tensor(arr[None], device=device)))
    out: dict[str, np.ndarray | torch.Tensor] = {**row_columns(batch, errors, width, height)}
    if preprocess.uncropped:
        out["image"], out["input_height"], out["input_width"] = _stack_padded(pieces, n, device)
    else:
        ch, cw = preprocess.crop_size
        stacked = torch.zeros((n, ch, cw, 3), dtype=torch.uint8, device=device)
        for rows, images in pieces:
            stacked[torch.tensor(rows, device=device)] = images
        out["image"] = stacked
    return out


def _jpegs(device_part: dict[str, Any]) -> list[_Jpeg]:
    """The routed batch's device JPEGs, each a view of the one byte buffer (no copy)."""
    data = torch.as_tensor(device_part["data"])
    columns = ("rows", "offsets", "lengths", "width", "height", "orientation")
    return [
        _Jpeg(row, data[offset : offset + length], w, h, orientation)
        for row, offset, length, w, h, orientation in zip(
            *(np.asarray(device_part[c]).tolist() for c in columns), strict=True
        )
    ]


def _take_cpu_rows(
    cpu: dict[str, Any],
    cfg: PreprocessConfig,
    device: torch.device,
    errors: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    pieces: list[tuple[list[int], torch.Tensor]],
) -> None:
    """The rows decoded on the CPU (by ``route_batch``) into the batch's columns."""
    rows = np.asarray(cpu["rows"]).tolist()
    if not rows:
        return
    errors[rows] = cpu["error"]
    width[rows], height[rows] = cpu["width"], cpu["height"]
    ok = [j for j, e in enumerate(cpu["error"]) if e is None]
    images = torch.as_tensor(cpu["image"])
    if not cfg.uncropped:
        if ok:
            pieces.append(([rows[j] for j in ok], images[ok].to(device)))
        return
    for j in ok:
        h, w = int(cpu["input_height"][j]), int(cpu["input_width"][j])
        pieces.append(([rows[j]], images[j, :h, :w][None].to(device)))


def _decode_pieces(
    jpegs: list[_Jpeg], device: torch.device, max_bytes: int
) -> Iterator[list[tuple[_Jpeg, torch.Tensor | None]]]:
    """Each decode call's images (``None``: not decodable there), call after call.

    Calls hold at most ``max_bytes`` of decoded pixels (one image at least); a failing
    call is split in halves (:func:`_decode_halving`).
    """
    chunk: list[_Jpeg] = []
    total = 0
    for job in jpegs:
        if chunk and total + job.decoded_bytes > max_bytes:
            yield from _decode_halving(chunk, device)
            chunk, total = [], 0
        chunk.append(job)
        total += job.decoded_bytes
    if chunk:
        yield from _decode_halving(chunk, device)


def _decode_halving(
    jpegs: list[_Jpeg], device: torch.device
) -> Iterator[list[tuple[_Jpeg, torch.Tensor | None]]]:
    """One batched call for ``jpegs``; if it fails, each half on its own, recursively.

    The batched decoder raises on the first bad image, so k bad images among n cost
    about 2 k log2(n) calls. Out of memory halves the call the same way; only a single
    image that runs out of memory goes to the CPU (with a warning), as does a single
    image the device cannot decode.
    """
    try:
        decoded: list[torch.Tensor | None] = list(_decode_jpegs([j.data for j in jpegs], device))
    except Exception as e:
        oom = is_out_of_memory(e)
        if oom:
            free_cached_memory(device)
        if len(jpegs) == 1:
            if oom:
                w, h = jpegs[0].displayed
                logger.warning(
                    "decode: out of %s memory decoding one %dx%d JPEG; decoding it on the CPU",
                    device,
                    w,
                    h,
                )
            decoded = [None]
        else:
            decoded = []
    if decoded:
        piece = list(zip(jpegs, decoded, strict=True))
        del decoded  # the consumer empties ``piece``: then nothing here holds the pixels
        yield piece
        return
    mid = len(jpegs) // 2
    yield from _decode_halving(jpegs[:mid], device)
    yield from _decode_halving(jpegs[mid:], device)


def _resize_groups(
    decoded: list[tuple[_Jpeg, torch.Tensor | None]], cfg: PreprocessConfig
) -> tuple[list[tuple[list[_Jpeg], torch.Tensor]], list[_Jpeg]]:
    """Upright, resized and cropped images, one resize call per decoded size.

    Empties ``decoded``, and releases each size's full-size images once they are
    resized. Returns ``(jpegs, (k, h, w, 3) images)`` per resize call, and the JPEGs
    left to the CPU path: not decoded (``None``), or whose resize failed (alone).
    """
    failed = [job for job, img in decoded if img is None]
    groups = _by_size(decoded)
    decoded.clear()
    done: list[tuple[list[_Jpeg], torch.Tensor]] = []
    while groups:
        (h, w), members = groups.popitem()
        per_call = max(1, MAX_RESIZE_BYTES // (h * w * 3 * 4))
        for start in range(0, len(members), per_call):
            chunk = members[start : start + per_call]
            out = _resize(chunk, cfg)
            if out is None and len(chunk) > 1:  # find the image that fails
                for one in chunk:
                    if (single := _resize([one], cfg)) is not None:
                        done.append(([one[0]], single))
                    else:
                        failed.append(one[0])
            elif out is None:
                failed.append(chunk[0][0])
            else:
                done.append(([job for job, _ in chunk], out))
        del members
    return done, failed


def _by_size(
    decoded: list[tuple[_Jpeg, torch.Tensor | None]],
) -> dict[tuple[int, int], list[tuple[_Jpeg, torch.Tensor]]]:
    """The decoded images, upright, by their ``(height, width)``."""
    groups: dict[tuple[int, int], list[tuple[_Jpeg, torch.Tensor]]] = {}
    for job, img in decoded:
        if img is not None:
            up = upright(img, job.orientation)
            groups.setdefault((up.shape[1], up.shape[2]), []).append((job, up))
    return groups


def _resize(chunk: list[tuple[_Jpeg, torch.Tensor]], cfg: PreprocessConfig) -> torch.Tensor | None:
    """:func:`resize_crop_batch` of the images, or ``None`` (logged) where it fails."""
    try:
        images = [img for _, img in chunk]
        return resize_crop_batch(images[0][None] if len(images) == 1 else torch.stack(images), cfg)
    except Exception as e:
        if is_out_of_memory(e):
            free_cached_memory(chunk[0][1].device)
        if len(chunk) == 1:
            w, h = chunk[0][0].displayed
            logger.warning(
                "decode: resizing a %dx%d image on the device failed (%s: %s); "
                "decoding it on the CPU",
                w,
                h,
                type(e).__name__,
                e,
            )
        return None


def _stack_padded(
    pieces: list[tuple[list[int], torch.Tensor]], n: int, device: torch.device
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Different-sized images zero-padded at the top left, as ``_pad_stack`` does on numpy."""
    hs = np.zeros(n, dtype=np.int32)
    ws = np.zeros(n, dtype=np.int32)
    for rows, images in pieces:
        hs[rows], ws[rows] = images.shape[1], images.shape[2]
    out = torch.zeros(
        (n, max(1, int(hs.max(initial=1))), max(1, int(ws.max(initial=1))), 3),
        dtype=torch.uint8,
        device=device,
    )
    for rows, images in pieces:
        out[torch.tensor(rows, device=device), : images.shape[1], : images.shape[2]] = images
    return out, hs, ws
