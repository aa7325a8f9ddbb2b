"""The report's pure pieces: sampling, label counts, error groups, palette, overlays."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from batchvision.errors import ConfigError
from batchvision.report import data, images
from batchvision.report.render import chart_bars


def _table() -> pa.Table:
    return pa.table(
        {
            "status": ["ok", "ok", "error", "ok", "error", "ok", "ok"],
            "error": [None, None, "not_found: a", None, "corrupt: b", None, None],
            "label": ["cat", "dog", None, "cat", None, "cat", "eel"],
            "score": [0.9, 0.2, None, 0.5, None, 0.7, 0.1],
        }
    )


def test_sample_indices_seeded_uniform_subset() -> None:
    pool = np.arange(0, 1_000_000, 3)
    a, b = data.sample_indices(pool, 50, 7), data.sample_indices(pool, 50, 7)
    assert np.array_equal(a, b) and len(np.unique(a)) == 50 and np.all(np.diff(a) > 0)
    assert np.all(a % 3 == 0) and not np.array_equal(a, data.sample_indices(pool, 50, 8))
    assert np.array_equal(data.sample_indices(np.array([4, 9]), 50, 0), [4, 9])
    assert len(data.sample_indices(np.array([], np.int64), 5, 0)) == 0
    # Uniform: over many seeds every index is picked about equally often.
    hits = np.bincount(
        np.concatenate([data.sample_indices(np.arange(20), 5, s) for s in range(2000)]),
        minlength=20,
    )
    assert hits.min() > 400 and hits.max() < 600  # expected 500


def test_candidates_and_label_errors() -> None:
    t = _table()
    assert data.candidates(t, "classify", label=None, errors=False).tolist() == [0, 1, 3, 5, 6]
    assert data.candidates(t, "classify", label="cat", errors=False).tolist() == [0, 3, 5]
    assert data.candidates(t, "classify", label=None, errors=True).tolist() == [2, 4]
    with pytest.raises(ConfigError, match=r"'cow': no ok row has it; most frequent: cat, dog, eel"):
        data.candidates(t, "classify", label="cow", errors=False)
    with pytest.raises(ConfigError, match="embed run"):
        data.candidates(t, "embed", label="cat", errors=False)


def test_label_distribution_top_and_other() -> None:
    dist = data.label_distribution(_table(), "classify", top=2)
    assert dist.bars == [("cat", 3), ("dog", 1)] and dist.other == 1
    assert (dist.total, dist.images) == (5, 5)
    bars = chart_bars(dist)
    assert [b["label"] for b in bars] == ["cat", "dog", "other"]
    assert bars[0]["share"] == pytest.approx(0.6) and bars[2]["other"]
    assert bars[0]["width"] == pytest.approx(3 * bars[1]["width"])


def test_segment_distribution_counts_images_containing() -> None:
    typ = pa.list_(
        pa.struct([("id", pa.int32()), ("label", pa.string()), ("fraction", pa.float32())])
    )
    classes = pa.array(
        [
            [{"id": 0, "label": "bg", "fraction": 0.5}, {"id": 3, "label": "car", "fraction": 0.5}],
            [{"id": 0, "label": "bg", "fraction": 1.0}],
            None,
        ],
        typ,
    )
    t = pa.table({"status": ["ok", "ok", "error"], "classes": classes})
    dist = data.label_distribution(t, "segment")
    assert dist.bars == [("bg", 2), ("car", 1)] and dist.images == 2
    assert data.candidates(t, "segment", label="car", errors=False).tolist() == [0]


def test_error_groups_counts_and_cap() -> None:
    t = pa.table(
        {
            "status": ["error"] * 5 + ["ok"],
            "error": ["corrupt: x", "not_found: y", "corrupt: z", None, "corrupt: w", None],
        }
    )
    groups = data.error_groups(t, cap=2)
    assert [(g.code, g.count, g.indices) for g in groups] == [
        ("corrupt", 3, [0, 2]),
        ("not_found", 1, [1]),
        ("unknown", 1, [3]),
    ]
    assert data.error_code("too_large: 1x1") == "too_large" and data.error_code(None) == "unknown"


def test_infer_task() -> None:
    assert data.infer_task({"task": "segment"}, []) == "segment"
    assert data.infer_task({}, ["id", "classes"]) == "segment"
    assert data.infer_task({}, ["id", "embedding"]) == "embed"
    assert data.infer_task({}, ["id", "label"]) == "classify"


def test_palette_distinct_and_stable() -> None:
    cols = images.palette(np.arange(512))
    assert cols.shape == (512, 3) and tuple(cols[0]) == (0, 0, 0)
    assert tuple(cols[1]) == (128, 0, 0) and tuple(cols[2]) == (0, 128, 0)  # PASCAL VOC
    assert len({tuple(c) for c in cols}) == 512  # 15 = VOC person, below
    assert images.hex_colour(15) == "#c08080" and images.hex_colour(1) == "#800000"


def test_overlay_nearest_and_blend() -> None:
    mask = np.array([[1, 2], [2, 1]], dtype=np.int64)
    base = Image.new("RGB", (8, 8), (100, 100, 100))
    out = np.asarray(images.overlay(base, mask, 8))
    assert out.shape == (8, 8, 3)
    # Only two colours (nearest, no blending of ids): 0.5 * 100 + 0.5 * palette.
    assert tuple(out[0, 0]) == (114, 50, 50) and tuple(out[0, 7]) == (50, 114, 50)
    assert tuple(out[7, 0]) == (50, 114, 50) and len({tuple(p) for p in out.reshape(-1, 3)}) == 2
    grey = images.overlay(None, np.zeros((10, 40), np.int64), 192)
    assert grey.size == (192, 48)


def test_decode_mask_8_and_16_bit() -> None:
    for arr in (np.array([[0, 7]], np.uint8), np.array([[0, 700]], np.uint16)):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        assert images.decode_mask(buf.getvalue()).tolist() == arr.tolist()
    rgb = io.BytesIO()
    Image.new("RGB", (2, 2)).save(rgb, "PNG")
    with pytest.raises(ValueError, match="single-channel"):
        images.decode_mask(rgb.getvalue())
    with pytest.raises(ValueError, match="not a readable PNG"):
        images.decode_mask(b"nope")


def test_thumbnail_is_exif_upright_and_small() -> None:
    img = Image.new("RGB", (400, 100), (200, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90: displayed 100 x 400
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    thumb = images.thumbnail(buf.getvalue(), 192)
    assert thumb.size == (48, 192)
    assert images.data_uri(thumb).startswith("data:image/jpeg;base64,/9j/")


def test_clustered_sample_reads_few_groups_and_stays_uniform() -> None:
    starts = np.arange(0, 10_000, 100)  # 100 row groups of 100 rows
    pool = np.flatnonzero(np.arange(10_000) % 7 != 3)  # uneven pool rows per group
    picked = data.clustered_sample(pool, starts, 50, seed=1, groups=5)
    assert np.array_equal(picked, data.clustered_sample(pool, starts, 50, seed=1, groups=5))
    assert len(picked) == 50 and len(np.unique(picked)) == 50 and np.isin(picked, pool).all()
    assert len(np.unique(picked // 100)) <= 5
    # Every pool row is equally likely to be shown (expected 1000 * 50 / len(pool) per row).
    hits = np.zeros(10_000)
    for seed in range(1000):
        hits[data.clustered_sample(pool, starts, 50, seed, groups=5)] += 1
    per_group = hits.reshape(100, 100).sum(axis=1) / (
        pool.reshape(-1, 1) // 100 == np.arange(100)
    ).sum(0)
    expected = 1000 * 50 / len(pool)
    assert abs(hits[pool].mean() - expected) < 0.01 * expected
    assert np.abs(per_group / expected - 1).max() < 0.35  # each group near its share
    # Few groups in the pool: a plain uniform sample.
    assert np.array_equal(
        data.clustered_sample(pool[:500], starts, 50, 3, groups=10),
        data.sample_indices(pool[:500], 50, 3),
    )
