"""The device decode path (``--decode-device``), run on CPU: torchvision's batched
``decode_jpeg`` with ``device="cpu"`` takes the same code path as on a GPU.

Rows (status, error code, width, height) must equal the CPU path's exactly, including the
fallbacks; images must agree within resize rounding, and the model's centered
log-probabilities within a cosine of 0.99.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from batchvision.config import PreprocessConfig
from batchvision.stages import device_decode
from batchvision.stages.device_decode import decode_batch_device, resize_crop_tensor
from batchvision.stages.device_route import device_decodable
from batchvision.stages.preprocess import decode_batch, resize_crop
from tests.unit import odd_images as oi

CPU = torch.device("cpu")
BIG = 10**9


def _inputs() -> dict[str, bytes | None]:
    photo = oi.photo(500, 375, seed=1)
    return {
        "plain.jpg": oi.encode(photo, "JPEG", quality=90),
        "portrait.jpg": oi.encode(oi.photo(300, 520, seed=2), "JPEG", quality=85),
        "progressive.jpg": oi.encode(oi.photo(640, 480, seed=3), "JPEG", progressive=True),
        "small.jpg": oi.encode(oi.photo(150, 120, seed=4), "JPEG"),  # upscaled
        "large.jpg": oi.large_jpeg(2000, 1500),
        "png.png": oi.encode(oi.photo(320, 240, seed=5), "PNG"),
        "cmyk.jpg": oi.encode(oi.photo(300, 260, seed=6).convert("CMYK"), "JPEG"),
        "gray.jpg": oi.encode(oi.photo(280, 300, seed=7).convert("L"), "JPEG"),
        "rotated.jpg": oi.with_orientation(oi.photo(400, 300, seed=8), 6),
        "truncated.jpg": oi.truncated(oi.encode(oi.photo(300, 300, seed=9), "JPEG")),
        "random_scan.jpg": oi.jpeg_random_scan(),
        "not_image.jpg": b"definitely not an image",
        "empty.jpg": b"",
        "missing.jpg": None,  # a read error
    }


def _batch(inputs: dict[str, bytes | None]) -> dict[str, np.ndarray]:
    n = len(inputs)
    data = np.empty(n, dtype=object)
    data[:] = list(inputs.values())
    return {
        "id": np.array(list(inputs), dtype=object),
        "path": np.array([f"/in/{k}" for k in inputs], dtype=object),
        "bytes": data,
        "error": np.array(
            [None if v is not None else "not_found: no such file" for v in inputs.values()],
            dtype=object,
        ),
    }


@pytest.fixture(scope="module")
def both() -> tuple[dict[str, np.ndarray], dict[str, object]]:
    batch = _batch(_inputs())
    pre = PreprocessConfig()
    return decode_batch(batch, pre), decode_batch_device(batch, pre, CPU)


def test_rows_equal_the_cpu_path(both) -> None:
    cpu, dev = both
    for col in ("id", "path", "status", "error", "width", "height"):
        assert list(dev[col]) == list(cpu[col]), col
    codes = {i: (e or "").split(":")[0] for i, e in zip(cpu["id"], cpu["error"], strict=True)}
    assert codes["truncated.jpg"] == "truncated"
    assert codes["random_scan.jpg"] == "corrupt"
    assert codes["not_image.jpg"] == "not_image"
    assert codes["empty.jpg"] == "empty"
    assert codes["missing.jpg"] == "not_found"
    assert codes["rotated.jpg"] == ""  # ok, and upright: 300x400
    i = list(cpu["id"]).index("rotated.jpg")
    assert (dev["width"][i], dev["height"][i]) == (300, 400)


def test_images_agree_within_rounding(both) -> None:
    cpu, dev = both
    image = dev["image"]
    assert isinstance(image, torch.Tensor) and image.device == CPU
    assert image.dtype == torch.uint8 and tuple(image.shape) == cpu["image"].shape
    got = image.numpy().astype(np.int16)
    want = cpu["image"].astype(np.int16)
    for i, name in enumerate(cpu["id"]):
        diff = np.abs(got[i] - want[i])
        if cpu["status"][i] == "error":
            assert not got[i].any(), name
        elif name in ("png.png", "cmyk.jpg"):
            assert not diff.any(), f"{name}: the CPU fallback must give the same pixels"
        else:
            # The antialiased tensor resize vs Pillow's: rounding-level differences;
            # large.jpg also differs by Pillow's reduced-size (draft) decoding.
            assert diff.mean() < (2.5 if name == "large.jpg" else 1.0), (name, diff.mean())


def test_model_parity_centered_cosine(both) -> None:
    cpu, dev = both
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=50).eval()
    ok = np.flatnonzero(cpu["status"] == "ok")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def logp(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return torch.log_softmax(model((x - mean) / std), 1).numpy()

    a = logp(dev["image"].numpy()[ok])  # type: ignore[union-attr]
    b = logp(cpu["image"][ok])
    centre = b.mean(0, keepdims=True)
    a, b = a - centre, b - centre
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.99, cos


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("plain.jpg", (500, 375, 1)),
        ("progressive.jpg", None),  # SOF2: libjpeg on the CPU, in the workers
        ("gray.jpg", (280, 300, 1)),
        ("rotated.jpg", (300, 400, 6)),  # as displayed
        ("png.png", None),
        ("cmyk.jpg", None),
        ("not_image.jpg", None),
        ("empty.jpg", None),
        ("missing.jpg", None),
    ],
)
def test_device_decodable(name: str, expect: tuple[int, int, int] | None) -> None:
    assert device_decodable(_inputs()[name], BIG) == expect


def test_too_large_goes_to_the_cpu_path_and_is_an_error_row() -> None:
    batch = _batch({"a.jpg": oi.encode(oi.photo(300, 200), "JPEG")})
    assert device_decodable(batch["bytes"][0], 300 * 200 - 1) is None
    dev = decode_batch_device(batch, PreprocessConfig(), CPU, max_pixels=300 * 200 - 1)
    cpu = decode_batch(batch, PreprocessConfig(), max_pixels=300 * 200 - 1)
    assert list(dev["error"]) == list(cpu["error"])
    assert str(dev["error"][0]).startswith("too_large:")


@pytest.mark.parametrize(
    "cfg",
    [
        PreprocessConfig(),
        PreprocessConfig(resize_size=232, crop_size=(224, 224), interpolation="bicubic"),
        PreprocessConfig(resize_mode="squash_crop", resize_hw=(240, 240), crop_size=(224, 224)),
        PreprocessConfig(resize_size=100, crop_size=(90, 96), crop_offset="floor"),
        PreprocessConfig(resize_size=64, crop_size=(80, 80)),  # crop larger than the image
        PreprocessConfig(resize_size=128, resize_mode="shorter"),
    ],
    ids=["default", "bicubic", "squash", "floor", "pad", "shorter"],
)
def test_resize_crop_tensor_matches_pillow(cfg: PreprocessConfig) -> None:
    img = oi.photo(333, 250, seed=11)
    want = resize_crop(img, cfg).astype(np.int16)
    tensor = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
    got = resize_crop_tensor(tensor, cfg).numpy().astype(np.int16)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 1.0


def test_shorter_mode_pads_like_the_cpu_path() -> None:
    batch = _batch(
        {
            "a.jpg": oi.encode(oi.photo(300, 200, seed=1), "JPEG"),
            "b.jpg": oi.encode(oi.photo(200, 300, seed=2), "JPEG"),
            "c.png": oi.encode(oi.photo(250, 250, seed=3), "PNG"),
        }
    )
    cfg = PreprocessConfig(resize_size=64, resize_mode="shorter")
    cpu = decode_batch(batch, cfg)
    dev = decode_batch_device(batch, cfg, CPU)
    assert dev["image"].shape == cpu["image"].shape  # type: ignore[union-attr]
    assert list(dev["input_height"]) == list(cpu["input_height"]) == [64, 96, 64]
    assert list(dev["input_width"]) == list(cpu["input_width"]) == [96, 64, 64]


def test_empty_batch() -> None:
    out = decode_batch_device(_batch({}), PreprocessConfig(), CPU)
    assert out["image"].shape == (0, 224, 224, 3)  # type: ignore[union-attr]
    assert len(out["status"]) == 0


def test_input_batch_is_not_modified() -> None:
    batch = _batch({"a.jpg": b"junk", "b.jpg": oi.encode(oi.photo(100, 100), "JPEG")})
    before = list(batch["error"])
    decode_batch_device(batch, PreprocessConfig(), CPU)
    assert list(batch["error"]) == before


def test_grayscale_jpeg_is_read_as_rgb_by_both_paths() -> None:
    data = oi.encode(Image.new("L", (260, 260), 90), "JPEG")
    batch = _batch({"g.jpg": data})
    dev = decode_batch_device(batch, PreprocessConfig(), CPU)
    assert dev["status"][0] == "ok"
    img = dev["image"][0].numpy()  # type: ignore[index]
    assert np.all(np.abs(img.astype(int) - 90) <= 1)


def test_cpu_decode_on_a_thread_pool_equals_one_by_one() -> None:
    from concurrent.futures import ThreadPoolExecutor

    batch = _batch(_inputs())
    want = decode_batch(batch, PreprocessConfig())
    with ThreadPoolExecutor(3) as pool:
        got = decode_batch(batch, PreprocessConfig(), pool=pool)
    for col in ("id", "status", "error", "width", "height"):
        assert list(got[col]) == list(want[col]), col
    np.testing.assert_array_equal(got["image"], want["image"])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_on_the_device(orientation: int) -> None:
    # Distinct quadrant colours: a wrong flip or rotation moves them.
    data = oi.with_orientation(oi.quadrants(300, 240), orientation, quality=95)
    batch = _batch({"q.jpg": data})
    cfg = PreprocessConfig(resize_size=120, crop_size=(120, 120))
    cpu = decode_batch(batch, cfg)
    dev = decode_batch_device(batch, cfg, CPU)
    assert device_decodable(data, BIG) is not None  # really the device path
    assert (dev["width"][0], dev["height"][0]) == (cpu["width"][0], cpu["height"][0])
    diff = np.abs(dev["image"][0].numpy().astype(int) - cpu["image"][0].astype(int))  # type: ignore[index]
    assert diff.mean() < 1.0, diff.mean()


def test_a_resize_too_large_for_the_device_goes_to_the_cpu_crop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The device resizes the whole image before cropping: a 20:1 strip resized to 256 on
    # its shorter side is 5120x256 = 1.3 megapixels there, while the CPU path resamples
    # only the 224x224 crop. Past --max-input-pixels it must take the CPU path.
    strip = oi.encode(oi.photo(2000, 100, seed=3), "JPEG", quality=90)
    batch = _batch({"strip.jpg": strip, "plain.jpg": oi.encode(oi.photo(320, 240), "JPEG")})
    sent: list[int] = []
    real = device_decode._decode_jpegs

    def spy(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
        sent.append(len(datas))
        return real(datas, device)

    monkeypatch.setattr(device_decode, "_decode_jpegs", spy)
    pre = PreprocessConfig()
    limit = 341 * 256  # the plain photo's full resize (341x256) fits, the strip's does not
    dev = decode_batch_device(batch, pre, CPU, max_input_pixels=limit)
    cpu = decode_batch(batch, pre, max_input_pixels=limit)
    assert sent == [1]
    assert dev["status"].tolist() == cpu["status"].tolist() == ["ok", "ok"]
    assert np.array_equal(dev["image"][0].cpu().numpy(), cpu["image"][0])
    # Past the bound for the CPU path too: the same error row from both.
    tight = decode_batch_device(
        batch,
        PreprocessConfig(resize_size=64, crop_size=(64, 64)),
        CPU,
        max_input_pixels=64 * 64 - 1,
    )
    assert tight["error"][0].startswith("too_large: 2000x100 image makes a 64x64")


# --- failures, memory bounds and large downscales ------------------------------------------


def _jpegs(n: int, size: tuple[int, int] = (64, 48), bad: tuple[int, ...] = ()) -> dict:
    """``n`` small JPEGs, those at ``bad`` with valid headers and a garbage scan."""
    inputs: dict[str, bytes | None] = {}
    for i in range(n):
        data = oi.jpeg_random_scan(seed=i) if i in bad else None
        inputs[f"{i:02d}.jpg"] = data or oi.encode(oi.photo(*size, seed=i), "JPEG", quality=90)
    return inputs


class _Spy:
    """Wraps ``_decode_jpegs``: counts calls and their sizes, optionally failing some."""

    def __init__(self, fail=None) -> None:
        self.calls: list[int] = []
        self.decoded = 0
        self.fail = fail
        self.real = device_decode._decode_jpegs

    def __call__(self, datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        self.calls.append(len(datas))
        if self.fail is not None:
            self.fail(datas)
        out = self.real(datas, device)
        self.decoded += len(out)
        return out


def _rows(out: dict) -> list[tuple]:
    cols = ("id", "status", "error", "width", "height")
    return list(zip(*(list(out[c]) for c in cols), strict=True))


def test_one_bad_file_splits_the_call_in_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _batch(_jpegs(32, bad=(13,)))
    assert device_decodable(batch["bytes"][13], BIG) is not None  # the device gets it
    spy = _Spy()
    monkeypatch.setattr(device_decode, "_decode_jpegs", spy)
    pre = PreprocessConfig(resize_size=32, crop_size=(32, 32))
    dev = decode_batch_device(batch, pre, CPU)
    # 32 -> 16+16 -> 8+8 -> 4+4 -> 2+2 -> 1+1: 11 calls, against 33 one by one.
    assert len(spy.calls) == 1 + 2 * 5, spy.calls
    assert spy.decoded == 31  # every good image on the device
    assert _rows(dev) == _rows(decode_batch(batch, pre))
    assert dev["error"][13].startswith("corrupt:")


def test_out_of_memory_halves_the_call_and_stays_on_the_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(datas: list[torch.Tensor]) -> None:
        if len(datas) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    spy = _Spy(fail)
    monkeypatch.setattr(device_decode, "_decode_jpegs", spy)
    on_cpu: list[bytes] = []
    real_one = device_decode.decode_one
    monkeypatch.setattr(
        device_decode, "decode_one", lambda d, *a, **k: on_cpu.append(d) or real_one(d, *a, **k)
    )
    batch = _batch(_jpegs(16))
    pre = PreprocessConfig(resize_size=32, crop_size=(32, 32))
    dev = decode_batch_device(batch, pre, CPU)
    assert spy.calls == [16, 8, 4, 2, 2, 4, 2, 2, 8, 4, 2, 2, 4, 2, 2]
    assert spy.decoded == 16 and on_cpu == []
    assert _rows(dev) == _rows(decode_batch(batch, pre))


def test_a_single_image_out_of_memory_goes_to_the_cpu_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(datas: list[torch.Tensor]) -> None:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(device_decode, "_decode_jpegs", _Spy(fail))
    batch = _batch(_jpegs(2))
    pre = PreprocessConfig(resize_size=32, crop_size=(32, 32))
    dev = decode_batch_device(batch, pre, CPU)
    cpu = decode_batch(batch, pre)
    assert _rows(dev) == _rows(cpu)
    np.testing.assert_array_equal(dev["image"].numpy(), cpu["image"])  # type: ignore[union-attr]
    oom = [r for r in caplog.records if "out of cpu memory decoding one 64x48" in r.message]
    assert len(oom) == 2 and all(r.levelname == "WARNING" for r in oom)


def test_the_byte_budget_splits_the_decode_call(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy()
    monkeypatch.setattr(device_decode, "_decode_jpegs", spy)
    batch = _batch(_jpegs(10))
    pre = PreprocessConfig(resize_size=32, crop_size=(32, 32))
    one = 64 * 48 * 3
    dev = decode_batch_device(batch, pre, CPU, max_decode_bytes=3 * one + 1)
    assert spy.calls == [3, 3, 3, 1]
    assert _rows(dev) == _rows(decode_batch(batch, pre))
    spy.calls.clear()
    decode_batch_device(batch, pre, CPU, max_decode_bytes=1)  # still one image a call
    assert spy.calls == [1] * 10


def test_full_size_images_are_released_before_the_next_decode_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import weakref

    alive: list[weakref.ref] = []
    real = device_decode._decode_jpegs
    still_alive_at_call: list[int] = []

    def tracking(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        still_alive_at_call.append(sum(r() is not None for r in alive))
        out = real(datas, device)
        alive.extend(weakref.ref(t) for t in out)
        return out

    monkeypatch.setattr(device_decode, "_decode_jpegs", tracking)
    batch = _batch(_jpegs(8, size=(400, 300)))
    decode_batch_device(batch, PreprocessConfig(), CPU, max_decode_bytes=2 * 400 * 300 * 3)
    assert still_alive_at_call == [0, 0, 0, 0]
    assert len(alive) == 8


def test_images_of_one_size_are_resized_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    shapes: list[tuple[int, ...]] = []
    real = device_decode.resize_crop_batch

    def spy(x: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return real(x, cfg)

    monkeypatch.setattr(device_decode, "resize_crop_batch", spy)
    inputs = _jpegs(5, size=(120, 90))
    inputs.update({f"b{i}.jpg": oi.encode(oi.photo(90, 120, seed=i), "JPEG") for i in range(3)})
    inputs["r.jpg"] = oi.with_orientation(oi.photo(120, 90, seed=9), 6)  # upright 90x120
    batch = _batch(inputs)
    pre = PreprocessConfig(resize_size=64, crop_size=(64, 64))
    dev = decode_batch_device(batch, pre, CPU)
    assert sorted(shapes) == [(4, 3, 120, 90), (5, 3, 90, 120)]
    assert _rows(dev) == _rows(decode_batch(batch, pre))


def test_a_failing_resize_costs_that_images_row_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real = device_decode.resize_crop_batch

    def fragile(x: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
        if (x[:, :, :8, :8].float().mean((1, 2, 3)) > 250).any():  # the white image
            raise RuntimeError("Too much shared memory required: 52224 vs 49152")
        return real(x, cfg)

    monkeypatch.setattr(device_decode, "resize_crop_batch", fragile)
    on_cpu: list[bytes] = []
    real_one = device_decode.decode_one
    monkeypatch.setattr(
        device_decode, "decode_one", lambda d, *a, **k: on_cpu.append(d) or real_one(d, *a, **k)
    )
    inputs = _jpegs(4, size=(96, 64))
    inputs["white.jpg"] = oi.encode(Image.new("RGB", (96, 64), (255, 255, 255)), "JPEG")
    batch = _batch(inputs)
    pre = PreprocessConfig(resize_size=32, crop_size=(32, 32))
    dev = decode_batch_device(batch, pre, CPU)
    cpu = decode_batch(batch, pre)
    assert on_cpu == [inputs["white.jpg"]]
    assert _rows(dev) == _rows(cpu) and set(dev["status"]) == {"ok"}
    np.testing.assert_array_equal(dev["image"][4].numpy(), cpu["image"][4])  # type: ignore[index]


@pytest.mark.parametrize(
    ("size", "cfg", "pre_shrunk"),
    [
        ((2000, 2000), PreprocessConfig(resize_size=32, crop_size=(32, 32)), (15, 15)),
        (
            (2000, 2000),
            PreprocessConfig(resize_size=32, crop_size=(32, 32), interpolation="bicubic"),
            (15, 15),
        ),
        (
            (6000, 200),
            PreprocessConfig(resize_mode="squash_crop", resize_hw=(240, 240), crop_size=(224, 224)),
            (1, 6),
        ),
        ((4000, 3000), PreprocessConfig(), (1, 1)),  # 11.7x: no pre-shrink
    ],
    ids=["2000-to-32", "2000-to-32-bicubic", "6000x200-squash", "12mp"],
)
def test_a_huge_downscale_is_pre_shrunk_and_matches_the_cpu_path(
    monkeypatch: pytest.MonkeyPatch,
    size: tuple[int, int],
    cfg: PreprocessConfig,
    pre_shrunk: tuple[int, int],
) -> None:
    factors: list[tuple[float, float]] = []
    real = torch.nn.functional.interpolate

    def spy(x: torch.Tensor, size: tuple[int, int], **kw: object) -> torch.Tensor:
        if kw.get("antialias"):
            factors.append((x.shape[2] / size[0], x.shape[3] / size[1]))
        return real(x, size=size, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    w, h = size
    data = oi.large_jpeg(w, h) if size == (4000, 3000) else oi.encode(oi.photo(w, h), "JPEG")
    batch = _batch({"big.jpg": data})
    rw, rh = device_decode.output_size(w, h, cfg)
    assert device_decode.preshrink_factors(h, w, rh, rw) == pre_shrunk
    dev = decode_batch_device(batch, cfg, CPU)
    cpu = decode_batch(batch, cfg)
    assert _rows(dev) == _rows(cpu) and dev["status"][0] == "ok"
    assert len(factors) == 1 and max(factors[0]) <= device_decode.MAX_RESIZE_FACTOR, factors
    if pre_shrunk != (1, 1):
        assert max(factors[0]) < 2 * device_decode.PRESHRINK_GAP, factors
    diff = np.abs(dev["image"][0].numpy().astype(int) - cpu["image"][0].astype(int))  # type: ignore[index]
    # Measured: max 4/3/2/1, mean 0.44/0.51/0.29/0.05 (without the pre-shrink: max 1,
    # mean <= 0.17, but a 62x antialiased shrink that CUDA refuses).
    assert diff.max() <= 5 and diff.mean() < 0.6, (diff.max(), diff.mean())


@pytest.mark.parametrize("shrink", [1, 2, 5, 8, 15.9, 16, 16.5, 31.3, 62.5, 300])
def test_no_resize_is_left_a_shrink_past_the_limit(shrink: float) -> None:
    gap, limit = device_decode.PRESHRINK_GAP, device_decode.MAX_RESIZE_FACTOR
    for out in (7, 32, 224, 341):
        src = int(out * shrink)
        f = device_decode.preshrink_factors(src, src, out, out)[0]
        left = (src // f) / out
        assert left <= limit
        assert (f == 1) == (src <= out * limit)  # pre-shrunk only past the limit
        assert f == 1 or gap - 1 / out <= left < 2 * gap
