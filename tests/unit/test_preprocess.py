"""resize_crop parity with torchvision and PIL, JPEG draft, and the decode_batch stage."""

from __future__ import annotations

import copy
import functools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision.transforms.v2 import functional as F

from batchvision.config import DEFAULT_MAX_INPUT_PIXELS, DEFAULT_MAX_PIXELS, PreprocessConfig
from batchvision.io.sources import InputItem, items_to_batch, read_batch
from batchvision.stages import preprocess
from batchvision.stages.decode import decode_image
from batchvision.stages.preprocess import decode_batch, draft_floor, resize_crop, resized_size
from batchvision.tasks.classify import label_batch
from tests.unit import odd_images as oi

_TV = {
    "bilinear": F.InterpolationMode.BILINEAR,
    "bicubic": F.InterpolationMode.BICUBIC,
    "nearest": F.InterpolationMode.NEAREST,
}
_PIL = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}

# (image w, h), resize_size, crop (h, w), interpolation
CASES = [
    ((640, 480), 256, (224, 224), "bilinear"),  # landscape
    ((480, 640), 256, (224, 224), "bilinear"),  # portrait
    ((333, 517), 256, (224, 224), "bicubic"),  # odd sizes, int() truncation of the long side
    ((1000, 300), 232, (224, 224), "bicubic"),  # extreme aspect ratio
    ((10, 10), 32, (32, 32), "bilinear"),  # tiny, upscaled
    ((10, 10), 256, (224, 224), "bilinear"),  # tiny, upscaled a lot
    ((64, 64), 32, (48, 48), "bilinear"),  # crop larger than the resize: zero padding
    ((300, 100), 40, (50, 90), "bilinear"),  # crop taller than the resize only
    ((7, 3), 5, (5, 5), "bilinear"),  # tiny, one side padded
]


def _ids(case: tuple[object, ...]) -> str:
    (w, h), rs, (ch, cw), interp = case  # type: ignore[misc]
    return f"{w}x{h}-r{rs}-c{ch}x{cw}-{interp}"


def _torchvision_tensor(img: Image.Image, rs: int, crop: tuple[int, int], interp: str):
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
    y = F.center_crop(F.resize(x, [rs], interpolation=_TV[interp], antialias=True), list(crop))
    return y.permute(1, 2, 0).numpy()


def _pil_resize_then_crop(img: Image.Image, rs: int, crop: tuple[int, int], interp: str):
    # The reference the box path must equal: full resize, then torchvision's center crop.
    return np.asarray(F.center_crop(F.resize(img, [rs], interpolation=_TV[interp]), list(crop)))


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_resize_crop_matches_torchvision_tensor_path(case) -> None:
    (w, h), rs, crop, interp = case
    img = oi.photo(w, h, seed=w + h)
    ours = resize_crop(img, PreprocessConfig(resize_size=rs, crop_size=crop, interpolation=interp))
    ref = _torchvision_tensor(img, rs, crop, interp)
    assert ours.dtype == np.uint8
    assert ours.shape == ref.shape == (crop[0], crop[1], 3)
    assert np.abs(ours.astype(np.int16) - ref.astype(np.int16)).mean() < 1.5


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_resize_crop_box_path_equals_pil_resize_then_crop(case) -> None:
    (w, h), rs, crop, interp = case
    img = oi.photo(w, h, seed=w + h)
    ours = resize_crop(img, PreprocessConfig(resize_size=rs, crop_size=crop, interpolation=interp))
    ref = _pil_resize_then_crop(img, rs, crop, interp)
    assert ours.shape == ref.shape
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    if interp == "bilinear":
        assert diff.max() <= 1
    else:
        # Pillow keeps the box in float32, so the bicubic kernel (negative lobes) can land a
        # few levels off on the odd pixel next to saturated values; nearly all are within 1.
        assert (diff > 1).mean() < 1e-4
        assert diff.max() <= 8


def test_resize_crop_nearest_matches_pil() -> None:
    # torchvision's tensor NEAREST uses floor(dst * scale) and differs from PIL's nearest;
    # the reference pipeline (PIL images) uses PIL's nearest, which we must equal exactly.
    img = oi.photo(640, 480, seed=4)
    ours = resize_crop(img, PreprocessConfig(interpolation="nearest"))
    assert np.array_equal(ours, _pil_resize_then_crop(img, 256, (224, 224), "nearest"))


