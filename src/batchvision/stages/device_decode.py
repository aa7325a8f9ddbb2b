"""Batched JPEG decoding and resizing on the model's device, with a per-image CPU fallback.

``torchvision.io.decode_jpeg`` decodes a list of JPEG byte tensors in one call on the GPU
(nvjpeg's batched decoder); with ``device="cpu"`` the same call decodes them one by one
with libjpeg-turbo, which is how the tests run this module: everything around the
decoder (selection, fallback, EXIF orientation, resize, crop, padding) is the same code
on both. Each image is then turned upright, resized with antialiasing and center-cropped
as a float tensor on the device (torchvision's ``ImageClassification`` on tensors) and
rounded back to uint8, so the predictor normalises it on the device as usual.

Only what the device decoder reads as the CPU path does goes to it: RGB or grayscale
JPEGs (no CMYK/YCCK) within ``max_pixels``; the EXIF orientation is applied on the device
with flips and rotations, as Pillow's ``exif_transpose`` does. Everything else, and every
image the batched decoder fails on, goes through the CPU path (``decode_one``, as in
``decode_batch``) one image at a time, so error rows carry the very same status and error
code as with ``--decode-device cpu``.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from batchvision.config import DEFAULT_MAX_INPUT_PIXELS, DEFAULT_MAX_PIXELS, PreprocessConfig
from batchvision.stages.decode import _ORIENTATION, _TRANSPOSED
from batchvision.stages.preprocess import decode_one, draft_floor, output_size, row_columns

logger = logging.getLogger(__name__)

_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}


def device_decodable(data: bytes | None, max_pixels: int) -> tuple[int, int, int] | None:
    """``(width, height, orientation)`` when the device decoder can take ``data``.

    ``width``/``height`` are as displayed (after the EXIF orientation), as the CPU path
    reports them. Reads the header only. Anything else (other formats, CMYK JPEGs, too
    many pixels, an unreadable header or EXIF block) returns ``None`` and goes to the CPU
    path, which decides its row exactly as ``--decode-device cpu`` does.
    """
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        w, h = img.size
        if w < 1 or h < 1 or w * h > max_pixels:
            return None
        value = img.getexif().get(_ORIENTATION)
        orientation = int(value) if isinstance(value, int) and 1 <= value <= 8 else 1
        return (h, w, orientation) if orientation in _TRANSPOSED else (w, h, orientation)
    except Exception:  # the CPU path reports it as its error row
        return None


def _decode_jpegs(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """CHW uint8 tensors on ``device``; ``None`` where an image cannot be decoded there."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec's.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass  # one bad image fails the whole call: find it, one at a time
        out: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


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


