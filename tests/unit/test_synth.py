"""Tests for the deterministic synthetic image generator."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batchvision.demo import synth
from batchvision.demo.synth import (
    CLASSES,
    photo_like,
    render,
    write_benchmark_images,
    write_dataset,
)


def _digests(root: Path, rels: list[str]) -> list[str]:
    return [hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in rels]


def test_classes_are_distinct_names() -> None:
    assert isinstance(CLASSES, tuple)
    assert 5 <= len(CLASSES) <= 6
    assert len(set(CLASSES)) == len(CLASSES)
    assert all(isinstance(c, str) and c.isidentifier() for c in CLASSES)


@pytest.mark.parametrize("label", CLASSES)
def test_render_every_class(label: str) -> None:
    img = render(label, np.random.default_rng(0), (120, 90))
    assert img.mode == "RGB"
    assert img.size == (120, 90)
    arr = np.asarray(img, dtype=np.float32)
    # Photo-like: not flat, and uses a fair part of the value range.
    assert arr.std() > 10.0
    assert arr.max() - arr.min() > 80.0


@pytest.mark.parametrize("label", CLASSES)
def test_object_stands_out_from_background(label: str) -> None:
    # The object is drawn around the image centre: the centre must differ from the corners.
    arr = np.asarray(render(label, np.random.default_rng(3), (200, 200)), dtype=np.float32)
    centre = arr[60:140, 60:140].reshape(-1, 3)
    corners = np.concatenate([arr[:15, :15], arr[:15, -15:], arr[-15:, :15], arr[-15:, -15:]])
    gap = np.abs(np.median(centre, axis=0) - np.median(corners.reshape(-1, 3), axis=0)).max()
    assert gap > 20.0 or centre.std() > 30.0


def test_render_is_deterministic() -> None:
    a = render("triangle", np.random.default_rng(42), (97, 131))
    b = render("triangle", np.random.default_rng(42), (97, 131))
    c = render("triangle", np.random.default_rng(43), (97, 131))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_render_large_image_tiles_noise() -> None:
    img = render("ring", np.random.default_rng(0), (1100, 1050))
    assert img.size == (1100, 1050)
    assert img.mode == "RGB"


def test_render_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown class"):
        render("hexagon", rng, (64, 64))
    with pytest.raises(ValueError):
        render("circle", rng, (4, 64))


def test_photo_like_is_deterministic_and_sized() -> None:
    a = photo_like(np.random.default_rng(7), (64, 48))
    b = photo_like(np.random.default_rng(7), (64, 48))
    assert a.mode == "RGB"
    assert a.size == (64, 48)
    assert a.tobytes() == b.tobytes()
    others = {photo_like(np.random.default_rng(s), (64, 48)).tobytes() for s in range(8)}
    assert len(others) == 8


def test_write_dataset_class_dirs(tmp_path: Path) -> None:
    items = write_dataset(tmp_path, 2, seed=0, min_side=40, max_side=120)
    assert len(items) == 2 * len(CLASSES)
    assert sorted(label for _, label in items) == sorted(list(CLASSES) * 2)
    expected = {f"{c}/{c}_{i:05d}.jpg" for c in CLASSES for i in range(2)}
    assert {rel for rel, _ in items} == expected
    assert len(list(tmp_path.rglob("*.jpg"))) == len(items)
    for rel, label in items:
        assert rel.split("/")[0] == label
        path = tmp_path / rel
        assert path.is_file()
        with Image.open(path) as img:
            assert img.format == "JPEG"
            w, h = img.size
            rgb = img.convert("RGB")
        assert img.mode == "RGB"
        assert rgb.size == (w, h)
        assert 40 <= w <= 120
        assert 40 <= h <= 120
        assert max(w, h) <= 2 * min(w, h)


def test_write_dataset_default_sides(tmp_path: Path) -> None:
    items = write_dataset(tmp_path, 1, seed=5)
    sizes = []
    for rel, _ in items:
        with Image.open(tmp_path / rel) as img:
            sizes.append(img.size)
    assert all(160 <= s <= 640 for size in sizes for s in size)
    assert len(set(sizes)) > 1  # sizes and aspect ratios vary


def test_write_dataset_flat_layout(tmp_path: Path) -> None:
    items = write_dataset(tmp_path, 1, seed=0, min_side=32, max_side=48, layout="flat")
    assert [rel for rel, _ in items] == [f"{c}_00000.jpg" for c in CLASSES]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(rel for rel, _ in items)


def test_write_dataset_png(tmp_path: Path) -> None:
    items = write_dataset(tmp_path, 1, seed=0, min_side=32, max_side=48, fmt="png")
    for rel, _ in items:
        assert rel.endswith(".png")
        with Image.open(tmp_path / rel) as img:
            assert img.format == "PNG"
            assert img.mode == "RGB"


def test_write_dataset_is_deterministic(tmp_path: Path) -> None:
    kwargs = {"min_side": 32, "max_side": 96}
    a = write_dataset(tmp_path / "a", 2, seed=3, **kwargs)
    b = write_dataset(tmp_path / "b", 2, seed=3, **kwargs)
    c = write_dataset(tmp_path / "c", 2, seed=4, **kwargs)
    assert a == b == c  # same names and labels...
    rels = [rel for rel, _ in a]
    da = _digests(tmp_path / "a", rels)
    assert da == _digests(tmp_path / "b", rels)  # ...byte-identical for the same seed
    dc = _digests(tmp_path / "c", rels)
    assert all(x != y for x, y in zip(da, dc, strict=True))  # ...and different otherwise
    assert len(set(da)) == len(da)  # no duplicate images within a dataset


def test_write_dataset_smaller_is_prefix(tmp_path: Path) -> None:
    small = write_dataset(tmp_path / "s", 1, seed=2, min_side=32, max_side=64)
    big = write_dataset(tmp_path / "b", 3, seed=2, min_side=32, max_side=64)
    rels = [rel for rel, _ in small]
    assert set(rels) <= {rel for rel, _ in big}
    assert _digests(tmp_path / "s", rels) == _digests(tmp_path / "b", rels)


def test_write_dataset_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt"):
        write_dataset(tmp_path, 1, fmt="gif")
    with pytest.raises(ValueError, match="layout"):
        write_dataset(tmp_path, 1, layout="nested")
    with pytest.raises(ValueError):
        write_dataset(tmp_path, 1, min_side=100, max_side=50)
    with pytest.raises(ValueError):
        write_dataset(tmp_path, -1)
    with pytest.raises(ValueError):
        write_dataset(tmp_path, 1, seed=-1)


def test_write_benchmark_images(tmp_path: Path) -> None:
    names = write_benchmark_images(tmp_path / "a", 4, seed=0)
    assert names == [f"img_{i:05d}.jpg" for i in range(4)]
    for name in names:
        with Image.open(tmp_path / "a" / name) as img:
            assert img.format == "JPEG"
            assert img.size == (500, 375)
            assert img.convert("RGB").mode == "RGB"
    again = write_benchmark_images(tmp_path / "b", 4, seed=0)
    other = write_benchmark_images(tmp_path / "c", 4, seed=1)
    da = _digests(tmp_path / "a", names)
    assert da == _digests(tmp_path / "b", again)
    assert all(x != y for x, y in zip(da, _digests(tmp_path / "c", other), strict=True))
    assert len(set(da)) == len(da)


def test_write_benchmark_images_custom_size(tmp_path: Path) -> None:
    names = write_benchmark_images(tmp_path, 2, seed=9, size=(64, 80))
    for name in names:
        with Image.open(tmp_path / name) as img:
            assert img.size == (64, 80)
    with pytest.raises(ValueError):
        write_benchmark_images(tmp_path, -1)


def test_public_api_is_reexported() -> None:
    import batchvision.demo as demo

    assert set(synth.__all__) <= set(dir(demo))
    assert demo.CLASSES == CLASSES
