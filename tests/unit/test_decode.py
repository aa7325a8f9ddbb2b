"""decode_image / to_rgb on every odd input: orientation, modes, bombs, damage, non-images."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps, features

from batchvision.stages.decode import DecodeError, decode_image, to_rgb
from tests.unit import odd_images as oi

BIG = 10**8  # a max_pixels that never gets in the way


def _px(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


def _decode_error(data: bytes, **kwargs: object) -> DecodeError:
    kwargs.setdefault("max_pixels", BIG)
    with pytest.raises(DecodeError) as info:
        decode_image(data, **kwargs)  # type: ignore[arg-type]
    err = info.value
    assert str(err).startswith(f"{err.code}: ")
    return err


# --- EXIF orientation --------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(orientation: int) -> None:
    plain = oi.quadrants(64, 48)
    data = oi.with_orientation(plain, orientation, quality=95)
    decoded = decode_image(data, max_pixels=BIG)

    upright = (48, 64) if orientation >= 5 else (64, 48)
    assert (decoded.width, decoded.height) == upright
    assert decoded.image.size == upright
    assert decoded.image.mode == "RGB"
    # Exactly what Pillow's own exif_transpose shows for the same file...
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(_px(decoded.image), _px(expected))
    # ...and the stored pixels transposed as the EXIF specification says.
    stored = Image.open(io.BytesIO(oi.encode(plain, "JPEG", quality=95))).convert("RGB")
    op = oi.ORIENTATION_OPS[orientation]
    assert np.array_equal(_px(decoded.image), _px(stored if op is None else stored.transpose(op)))
    want = oi.corner_colours(plain if op is None else plain.transpose(op))
    got = oi.corner_colours(decoded.image)
    assert np.abs(np.array(got, dtype=int) - np.array(want, dtype=int)).max() <= 12


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize(
    ("fmt", "params"), [("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True})]
)
def test_exif_orientation_other_formats(
    fmt: str, params: dict[str, object], orientation: int
) -> None:
    # Pillow's TIFF plugin rotates on load() by itself: neither twice nor the wrong size.
    plain = oi.quadrants(64, 48)
    data = oi.with_orientation(plain, orientation, fmt, **params)
    decoded = decode_image(data, max_pixels=BIG)
    upright = (48, 64) if orientation >= 5 else (64, 48)
    assert (decoded.width, decoded.height) == upright
    assert decoded.image.size == upright
    op = oi.ORIENTATION_OPS[orientation]
    assert op is not None
    assert np.array_equal(_px(decoded.image), _px(plain.transpose(op)))


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_out_of_range_orientation_is_ignored(orientation: int) -> None:
    decoded = decode_image(oi.with_orientation(oi.quadrants(64, 48), orientation), max_pixels=BIG)
    assert (decoded.width, decoded.height) == (64, 48)
    assert oi.corner_colours(decoded.image)[0] == pytest.approx(oi.QUADRANT_COLOURS[0], abs=12)


def test_garbage_exif_block_does_not_cost_the_image() -> None:
    data = oi.encode(oi.quadrants(64, 48), "JPEG", exif=b"Exif\x00\x00" + b"\x13" * 40)
    decoded = decode_image(data, max_pixels=BIG)
    assert (decoded.width, decoded.height) == (64, 48)
    assert decoded.image.size == (64, 48)


def test_draft_reports_full_displayed_size_with_orientation() -> None:
    # Stored 2400x1600, displayed 1600x2400 (orientation 6). min_size is upright (w, h).
    data = oi.large_jpeg(2400, 1600, 6)
    drafted = decode_image(data, max_pixels=BIG, min_size=(300, 500))
    assert (drafted.width, drafted.height) == (1600, 2400)
    # 1/4 scale (600x400 stored) is the smallest that covers 300x500 upright; 1/8 is not.
    assert drafted.image.size == (400, 600)
    full = decode_image(data, max_pixels=BIG)
    assert (full.width, full.height) == (1600, 2400)
    assert full.image.size == (1600, 2400)


def test_draft_reduces_a_large_jpeg_but_reports_full_size() -> None:
    decoded = decode_image(oi.large_jpeg(), max_pixels=BIG, min_size=(256, 256))
    assert (decoded.width, decoded.height) == (4000, 3000)
    w, h = decoded.image.size
    assert 256 <= w < 4000 and 256 <= h < 3000
    assert decoded.image.size == (500, 375)  # libjpeg 1/8 scale


def test_draft_is_jpeg_only() -> None:
    decoded = decode_image(oi.encode(oi.photo(640, 480), "PNG"), max_pixels=BIG, min_size=(64, 64))
    assert decoded.image.size == (640, 480)
    assert (decoded.width, decoded.height) == (640, 480)


# --- every mode to RGB -------------------------------------------------------------------------


def test_mode_1_bilevel() -> None:
    img = Image.new("1", (8, 4), 0)
    img.paste(1, (4, 0, 8, 4))
    decoded = decode_image(oi.encode(img, "PNG"), max_pixels=BIG)
    assert Image.open(io.BytesIO(oi.encode(img, "PNG"))).mode == "1"
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((0, 0)) == (0, 0, 0)
    assert decoded.image.getpixel((7, 3)) == (255, 255, 255)


def test_mode_l_greyscale() -> None:
    decoded = decode_image(oi.encode(oi.solid((77,), mode="L"), "PNG"), max_pixels=BIG)
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((3, 3)) == (77, 77, 77)


@pytest.mark.parametrize(
    ("la", "rgb"),
    [((200, 0), (255, 255, 255)), ((200, 255), (200, 200, 200)), ((0, 128), (127, 127, 127))],
)
def test_mode_la_alpha_on_white(la: tuple[int, int], rgb: tuple[int, int, int]) -> None:
    data = oi.encode(oi.solid(la, mode="LA"), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    got = decode_image(data, max_pixels=BIG).image.getpixel((0, 0))
    assert got == pytest.approx(rgb, abs=1)


def test_mode_p_palette() -> None:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0, 0, 0] * 254)
    img.paste(1, (4, 0, 8, 8))
    decoded = decode_image(oi.encode(img, "PNG"), max_pixels=BIG)
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((0, 0)) == (10, 20, 30)
    assert decoded.image.getpixel((7, 7)) == (200, 100, 50)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_mode_p_with_transparency_on_white(fmt: str) -> None:
    if fmt == "PNG":
        data = oi.palette_with_transparency()
    else:
        data = oi.encode(Image.open(io.BytesIO(oi.palette_with_transparency())), "GIF")
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" in opened.info
    decoded = decode_image(data, max_pixels=BIG)
    assert decoded.image.getpixel((0, 0)) == (255, 255, 255)  # transparent red -> white
    assert decoded.image.getpixel((7, 7)) == (0, 0, 255)


def test_mode_pa_alpha_on_white() -> None:
    img = Image.new("PA", (4, 2), (1, 0))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    img.putpixel((3, 1), (1, 255))
    rgb = to_rgb(img)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((3, 1)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("rgba", "rgb"),
    [
        ((255, 0, 0, 0), (255, 255, 255)),  # fully transparent red -> white
        ((255, 0, 0, 255), (255, 0, 0)),
        ((255, 0, 0, 128), (255, 127, 127)),  # half transparent: blends with white
        ((0, 0, 0, 64), (191, 191, 191)),
    ],
)
def test_mode_rgba_alpha_on_white(
    rgba: tuple[int, int, int, int], rgb: tuple[int, int, int]
) -> None:
    data = oi.encode(oi.solid(rgba, mode="RGBA"), "PNG")
    got = decode_image(data, max_pixels=BIG).image.getpixel((5, 5))
    assert got == pytest.approx(rgb, abs=1)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_mode_cmyk(fmt: str) -> None:
    data = oi.encode(oi.solid((0, 255, 255, 0), mode="CMYK"), fmt)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data, max_pixels=BIG)
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((8, 8)) == pytest.approx((255, 0, 0), abs=3)


def test_mode_i16_png_scaled_to_8_bits() -> None:
    data = oi.i16_png([[0, 65535, 32896, 257]])
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    got = _px(decode_image(data, max_pixels=BIG).image)
    assert got[0, :, 0].tolist() == [0, 255, 128, 1]
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0, 100, 255], [0, 100, 255]), ([0, 65535, 32896, 70000, -5], [0, 255, 128, 255, 0])],
)
def test_mode_i_32bit_tiff(values: list[int], expected: list[int]) -> None:
    data = oi.tiff_of(np.array([values], dtype=np.int32))
    assert Image.open(io.BytesIO(data)).mode == "I"
    got = _px(decode_image(data, max_pixels=BIG).image)
    assert got[0, :, 0].tolist() == expected


def test_mode_f_float_tiff_clipped() -> None:
    data = oi.tiff_of(np.array([[0.0, 100.6, 300.0, -5.0]], dtype=np.float32))
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert _px(decode_image(data, max_pixels=BIG).image)[0, :, 0].tolist() == [0, 100, 255, 0]


def test_mode_ycbcr_tiff() -> None:
    data = oi.encode(oi.solid((200, 10, 10)).convert("YCbCr"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "YCbCr"
    assert decode_image(data, max_pixels=BIG).image.getpixel((1, 1)) == pytest.approx(
        (200, 10, 10), abs=3
    )


def test_mode_lab_tiff() -> None:
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    lab = ImageCms.applyTransform(oi.solid((220, 30, 30)), to_lab)
    assert lab is not None
    data = oi.encode(lab, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "LAB"
    assert decode_image(data, max_pixels=BIG).image.getpixel((1, 1)) == pytest.approx(
        (220, 30, 30), abs=4
    )


@pytest.mark.parametrize(
    "mode", ["1", "CMYK", "F", "HSV", "I", "I;16", "I;16B", "L", "LA", "LAB", "P", "PA", "RGBA"]
)
def test_to_rgb_every_mode_gives_rgb_of_same_size(mode: str) -> None:
    img = Image.new(mode, (5, 3))
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert out.size == (5, 3)


def test_to_rgb_keeps_rgb_as_is() -> None:
    img = oi.solid((1, 2, 3))
    assert to_rgb(img) is img


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_first_frame_is_used(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow build has no WebP support")
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    data = oi.animated(fmt, colours)
    opened = Image.open(io.BytesIO(data))
    if getattr(opened, "n_frames", 1) != 3:
        pytest.skip(f"this Pillow build does not write animated {fmt}")
    decoded = decode_image(data, max_pixels=BIG)
    assert (decoded.width, decoded.height) == (24, 16)
    arr = _px(decoded.image)
    assert (arr == np.array(colours[0])).all()


# --- decompression bombs -----------------------------------------------------------------------


def test_header_above_max_pixels_is_refused_before_decoding() -> None:
    # The header claims 3000x3000 but there is no pixel data: decoding would fail as
    # truncated, so too_large proves the check came from the header alone.
    data = oi.png_header(3000, 3000)
    err = _decode_error(data, max_pixels=1_000_000)
    assert err.code == "too_large"
    # Over twice the limit, Pillow's guard (set to --max-pixels) refuses it while opening.
    assert err.message == "9000000 pixels exceeds --max-pixels 1000000"
    assert _decode_error(data, max_pixels=10_000_000).code == "truncated"


def test_real_image_above_max_pixels() -> None:
    data = oi.encode(Image.new("RGB", (1100, 1000)), "PNG")
    assert _decode_error(data, max_pixels=1_000_000).code == "too_large"


def test_max_pixels_boundary_is_inclusive() -> None:
    data = oi.encode(Image.new("RGB", (10, 10)), "PNG")
    assert decode_image(data, max_pixels=100).image.size == (10, 10)
    assert _decode_error(data, max_pixels=99).code == "too_large"


@pytest.mark.parametrize("max_pixels", [89_478_485, 5 * 10**9])
def test_above_pillows_own_bomb_limit_is_too_large_not_an_exception(max_pixels: int) -> None:
    err = _decode_error(oi.png_header(100_000, 100_000), max_pixels=max_pixels)
    assert err.code == "too_large"
    assert "10000000000" in err.message and f"--max-pixels {max_pixels}" in err.message


def test_max_pixels_decides_not_pillows_own_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow's process-wide guard, set low (by default it refuses past 178,956,970 pixels):
    # --max-pixels alone decides, above or below it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = oi.encode(Image.new("RGB", (100, 100)), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(data, max_pixels=10_000).image.size == (100, 100)
    err = _decode_error(data, max_pixels=9_999)
    assert (err.code, err.message) == (
        "too_large",
        "100x100 = 10000 pixels exceeds --max-pixels 9999",
    )


def test_between_pillow_warning_and_error_limits_no_warning_escapes() -> None:
    # 10^8 pixels: above Pillow's warning threshold, below its error threshold.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        err = _decode_error(oi.png_header(10_000, 10_000), max_pixels=89_478_485)
    assert err.code == "too_large"


def test_empty_size_header_is_not_an_image() -> None:
    assert _decode_error(oi.png_header(0, 5)).code == "not_image"


# --- damaged files and non-images --------------------------------------------------------------


def test_zero_bytes_is_empty() -> None:
    assert _decode_error(b"").code == "empty"


@pytest.mark.parametrize(
    "data",
    [oi.TEXT, oi.PDF, oi.HTML, b" ", b"\x00" * 100, b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"GIF89a"],
    ids=["text", "pdf", "html", "space", "zeros", "png-signature", "jpeg-soi", "gif-magic"],
)
def test_non_image_content(data: bytes) -> None:
    assert _decode_error(data).code == "not_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF", "BMP"])
def test_file_cut_in_half_is_truncated(fmt: str) -> None:
    data = oi.encode(oi.photo(96, 64, seed=3), fmt)
    err = _decode_error(oi.truncated(data, 0.5))
    assert err.code == "truncated"


def test_jpeg_cut_inside_its_headers_is_truncated() -> None:
    data = oi.encode(oi.photo(96, 64, seed=3), "JPEG")
    assert _decode_error(data[:200]).code == "truncated"


def test_webp_cut_in_half_is_corrupt() -> None:
    # libwebp refuses a cut file outright and cannot say why: reported as corrupt.
    data = oi.encode(oi.photo(96, 64, seed=3), "WEBP")
    assert _decode_error(oi.truncated(data, 0.5)).code == "corrupt"


def test_jpeg_headers_then_random_bytes_is_corrupt() -> None:
    err = _decode_error(oi.jpeg_random_scan(seed=0))
    assert err.code == "corrupt"


def test_jpeg_with_undefined_huffman_tables_is_corrupt() -> None:
    assert _decode_error(oi.jpeg_undefined_huffman_table()).code == "corrupt"


def test_png_with_damaged_pixel_data_is_corrupt_not_black() -> None:
    # Regression: Pillow's PNG getexif() loads the pixels; a failed load there used to be
    # swallowed, leaving an all-black image reported as ok.
    assert _decode_error(oi.png_damaged_pixels(seed=0)).code == "corrupt"


def test_content_not_name_decides_format() -> None:
    jpeg = oi.encode(oi.quadrants(64, 48), "JPEG")
    decoded = decode_image(jpeg, max_pixels=BIG)
    assert (decoded.width, decoded.height) == (64, 48)


def test_decode_error_is_picklable() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(DecodeError("corrupt", "bad bytes")))
    assert isinstance(err, DecodeError)
    assert str(err) == "corrupt: bad bytes"
