"""Decoded image to a model-sized uint8 array, and the decode+preprocess batch stage.

The resize and center crop follow torchvision's ``ImageClassification`` exactly (shorter
side to ``resize_size`` with ``int`` truncation of the longer side, crop offsets rounded),
but run on uint8 with Pillow, and only on the region the crop keeps: Pillow's ``box``
argument resamples that region with the kernel of the full resize, so the result is the
resize-then-crop result without computing the discarded border.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import Executor

import numpy as np
from PIL import Image

from batchvision.config import DEFAULT_MAX_INPUT_PIXELS, DEFAULT_MAX_PIXELS, PreprocessConfig
from batchvision.stages.decode import DecodeError, decode_image

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """``(w, h)`` after torchvision's shorter-side resize."""
    if width <= height:
        return resize_size, int(resize_size * height / width)
    return int(resize_size * width / height), resize_size


def bounded_size(width: int, height: int, size: int, max_size: int) -> tuple[int, int]:
    """``(w, h)`` after torchvision's detection resize (``GeneralizedRCNNTransform``):
    scaled by ``min(size / shorter, max_size / longer)``, each side floored, as
    ``F.interpolate(scale_factor=..., recompute_scale_factor=True)`` sizes its output."""
    scale = min(size / min(width, height), max_size / max(width, height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def edges_size(
    width: int, height: int, size: int, max_size: int, multiple: int = 1
) -> tuple[int, int]:
    """``(w, h)`` after Hugging Face's ``shortest_edge``/``longest_edge`` resize (DETR's
    processors: transformers' ``get_size_with_aspect_ratio``, its rounding kept; with
    ``multiple`` > 1, YOLOS' ``get_size_with_aspect_ratio_yolos``: the shorter side is
    tested first, and both sides are rounded down to that multiple)."""
    raw: float | None = None
    short, long = float(min(width, height)), float(max(width, height))
    if long / short * size > max_size:
        raw = max_size * short / long
        size = round(raw)
    scale = raw if raw is not None else size
    same = (height <= width and height == size) or (width <= height and width == size)
    if multiple > 1:  # YOLOS
        if width < height:
            w, h = size, int(scale * height / width)
        elif same:
            w, h = width, height
        else:
            w, h = int(scale * width / height), size
        return max(multiple, w - w % multiple), max(multiple, h - h % multiple)
    if same:
        return width, height
    if width < height:
        return size, max(1, int(scale * height / width))
    return max(1, int(scale * width / height)), size


def output_size(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """``(w, h)`` of the resize, before any crop, for ``cfg.resize_mode``."""
    if cfg.resize_mode == "squash_crop":
        assert cfg.resize_hw is not None
        return cfg.resize_hw[1], cfg.resize_hw[0]
    if cfg.resize_mode == "model":  # the model's own resize, on the device
        if cfg.resize_hw is not None:
            return cfg.resize_hw[1], cfg.resize_hw[0]
        assert cfg.max_size is not None
        return bounded_size(width, height, cfg.resize_size, cfg.max_size)
    if cfg.resize_mode == "edges":
        assert cfg.max_size is not None
        return edges_size(width, height, cfg.resize_size, cfg.max_size, cfg.size_multiple)
    return resized_size(width, height, cfg.resize_size)


def resized_pixels(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """``(w, h)`` of what :func:`resize_crop` makes of a ``width`` x ``height`` image.

    The model input when there is no crop (``shorter``: it follows the aspect ratio, so
    a 1x65000 strip resized to 520 would be 520x33,800,000); the crop otherwise, since only
    the cropped region is resampled, unless the crop is larger than the resize (then the
    whole resize is made and zero-padded).
    """
    rw, rh = output_size(width, height, cfg)
    if cfg.uncropped:
        return rw, rh
    ch, cw = cfg.crop_size
    if ch > rh or cw > rw:
        return max(rw, cw), max(rh, ch)
    return cw, ch


def check_input_size(width: int, height: int, cfg: PreprocessConfig, max_input_pixels: int) -> None:
    """Refuse (``too_large``) an image whose resize would exceed ``max_input_pixels``.

    Decided from the header's size, before decoding: the resize, the model's activations
    and a segmentation's logits (classes x input pixels) all grow with the model input.
    Either orientation is checked, so the EXIF rotation (not known yet) cannot matter.
    """
    for w, h in ((width, height), (height, width)):
        rw, rh = resized_pixels(w, h, cfg)
        if rw * rh > max_input_pixels:
            raise DecodeError(
                "too_large",
                f"{w}x{h} image makes a {rw}x{rh} = {rw * rh} pixel model input "
                f"(resize {cfg.resize_mode} to {cfg.resize_size}), more than "
                f"--max-input-pixels {max_input_pixels}",
            )


def resize_crop(
    img: Image.Image,
    cfg: PreprocessConfig,
    full_size: tuple[int, int] | None = None,
    region: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Resize and center-crop as ``cfg`` says, as ``(h, w, 3)`` uint8.

    ``(crop_h, crop_w)`` unless ``resize_mode`` is ``shorter`` (no crop). After a
    reduced-size (draft) decode, ``full_size`` is the ``(w, h)`` of the full image and
    ``region`` where it lies in ``img`` (``Decoded.region``): the resize and the crop are
    laid out on the full image, as the reference does, and read off ``img``, so the output
    size and the crop window do not move with the draft.
    """
    if cfg.resize_mode == "model":  # as decoded: the model resizes on the device
        return np.asarray(img)
    w, h = full_size or img.size
    left0, top0, right0, bottom0 = region or (0.0, 0.0, float(img.size[0]), float(img.size[1]))
    rw, rh = output_size(w, h, cfg)
    resample = _RESAMPLE[cfg.interpolation]
    whole = (left0, top0, right0, bottom0)
    if cfg.uncropped:
        return np.asarray(img.resize((rw, rh), resample, box=whole))
    ch, cw = cfg.crop_size
    if ch > rh or cw > rw:
        return _pad_crop(np.asarray(img.resize((rw, rh), resample, box=whole)), ch, cw)
    if cfg.crop_offset == "floor":  # Hugging Face image processors
        top, left = (rh - ch) // 2, (rw - cw) // 2
    else:  # torchvision's center_crop
        top, left = round((rh - ch) / 2.0), round((rw - cw) / 2.0)
    # Resized pixels to img's pixels.
    sx, sy = (right0 - left0) / rw, (bottom0 - top0) / rh
    box = (left0 + left * sx, top0 + top * sy, left0 + (left + cw) * sx, top0 + (top + ch) * sy)
    return np.asarray(img.resize((cw, ch), resample, box=box))


def _pad_crop(arr: np.ndarray, ch: int, cw: int) -> np.ndarray:
    # torchvision's center_crop pads with zeros when the crop is larger than the image.
    h, w = arr.shape[:2]
    top, left = max(0, (ch - h) // 2), max(0, (cw - w) // 2)
    out = np.zeros((max(ch, h), max(cw, w), 3), dtype=np.uint8)
    out[top : top + h, left : left + w] = arr
    ph, pw = out.shape[:2]
    t, lft = round((ph - ch) / 2.0), round((pw - cw) / 2.0)
    return np.ascontiguousarray(out[t : t + ch, lft : lft + cw])


#: A reduced-size (draft) JPEG decode stops at this many times the resize target, so the
#: resize after it is always an antialiased downscale of at least 2x (DCT scaling to the
#: target itself replaced that resize, moving trained models' top-1 probabilities by up to
#: 0.08 on real photos; docs/benchmarks.md). Even so a draft is not bit-true to the
#: reference, which is why ``--draft`` is opt-in.
DRAFT_MARGIN = 2


def draft_floor(cfg: PreprocessConfig) -> tuple[int, int]:
    """The smallest decoded size a draft decode may give, for any aspect ratio.

    A JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as both sides stay at least
    ``DRAFT_MARGIN`` x the resize target; the resize then still shrinks every side by at
    least that factor, with the reference's filter.
    """
    if cfg.resize_mode == "squash_crop":
        assert cfg.resize_hw is not None
        # Each side shrinks on its own; a draft must keep both at least their targets.
        side = max(*cfg.resize_hw, *cfg.crop_size)
    else:
        side = max(cfg.resize_size, *cfg.crop_size)
    return side * DRAFT_MARGIN, side * DRAFT_MARGIN


def decode_one(
    data: bytes,
    preprocess: PreprocessConfig,
    *,
    max_pixels: int,
    min_size: tuple[int, int] | None,
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
) -> tuple[np.ndarray | None, str | None, int, int]:
    """Decode and preprocess one image: ``(array, None, width, height)``, or on failure
    ``(None, error, 0, 0)``; never an exception, so a bad file costs one row.

    Images over ``max_pixels`` or whose resize exceeds ``max_input_pixels`` are refused
    from their header (:func:`check_input_size`)."""
    check = functools.partial(check_input_size, cfg=preprocess, max_input_pixels=max_input_pixels)
    try:
        decoded = decode_image(data, max_pixels=max_pixels, min_size=min_size, check_size=check)
        full = (decoded.width, decoded.height)
        arr = resize_crop(decoded.image, preprocess, full, decoded.region)
        return arr, None, decoded.width, decoded.height
    except DecodeError as e:
        return None, str(e), 0, 0
    except Exception as e:  # a decoder bug must cost one row, not the run
        return None, f"decode_failed: {type(e).__name__}: {e}", 0, 0


def row_columns(
    batch: dict[str, np.ndarray], errors: np.ndarray, width: np.ndarray, height: np.ndarray
) -> dict[str, np.ndarray]:
    """The columns of every decoded batch but the image: ``id``, ``path``, ``status`` (from
    ``errors``), ``error``, ``width``, ``height``."""
    return {
        "id": np.asarray(batch["id"], dtype=object),
        "path": np.asarray(batch["path"], dtype=object),
        "status": np.array(["ok" if e is None else "error" for e in errors], dtype=object),
        "error": errors,
        "width": width,
        "height": height,
    }


def decode_batch(
    batch: dict[str, np.ndarray],
    preprocess: PreprocessConfig,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = False,
    pool: Executor | None = None,
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
) -> dict[str, np.ndarray]:
    """Decode and preprocess a batch; failures become error rows, never exceptions.

    Args:
        batch: ``id``, ``path``, ``bytes`` (object array, ``None`` where the read failed)
            and ``error`` (object array, set where the read failed).
        preprocess: resize, crop and interpolation to apply.
        max_pixels: decompression-bomb guard, checked from the header.
        draft: allow reduced-size JPEG decoding when the image is much larger than needed
            (faster, but not bit-true to the reference: see ``DRAFT_MARGIN``).
        pool: decode the images on these threads (Pillow releases the GIL while it decodes
            and resizes); ``None``: one by one in this thread.
        max_input_pixels: bound on what the resize makes of one image (the model input,
            or the crop), checked from the header (:func:`check_input_size`).

    Returns:
        ``id``, ``path``, ``status`` ("ok"/"error"), ``error``, ``width``/``height`` (as
        displayed) and ``image``: ``(N, crop_h, crop_w, 3)`` uint8, zeros on error rows.
        With an uncropped ``resize_mode`` (``shorter``, ``model``, ``edges``) images
        differ in size: ``image`` is then
        the batch's largest size, each image at the top left and zero-padded, and
        ``input_height``/``input_width`` give each image's own size.
    """
    n = len(batch["id"])
    ch, cw = preprocess.crop_size
    variable = preprocess.uncropped
    arrays: list[np.ndarray | None] = [None] * n
    images = np.zeros((0 if variable else n, ch, cw, 3), dtype=np.uint8)
    width = np.zeros(n, dtype=np.int32)
    height = np.zeros(n, dtype=np.int32)
    errors = np.array(batch.get("error", np.full(n, None, dtype=object)), dtype=object)
    floor = draft_floor(preprocess) if draft else None
    todo = [i for i in range(n) if errors[i] is None]

    def one(i: int) -> tuple[np.ndarray | None, str | None, int, int]:
        return decode_one(
            batch["bytes"][i],
            preprocess,
            max_pixels=max_pixels,
            min_size=floor,
            max_input_pixels=max_input_pixels,
        )

    results = pool.map(one, todo) if pool is not None and len(todo) > 1 else map(one, todo)
    for i, (arr, error, w, h) in zip(todo, results, strict=True):
        if arr is None:
            errors[i] = error
            continue
        if variable:
            arrays[i] = arr
        else:
            images[i] = arr
        width[i], height[i] = w, h
    extra: dict[str, np.ndarray] = {}
    if variable:
        images, extra["input_height"], extra["input_width"] = _pad_stack(arrays)
    return {**row_columns(batch, errors, width, height), "image": images, **extra}


def _pad_stack(arrays: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Different-sized images in one zero-padded array, each at the top left."""
    hs = np.array([0 if a is None else a.shape[0] for a in arrays], dtype=np.int32)
    ws = np.array([0 if a is None else a.shape[1] for a in arrays], dtype=np.int32)
    out = np.zeros(
        (len(arrays), max(1, int(hs.max(initial=1))), max(1, int(ws.max(initial=1))), 3), np.uint8
    )
    for i, a in enumerate(arrays):
        if a is not None:
            out[i, : a.shape[0], : a.shape[1]] = a
    return out, hs, ws