def resize_crop_tensor(img: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """``(3, H, W)`` uint8 on any device to the model-sized ``(h, w, 3)`` uint8, on that device.

    Antialiased resize to the size ``cfg`` gives (as the PIL path), then the center crop
    (zero-padded where the crop is larger), rounded back to uint8.
    """
    if cfg.resize_mode == "model":  # as decoded: the model resizes
        return img.permute(1, 2, 0)
    _, h, w = img.shape
    rw, rh = output_size(w, h, cfg)
    mode = _MODES[cfg.interpolation]
    x = img[None].float()
    if (rh, rw) != (h, w):
        if mode == "nearest-exact":
            x = F.interpolate(x, size=(rh, rw), mode=mode)
        else:
            x = F.interpolate(x, size=(rh, rw), mode=mode, antialias=True, align_corners=False)
    out = x[0].round_().clamp_(0, 255).to(torch.uint8)
    if not cfg.uncropped:
        out = _center_crop(out, cfg.crop_size, floor=cfg.crop_offset == "floor")
    return out.permute(1, 2, 0)


def _center_crop(img: torch.Tensor, size: tuple[int, int], *, floor: bool) -> torch.Tensor:
    ch, cw = size
    _, h, w = img.shape
    if ch > h or cw > w:  # torchvision pads with zeros, then crops
        top, left = max(0, (ch - h) // 2), max(0, (cw - w) // 2)
        padded = img.new_zeros((3, max(ch, h), max(cw, w)))
        padded[:, top : top + h, left : left + w] = img
        img, (h, w) = padded, padded.shape[1:]
        floor = False
    if floor:
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
    return img[:, top : top + ch, left : left + cw]


def decode_batch_device(
    batch: dict[str, np.ndarray],
    preprocess: PreprocessConfig,
    device: torch.device,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = False,
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
) -> dict[str, np.ndarray | torch.Tensor]:
    """``decode_batch``'s output, with ``image`` as a uint8 NHWC tensor on ``device``.

    JPEGs the device can decode go through it in one batched call; the others (and any it
    fails on) through the CPU decoder, one by one, with the same rows as ``decode_batch``.
    ``draft`` applies to the CPU fallback only (the device decodes at full size). The
    device resizes the whole image before cropping, so an image whose full resize exceeds
    ``max_input_pixels`` goes to the CPU path too (which resamples only the crop, or
    refuses the image as ``--decode-device cpu`` does).
    """
    n = len(batch["id"])
    errors = np.array(batch.get("error", np.full(n, None, dtype=object)), dtype=object)
    width = np.zeros(n, dtype=np.int32)
    height = np.zeros(n, dtype=np.int32)
    headers = {
        i: header
        for i, data in enumerate(batch["bytes"])
        if errors[i] is None
        and (header := device_decodable(data, max_pixels)) is not None
        and _full_resize_pixels(header[0], header[1], preprocess) <= max_input_pixels
    }
    on_device = list(headers)
    decoded = _decode_jpegs([batch["bytes"][i] for i in on_device], device) if on_device else []
    images: list[torch.Tensor | None] = [None] * n
    for i, img in zip(on_device, decoded, strict=True):
        if img is not None:
            w, h, orientation = headers[i]
            images[i] = resize_crop_tensor(upright(img, orientation), preprocess)
            width[i], height[i] = w, h
    floor = draft_floor(preprocess) if draft else None
    fallback = [i for i in range(n) if errors[i] is None and images[i] is None]
    for i in fallback:
        arr, errors[i], width[i], height[i] = decode_one(
            batch["bytes"][i],
            preprocess,
            max_pixels=max_pixels,
            min_size=floor,
            max_input_pixels=max_input_pixels,
        )
        if arr is not None:
            images[i] = torch.tensor(arr, device=device)
    if fallback:
        logger.debug("decode: %d of %d image(s) decoded on the CPU", len(fallback), n)
    out: dict[str, np.ndarray | torch.Tensor] = {**row_columns(batch, errors, width, height)}
    if preprocess.uncropped:
        out["image"], out["input_height"], out["input_width"] = _stack_padded(images, device)
    else:
        ch, cw = preprocess.crop_size
        stacked = torch.zeros((n, ch, cw, 3), dtype=torch.uint8, device=device)
        for i, img in enumerate(images):
            if img is not None:
                stacked[i] = img
        out["image"] = stacked
    return out


def _full_resize_pixels(width: int, height: int, cfg: PreprocessConfig) -> int:
    rw, rh = output_size(width, height, cfg)
    return rw * rh


def _stack_padded(
    images: list[torch.Tensor | None], device: torch.device
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Different-sized images zero-padded at the top left, as ``_pad_stack`` does on numpy."""
    hs = np.array([0 if a is None else a.shape[0] for a in images], dtype=np.int32)
    ws = np.array([0 if a is None else a.shape[1] for a in images], dtype=np.int32)
    out = torch.zeros(
        (len(images), max(1, int(hs.max(initial=1))), max(1, int(ws.max(initial=1))), 3),
        dtype=torch.uint8,
        device=device,
    )
    for i, a in enumerate(images):
        if a is not None:
            out[i, : a.shape[0], : a.shape[1]] = a
    return out, hs, ws
