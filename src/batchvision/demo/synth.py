"""Deterministic synthetic, photo-like labelled images.

The images produced here are used to train and exercise the bundled demo classifier, and as
stand-in "photos" for tests and benchmarks, so that nothing has to be downloaded.

Every image has photo-like statistics: a smooth random colour gradient background with
low-frequency texture and a vignette, one object (or patterned patch) drawn with anti-aliased
edges at a random position, scale, colour and rotation, mild Gaussian sensor noise and, sometimes,
a little blur. Objects are placed around the image centre, with sizes relative to the shorter
side, so that they survive the usual "resize shorter side, then centre crop" preprocessing.

All functions are pure functions of their random generator or seed: the same seed always gives
byte-identical files (for a given Pillow/libjpeg build).

Sizes are ``(width, height)`` tuples, as everywhere in Pillow.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageFilter

__all__ = [
    "CLASSES",
    "photo_like",
    "render",
    "write_benchmark_images",
    "write_dataset",
]

logger = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "stripes", "checker", "ring")
"""Names of the synthetic classes, in label-index order."""

_FORMATS: dict[str, tuple[str, str]] = {
    "jpeg": ("JPEG", ".jpg"),
    "jpg": ("JPEG", ".jpg"),
    "png": ("PNG", ".png"),
}
_LAYOUTS = ("class_dirs", "flat")
_MAX_ASPECT = 2.0
_MIN_CONTRAST = 90.0
_BG_STEP = 8
_NOISE_TILE = 1024
_NOISE_TILE_SEED = 20240917
_NOISE_SIGMA0 = 24.0

# Domain tags mixed into per-image seeds so that different writers never share images.
_TAG_DATASET = 0
_TAG_BENCHMARK = 1


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2:
        raise ValueError(f"size must be a (width, height) pair, got {size!r}")
    w, h = int(size[0]), int(size[1])
    if w < 8 or h < 8:
        raise ValueError(f"size must be at least 8x8 pixels, got {size!r}")
    return w, h


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth gradient + low-frequency texture + vignette, as an RGB image.

    Everything here is smooth, so it is computed on a grid 8x coarser than the output and
    upsampled bicubically, which keeps rendering cheap.
    """
    lw, lh = max(2, -(-w // _BG_STEP)), max(2, -(-h // _BG_STEP))
    x = (np.arange(lw, dtype=np.float32)[None, :] + 0.5) * np.float32(w / lw)
    y = (np.arange(lh, dtype=np.float32)[:, None] + 0.5) * np.float32(h / lh)

    c0 = rng.uniform(0.0, 255.0, 3).astype(np.float32)
    c1 = rng.uniform(0.0, 255.0, 3).astype(np.float32)
    phi = rng.uniform(0.0, 2.0 * math.pi)
    proj = x * math.cos(phi) + y * math.sin(phi)
    lo, hi = float(proj.min()), float(proj.max())
    t = (proj - lo) / max(hi - lo, 1.0)
    img = c0 + t[..., None] * (c1 - c0)

    # Low-frequency "scene" texture: a few random cells upsampled bicubically.
    cells = int(rng.integers(2, 7))
    amp = rng.uniform(6.0, 28.0)
    small = np.clip(128.0 + rng.normal(0.0, amp, (cells, cells, 3)), 0, 255).astype(np.uint8)
    tex = Image.fromarray(small, "RGB").resize((lw, lh), Image.Resampling.BICUBIC)
    img += np.asarray(tex, dtype=np.float32) - 128.0

    # Vignette.
    k = rng.uniform(0.0, 0.35)
    cx, cy = w / 2.0, h / 2.0
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / (cx * cx + cy * cy)
    img *= (1.0 - k * r2)[..., None]

    low = Image.fromarray(np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8), "RGB")
    return low.resize((w, h), Image.Resampling.BICUBIC)


@functools.lru_cache(maxsize=1)
def _noise_tile() -> Image.Image:
    """A fixed tile of Gaussian noise, stored as ``128 + _NOISE_SIGMA0 * N(0, 1)`` in uint8."""
    rng = np.random.default_rng(_NOISE_TILE_SEED)
    noise = rng.standard_normal((_NOISE_TILE, _NOISE_TILE, 3), dtype=np.float32)
    arr = np.clip(128.5 + _NOISE_SIGMA0 * noise, 0.0, 255.0).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _add_noise(img: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    """Add zero-mean Gaussian noise of std ``sigma`` (in 0..255 units) to ``img``.

    The noise comes from a fixed tile, shifted by a random offset and tiled as needed, so the
    result depends only on ``rng`` while staying cheap to produce.
    """
    w, h = img.size
    tile = _noise_tile()
    ox, oy = (int(o) for o in rng.integers(0, _NOISE_TILE, 2))
    field = Image.new("RGB", (w, h))
    for ty in range(-oy, h, _NOISE_TILE):
        for tx in range(-ox, w, _NOISE_TILE):
            field.paste(tile, (tx, ty))
    scale = sigma / _NOISE_SIGMA0
    lut = [min(255, max(0, round(128.0 + (v - 128) * scale))) for v in range(256)]
    return ImageChops.add(img, field.point(lut * 3), scale=1.0, offset=-128)


def _pick_colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """Random RGB colour at least ``_MIN_CONTRAST`` away from ``avoid`` (best of 32 tries)."""
    best, best_d = None, -1.0
    for _ in range(32):
        c = rng.uniform(0.0, 255.0, 3).astype(np.float32)
        d = float(np.linalg.norm(c - avoid))
        if d >= _MIN_CONTRAST:
            return c
        if d > best_d:
            best, best_d = c, d
    assert best is not None
    return best


def _coverage(sd: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels (negative inside)."""
    return np.clip(0.5 - sd, 0.0, 1.0)


def _sd_circle(u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    return np.sqrt(u * u + v * v) - r


def _sd_ring(u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    width = r * rng.uniform(0.22, 0.45)
    return np.abs(np.sqrt(u * u + v * v) - (r - width / 2.0)) - width / 2.0


def _sd_square(u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    half = r * rng.uniform(0.72, 0.85)
    aspect = rng.uniform(0.85, 1.0)
    return np.maximum(np.abs(u) - half, np.abs(v) - half * aspect)


def _sd_triangle(u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    # Equilateral triangle with circumradius r: intersection of three half-planes.
    sd = None
    for k in range(3):
        a = math.pi / 2.0 + k * 2.0 * math.pi / 3.0
        plane = u * math.cos(a) + v * math.sin(a) - r / 2.0
        sd = plane if sd is None else np.maximum(sd, plane)
    assert sd is not None
    return sd


_SOLID_SHAPES: dict[str, Callable[..., np.ndarray]] = {
    "circle": _sd_circle,
    "ring": _sd_ring,
    "square": _sd_square,
    "triangle": _sd_triangle,
}


def _draw(img: Image.Image, label: str, rng: np.random.Generator) -> None:
    """Draw the object of class ``label`` into ``img`` in place."""
    w, h = img.size
    short = min(w, h)
    r = short * rng.uniform(0.2, 0.36)
    cx = w / 2.0 + short * rng.uniform(-0.12, 0.12)
    cy = h / 2.0 + short * rng.uniform(-0.12, 0.12)
    theta = rng.uniform(0.0, 2.0 * math.pi)

    # Work on the bounding box only: every object lies within r * sqrt(2) of its centre.
    ext = r * 1.42 + 2.0
    x0, x1 = max(int(cx - ext), 0), min(math.ceil(cx + ext), w)
    y0, y1 = max(int(cy - ext), 0), min(math.ceil(cy + ext), h)
    box = (x0, y0, x1, y1)
    region = np.asarray(img.crop(box), dtype=np.float32)
    # Pixel centres relative to the object centre, rotated into the object frame.
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - cx)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - cy)
    ct, st = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    u = xs * ct + ys * st
    v = ys * ct - xs * st

    base = region[min(int(cy) - y0, y1 - y0 - 1), min(int(cx) - x0, x1 - x0 - 1)]
    colour = _pick_colour(rng, base)

    if label in _SOLID_SHAPES:
        alpha = _coverage(_SOLID_SHAPES[label](u, v, r, rng))
        fill = np.broadcast_to(colour, (*alpha.shape, 3))
    else:
        # Patterned patch: a rotated rectangle filled with stripes or a checkerboard.
        colour2 = _pick_colour(rng, colour)
        half_u = r * rng.uniform(0.8, 1.0)
        half_v = r * rng.uniform(0.8, 1.0)
        alpha = _coverage(np.maximum(np.abs(u) - half_u, np.abs(v) - half_v))
        if label == "stripes":
            period = r * rng.uniform(0.3, 0.55)
            wave = np.sin(u * (2.0 * math.pi / period) + rng.uniform(0.0, 2.0 * math.pi))
            mix = np.clip(0.5 + wave * (period / (2.0 * math.pi)), 0.0, 1.0)
        elif label == "checker":
            period = r * rng.uniform(0.5, 0.9)  # one period = two cells
            f = 2.0 * math.pi / period
            wave = np.sin(u * f) * np.sin(v * f)
            mix = np.clip(0.5 + wave * (period / math.pi), 0.0, 1.0)
        else:  # pragma: no cover - guarded by render()
            raise ValueError(label)
        fill = colour + mix[..., None] * (colour2 - colour)

    # Gentle shading across the object.
    gamma = rng.uniform(0.0, 2.0 * math.pi)
    shade = 1.0 + rng.uniform(0.0, 0.18) * (u * math.cos(gamma) + v * math.sin(gamma)) / r
    a = alpha[..., None]
    out = region * (1.0 - a) + a * (fill * shade[..., None])
    img.paste(Image.fromarray(np.clip(out + 0.5, 0.0, 255.0).astype(np.uint8), "RGB"), box)


def render(label: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Render one photo-like RGB image of class ``label``.

    Args:
        label: One of :data:`CLASSES`.
        rng: Source of all randomness; the image is a pure function of its state.
        size: Output ``(width, height)`` in pixels, each at least 8.

    Returns:
        An RGB :class:`PIL.Image.Image` of the requested size.

    Raises:
        ValueError: If ``label`` is not a known class or ``size`` is invalid.
    """
    if label not in CLASSES:
        raise ValueError(f"unknown class {label!r}; expected one of {CLASSES}")
    w, h = _check_size(size)

    img = _background(rng, w, h)
    _draw(img, label, rng)
    img = _add_noise(img, rng, rng.uniform(1.0, 6.0))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.BoxBlur(rng.uniform(0.4, 1.2)))
    return img


def photo_like(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Render a generic photo-like RGB image of a random class.

    Args:
        rng: Source of all randomness (the class is drawn from it too).
        size: Output ``(width, height)`` in pixels.

    Returns:
        An RGB :class:`PIL.Image.Image` of the requested size.
    """
    label = CLASSES[int(rng.integers(len(CLASSES)))]
    return render(label, rng, size)


def _random_size(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[int, int]:
    """Random ``(width, height)`` in ``[min_side, max_side]`` with aspect ratio <= 2."""
    while True:
        w = int(rng.integers(min_side, max_side + 1))
        h = int(rng.integers(min_side, max_side + 1))
        if max(w, h) <= _MAX_ASPECT * min(w, h):
            return w, h


def _save(img: Image.Image, path: Path, pil_format: str, quality: int) -> None:
    if pil_format == "JPEG":
        img.save(path, pil_format, quality=quality)
    else:
        img.save(path, pil_format)


def write_dataset(
    out_dir: str | os.PathLike[str],
    n_per_class: int,
    seed: int = 0,
    min_side: int = 160,
    max_side: int = 640,
    fmt: str = "jpeg",
    layout: str = "class_dirs",
) -> list[tuple[str, str]]:
    """Write a labelled synthetic dataset to disk.

    Image ``i`` of class ``c`` depends only on ``(seed, c, i)``, so datasets written with the same
    seed and a larger ``n_per_class`` extend smaller ones, and files are byte-identical across
    runs.

    Args:
        out_dir: Destination directory (created if missing).
        n_per_class: Number of images per class.
        seed: Dataset seed; different seeds give disjoint images.
        min_side: Smallest width/height in pixels.
        max_side: Largest width/height in pixels.
        fmt: ``"jpeg"`` (quality drawn from 85-92) or ``"png"``.
        layout: ``"class_dirs"`` writes ``out_dir/<class>/<class>_<i:05d>.<ext>``; ``"flat"``
            writes ``out_dir/<class>_<i:05d>.<ext>``.

    Returns:
        ``(relative_path, label)`` pairs, class-major, with POSIX separators, relative to
        ``out_dir``.

    Raises:
        ValueError: On an unknown ``fmt``/``layout`` or a negative seed/count or invalid sides.
    """
    if fmt.lower() not in _FORMATS:
        raise ValueError(f"unknown fmt {fmt!r}; expected one of {sorted(_FORMATS)}")
    if layout not in _LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {_LAYOUTS}")
    if n_per_class < 0:
        raise ValueError(f"n_per_class must be >= 0, got {n_per_class}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 8 <= min_side <= max_side:
        raise ValueError(f"need 8 <= min_side <= max_side, got {min_side}, {max_side}")
    pil_format, ext = _FORMATS[fmt.lower()]

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    items: list[tuple[str, str]] = []
    for ci, label in enumerate(CLASSES):
        if layout == "class_dirs":
            (root / label).mkdir(exist_ok=True)
        for i in range(n_per_class):
            rng = np.random.default_rng([_TAG_DATASET, seed, ci, i])
            size = _random_size(rng, min_side, max_side)
            quality = int(rng.integers(85, 93))
            img = render(label, rng, size)
            name = f"{label}_{i:05d}{ext}"
            rel = f"{label}/{name}" if layout == "class_dirs" else name
            _save(img, root / rel, pil_format, quality)
            items.append((rel, label))
    logger.debug("wrote %d images to %s", len(items), root)
    return items


def write_benchmark_images(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    size: tuple[int, int] = (500, 375),
) -> list[str]:
    """Write ``n`` photo-like JPEGs of one fixed size (Imagenette-like by default).

    Files are named ``img_<i:05d>.jpg`` (quality 90); image ``i`` depends only on
    ``(seed, i)``.

    Args:
        out_dir: Destination directory (created if missing).
        n: Number of images.
        seed: Seed; the output is byte-identical for equal seeds.
        size: ``(width, height)`` of every image.

    Returns:
        File names relative to ``out_dir``, in order.

    Raises:
        ValueError: If ``n`` or ``seed`` is negative or ``size`` is invalid.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    wh = _check_size(size)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for i in range(n):
        rng = np.random.default_rng([_TAG_BENCHMARK, seed, i])
        name = f"img_{i:05d}.jpg"
        photo_like(rng, wh).save(root / name, "JPEG", quality=90)
        names.append(name)
    logger.debug("wrote %d benchmark images to %s", n, root)
    return names