def test_crop_larger_than_resize_pads_with_zeros() -> None:
    img = oi.solid((200, 100, 50), size=(64, 64))
    out = resize_crop(img, PreprocessConfig(resize_size=32, crop_size=(48, 48)))
    assert out.shape == (48, 48, 3)
    # 32x32 content centred in 48x48: 8 zero rows/cols each side.
    assert (out[8:40, 8:40] == (200, 100, 50)).all()
    assert out[:8].sum() == 0 and out[40:].sum() == 0
    assert out[:, :8].sum() == 0 and out[:, 40:].sum() == 0


@pytest.mark.parametrize(
    ("w", "h", "rs"), [(333, 517, 256), (517, 333, 256), (10, 10, 224), (3000, 7, 224), (1, 900, 8)]
)
def test_resized_size_matches_torchvision(w: int, h: int, rs: int) -> None:
    x = torch.zeros(1, h, w, dtype=torch.uint8)
    out_h, out_w = F.resize(x, [rs], antialias=True).shape[-2:]
    assert resized_size(w, h, rs) == (out_w, out_h)


@pytest.mark.parametrize(
    ("resize", "crop", "floor"), [(256, (224, 224), (512, 512)), (32, (48, 40), (96, 96))]
)
def test_draft_floor(resize: int, crop: tuple[int, int], floor: tuple[int, int]) -> None:
    assert draft_floor(PreprocessConfig(resize_size=resize, crop_size=crop)) == floor


def test_draft_decode_is_reduced_and_close_to_full_decode() -> None:
    cfg = PreprocessConfig()
    data = oi.large_jpeg()
    drafted = decode_image(data, max_pixels=10**8, min_size=draft_floor(cfg))
    full = decode_image(data, max_pixels=10**8)
    w, h = drafted.image.size
    assert min(w, h) >= 256 and w < 4000 and h < 3000
    assert full.image.size == (4000, 3000)
    assert (drafted.width, drafted.height) == (full.width, full.height) == (4000, 3000)
    a = resize_crop(drafted.image, cfg).astype(np.int16)
    b = resize_crop(full.image, cfg).astype(np.int16)
    assert np.abs(a - b).mean() < 3


@pytest.mark.parametrize(
    ("size", "orientation", "mode"),
    [
        ((3007, 2000), None, "shorter_crop"),  # 1/2 scale rounds 1503.5 up to 1504
        ((2000, 3007), None, "shorter_crop"),
        # Drafted, then turned upright by EXIF: the partial last pixel lands left or on top.
        *(((4099, 2050), o, "shorter_crop") for o in range(2, 9)),
        ((3007, 2000), None, "shorter"),  # no crop: the whole image, its size kept
        ((3007, 2000), None, "squash_crop"),
    ],
)
def test_draft_keeps_the_full_image_geometry(size, orientation, mode) -> None:
    """A drafted image is resized and cropped as the full image would be: same output size,
    same crop window. Before, the layout was computed on the drafted size, whose rounding
    moved the crop (up to 44 grey levels off on real photos)."""
    cfg = PreprocessConfig(resize_mode=mode)
    data = oi.large_jpeg(*size, orientation=orientation)
    drafted = decode_image(data, max_pixels=10**8, min_size=draft_floor(cfg))
    full = decode_image(data, max_pixels=10**8)
    assert drafted.image.size != full.image.size  # the draft did engage
    upright = (full.width, full.height)
    a, _, w, h = preprocess.decode_one(data, cfg, max_pixels=10**8, min_size=draft_floor(cfg))
    b = resize_crop(full.image, cfg)
    assert a is not None and (w, h) == upright
    assert a.shape == b.shape
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.mean() < 0.5, diff.mean()  # DCT scaling's own small difference, no shift


def test_decode_batch_draft_on_and_off_agree() -> None:
    batch = _batch([("big.jpg", oi.large_jpeg())])
    on = decode_batch(batch, PreprocessConfig(), draft=True)
    off = decode_batch(batch, PreprocessConfig(), draft=False)
    assert on["status"].tolist() == off["status"].tolist() == ["ok"]
    assert (on["width"][0], on["height"][0]) == (off["width"][0], off["height"][0]) == (4000, 3000)
    diff = np.abs(on["image"].astype(np.int16) - off["image"].astype(np.int16))
    assert 0 < diff.mean() < 3  # the draft really was used, and stays close


# --- decode_batch ------------------------------------------------------------------------------

CROP = PreprocessConfig(resize_size=40, crop_size=(32, 32))


def _batch(rows: list[tuple[str, bytes | None]], errors: list[str | None] | None = None):
    n = len(rows)
    data = np.empty(n, dtype=object)
    for i, (_, b) in enumerate(rows):
        data[i] = b
    error = np.array(errors if errors is not None else [None] * n, dtype=object)
    if n == 0:
        error = np.empty(0, dtype=object)
    return {
        "id": np.array([r[0] for r in rows], dtype=object),
        "path": np.array([f"/data/{r[0]}" for r in rows], dtype=object),
        "bytes": data,
        "error": error,
    }


def _mixed_batch():
    rows = [
        ("ok.jpg", oi.encode(oi.photo(80, 60, seed=1), "JPEG")),
        ("empty.jpg", b""),
        ("text.jpg", oi.TEXT),
        ("cut.png", oi.truncated(oi.encode(oi.photo(80, 60, seed=2), "PNG"))),
        ("gone.jpg", None),
        ("rotated.jpg", oi.with_orientation(oi.quadrants(64, 48), 8)),
        ("bomb.png", oi.png_header(3000, 3000)),
        ("damaged.png", oi.png_damaged_pixels()),
        ("ok.png", oi.encode(oi.photo(50, 90, seed=3), "PNG")),
    ]
    errors: list[str | None] = [None] * len(rows)
    errors[4] = "not_found: file not found (vanished or never existed): /data/gone.jpg"
    return _batch(rows, errors)


def test_decode_batch_error_rows_and_the_run_goes_on() -> None:
    batch = _mixed_batch()
    out = decode_batch(batch, CROP, max_pixels=1_000_000)
    assert out["id"].tolist() == batch["id"].tolist()
    assert out["path"].tolist() == batch["path"].tolist()
    assert out["status"].tolist() == [
        "ok", "error", "error", "error", "error", "ok", "error", "error", "ok"
    ]  # fmt: skip
    prefixes = [None, "empty: ", "not_image: ", "truncated: ", "not_found: "]
    prefixes += [None, "too_large: ", "corrupt: ", None]
    for err, prefix in zip(out["error"], prefixes, strict=True):
        if prefix is None:
            assert err is None
        else:
            assert isinstance(err, str) and err.startswith(prefix), err
    assert out["error"][4] == batch["error"][4]  # the read error passes through untouched
    assert out["width"].tolist() == [80, 0, 0, 0, 0, 48, 0, 0, 50]
    assert out["height"].tolist() == [60, 0, 0, 0, 0, 64, 0, 0, 90]
    assert out["image"].shape == (9, 32, 32, 3) and out["image"].dtype == np.uint8
    bad = out["status"] == "error"
    assert out["image"][bad].sum() == 0
    assert out["image"][~bad].reshape(3, -1).max(axis=1).min() > 0


def test_decode_batch_equals_each_item_alone() -> None:
    batch = _mixed_batch()
    together = decode_batch(batch, CROP, max_pixels=1_000_000)
    for i in range(len(batch["id"])):
        alone = decode_batch({k: v[i : i + 1] for k, v in batch.items()}, CROP, max_pixels=10**6)
        for key in ("status", "error", "width", "height"):
            assert alone[key][0] == together[key][i], (key, i)
        assert np.array_equal(alone["image"][0], together["image"][i])


def test_decode_batch_ok_rows_equal_decode_then_resize_crop() -> None:
    batch = _mixed_batch()
    out = decode_batch(batch, CROP, max_pixels=1_000_000, draft=False)
    for i in np.flatnonzero(out["status"] == "ok"):
        want = resize_crop(decode_image(batch["bytes"][i], max_pixels=10**6).image, CROP)
        assert np.array_equal(out["image"][i], want)


def test_decode_batch_does_not_modify_its_input() -> None:
    batch = _mixed_batch()
    before = copy.deepcopy(batch)
    decode_batch(batch, CROP, max_pixels=1_000_000)
    assert batch.keys() == before.keys()
    for key in batch:
        assert batch[key].tolist() == before[key].tolist(), key


@pytest.mark.parametrize("with_error_column", [True, False])
def test_decode_batch_empty(with_error_column: bool) -> None:
    batch = _batch([])
    if not with_error_column:
        del batch["error"]
    out = decode_batch(batch, PreprocessConfig(crop_size=(224, 200)))
    assert out["image"].shape == (0, 224, 200, 3)
    assert out["image"].dtype == np.uint8
    for key in ("id", "path", "status", "error", "width", "height"):
        assert len(out[key]) == 0, key


def test_decode_batch_without_error_column() -> None:
    batch = _batch([("a.jpg", oi.encode(oi.photo(40, 40), "JPEG")), ("b.jpg", b"")])
    del batch["error"]
    out = decode_batch(batch, CROP)
    assert out["status"].tolist() == ["ok", "error"]
    assert out["error"][0] is None and out["error"][1].startswith("empty: ")


def test_decoder_crash_costs_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    real = preprocess.decode_image

    def flaky(data: bytes, **kwargs):
        if data == b"boom":
            raise RuntimeError("decoder bug")
        return real(data, **kwargs)

    monkeypatch.setattr(preprocess, "decode_image", flaky)
    batch = _batch([("a.jpg", b"boom"), ("b.jpg", oi.encode(oi.photo(40, 40), "JPEG"))])
    out = decode_batch(batch, CROP)
    assert out["status"].tolist() == ["error", "ok"]
    assert out["error"][0] == "decode_failed: RuntimeError: decoder bug"


def test_png_named_file_with_jpeg_bytes_decodes(tmp_path: Path) -> None:
    path = tmp_path / "really_a_jpeg.png"
    path.write_bytes(oi.encode(oi.photo(80, 60, seed=5), "JPEG"))
    out = decode_batch(read_batch(items_to_batch([InputItem("x.png", str(path))])), CROP)
    assert out["status"].tolist() == ["ok"]
    assert (out["width"][0], out["height"][0]) == (80, 60)


def test_stages_pickle_and_run_the_same_after() -> None:
    batch = _mixed_batch()
    stage = functools.partial(decode_batch, preprocess=CROP, max_pixels=1_000_000, draft=True)
    clone = pickle.loads(pickle.dumps(stage))
    a, b = stage(batch), clone(batch)
    assert a["status"].tolist() == b["status"].tolist()
    assert np.array_equal(a["image"], b["image"])

    reader = pickle.loads(pickle.dumps(read_batch))
    assert reader is read_batch
    labeller = pickle.loads(pickle.dumps(functools.partial(label_batch, labels=["x", "y", "z"])))
    scored = {
        "status": np.array(["ok", "error"], dtype=object),
        "topk_ids": np.array([[2, 0], [0, 0]]),
        "topk_scores": np.array([[0.75, 0.25], [0.0, 0.0]], dtype=np.float32),
    }
    labelled = labeller(scored)
    assert labelled["label"].tolist() == ["z", None]
    assert labelled["score"][0] == pytest.approx(0.75) and np.isnan(labelled["score"][1])
    assert pickle.loads(pickle.dumps(CROP)) == CROP


# --- what one image may cost: pixels, and what the resize makes of them -------------------

SEGMENT = PreprocessConfig(resize_size=520, crop_size=(520, 520), resize_mode="shorter")
CLASSIFY = PreprocessConfig()  # shorter side to 256, center crop 224


def _png(size: tuple[int, int]) -> bytes:
    return oi.encode(Image.new("L", size, 90), "PNG")


def _jpeg(size: tuple[int, int]) -> bytes:
    return oi.encode(Image.new("L", size, 90), "JPEG", quality=50)


def _nothing_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make decoding or resizing any pixel fail loudly (as ``decode_failed``)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were decoded or resized")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(Image.Image, "resize", refuse)


@pytest.mark.parametrize(
    ("size", "cfg", "resized"),
    [
        ((1, 65000), SEGMENT, "520x33800000 = 17576000000"),  # the 275-byte PNG
        ((4000, 40), SEGMENT, "52000x520 = 27040000"),  # a banner
        # A crop larger than the resize: the whole resize is made, then padded.
        ((1, 65000), PreprocessConfig(resize_size=32), "224x2080000 = 465920000"),
    ],
)
def test_extreme_aspect_ratio_is_too_large_from_the_header(
    size: tuple[int, int], cfg: PreprocessConfig, resized: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _png(size)
    _nothing_decoded(monkeypatch)
    arr, error, w, h = preprocess.decode_one(
        data, cfg, max_pixels=DEFAULT_MAX_PIXELS, min_size=None
    )
    assert arr is None and (w, h) == (0, 0)
    assert error == (
        f"too_large: {size[0]}x{size[1]} image makes a {resized} pixel model input "
        f"(resize {cfg.resize_mode} to {cfg.resize_size}), more than --max-input-pixels "
        f"{DEFAULT_MAX_INPUT_PIXELS}"
    )


@pytest.mark.parametrize("size", [(1, 65000), (20000, 500), (500, 20000), (4000, 40)])
def test_classify_takes_any_aspect_ratio_its_crop_is_its_cost(size: tuple[int, int]) -> None:
    arr, error, w, h = preprocess.decode_one(
        _png(size), CLASSIFY, max_pixels=DEFAULT_MAX_PIXELS, min_size=draft_floor(CLASSIFY)
    )
    assert error is None and arr is not None
    assert arr.shape == (224, 224, 3) and (w, h) == size


def test_segment_keeps_normal_photos_and_panoramas_within_the_default() -> None:
    # 4:3 at 520 is 0.36 megapixels; a 15:1 panorama 4.06, just within 4,194,304.
    for size in ((640, 480), (480, 640), (7500, 500)):
        arr, error, w, h = preprocess.decode_one(
            _png(size), SEGMENT, max_pixels=DEFAULT_MAX_PIXELS, min_size=None
        )
        assert error is None and arr is not None and (w, h) == size
        assert arr.shape[:2] == preprocess.resized_size(*size, 520)[::-1]


def test_max_input_pixels_boundary_is_inclusive_in_either_orientation() -> None:
    cfg = PreprocessConfig(resize_size=100, crop_size=(100, 100), resize_mode="shorter")
    for size in ((300, 100), (100, 300)):  # resized to 300x100 or 100x300 = 30000 pixels
        data = _png(size)
        ok = preprocess.decode_one(
            data, cfg, max_pixels=10**6, min_size=None, max_input_pixels=30_000
        )
        assert ok[1] is None and ok[0] is not None and ok[0].size == 30_000 * 3
        refused = preprocess.decode_one(
            data, cfg, max_pixels=10**6, min_size=None, max_input_pixels=29_999
        )
        assert refused[1] is not None and refused[1].startswith("too_large: ")
        assert "more than --max-input-pixels 29999" in refused[1]


def test_decode_batch_refuses_only_the_oversized_image() -> None:
    datas = [_png((640, 480)), _png((4000, 40)), _png((480, 640))]
    batch = items_to_batch([InputItem(i, i) for i in "abc"])
    batch["bytes"] = np.empty(3, dtype=object)
    batch["bytes"][:] = datas
    out = decode_batch(batch, SEGMENT)
    assert out["status"].tolist() == ["ok", "error", "ok"]
    assert out["error"][1].startswith("too_large: 4000x40 image makes a 52000x520")
    assert out["input_height"].tolist() == [520, 0, 693]
    assert out["image"].shape == (3, 693, 693, 3)  # padded to the largest kept image only


def test_a_100_megapixel_photo_decodes_by_default() -> None:
    # 11648x8736 (a medium-format camera), 101.8 megapixels: above Pillow's warning
    # threshold and the old default; decoded at a reduced scale for the crop.
    arr, error, w, h = preprocess.decode_one(
        _jpeg((11648, 8736)),
        CLASSIFY,
        max_pixels=DEFAULT_MAX_PIXELS,
        min_size=draft_floor(CLASSIFY),
    )
    assert error is None and arr is not None and (w, h) == (11648, 8736)
    assert arr.shape == (224, 224, 3)


def test_detection_size_rules_match_the_references() -> None:
    """``edges_size`` is transformers' shortest/longest-edge rule (and YOLOS' variant, to
    a multiple of 16); ``bounded_size`` (the
    too-large check of torchvision detectors) is the size their transform resizes to."""
    import torch
    from torchvision.models.detection.transform import _resize_image_and_masks

    tf = pytest.importorskip("transformers")
    from transformers.models.yolos.image_processing_pil_yolos import (
        get_size_with_aspect_ratio_yolos as yolos_size,
    )

    from batchvision.stages.preprocess import bounded_size, edges_size

    rng = np.random.default_rng(5)
    sizes = [(1, 1), (2, 1), (1, 2000), (800, 800), (1333, 800), (640, 480)]
    sizes += [tuple(int(v) for v in rng.integers(1, 3000, 2)) for _ in range(40)]
    for w, h in sizes:
        oh, ow = tf.image_transforms.get_size_with_aspect_ratio((h, w), 800, 1333)
        assert edges_size(w, h, 800, 1333) == (ow, oh), (w, h)
        yh, yw = yolos_size((h, w), 800, 1333)
        if min(yh, yw) > 0:  # transformers' own rule gives 0 for a 1x2000 strip
            assert edges_size(w, h, 800, 1333, multiple=16) == (yw, yh), (w, h)
        if min(w, h) >= 8:
            out, _ = _resize_image_and_masks(torch.zeros(3, h, w), 800, 1333)
            assert bounded_size(w, h, 800, 1333) == (out.shape[2], out.shape[1]), (w, h)
