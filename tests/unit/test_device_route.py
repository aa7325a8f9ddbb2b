"""route_batch: which images the device decoder takes, decided (and the rest decoded on the
CPU) where the bytes are read, with the rows ``--decode-device cpu`` gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from batchvision.config import PreprocessConfig
from batchvision.engines.local import DecodeDataset
from batchvision.stages.device_decode import decode_batch_device
from batchvision.stages.device_route import CPU, DEVICE, frame_type, route_batch
from batchvision.stages.preprocess import decode_batch
from tests.unit import odd_images as oi
from tests.unit.test_device_decode import _batch as read_batch

CPU_DEVICE = torch.device("cpu")


def _mpo() -> bytes:
    first, second = oi.photo(320, 240, seed=21), oi.photo(320, 240, seed=22)
    return oi.encode(first, "MPO", save_all=True, append_images=[second], quality=90)


def _inputs() -> dict[str, bytes | None]:
    return {
        "baseline.jpg": oi.encode(oi.photo(300, 200, seed=1), "JPEG", quality=90),
        "progressive.jpg": oi.encode(oi.photo(300, 200, seed=2), "JPEG", progressive=True),
        "mpo.jpg": _mpo(),
        "png.png": oi.encode(oi.photo(120, 90, seed=3), "PNG"),
        "cmyk.jpg": oi.encode(Image.new("CMYK", (100, 80), (10, 200, 30, 5)), "JPEG"),
        "webp.webp": oi.encode(oi.photo(120, 90, seed=4), "WEBP", quality=90),
        "gray.jpg": oi.encode(oi.photo(150, 100, seed=5).convert("L"), "JPEG"),
        "rotated.jpg": oi.with_orientation(oi.photo(160, 120, seed=6), 6),
        "junk.jpg": b"\xff\xd8 not really a jpeg",
        "missing.jpg": None,
    }


def _batch(inputs: dict[str, bytes | None]) -> dict[str, np.ndarray]:
    """test_device_decode's read batch, with a column the source keeps."""
    return {**read_batch(inputs), "label": np.arange(len(inputs))}


def test_mpo_is_what_pillow_reports_for_the_fixture() -> None:
    img = Image.open(io.BytesIO(_mpo()))
    assert (img.format, img.mode, getattr(img, "n_frames", 1)) == ("MPO", "RGB", 2)


def test_each_kind_takes_its_route() -> None:
    batch = _batch(_inputs())
    routed = route_batch(batch, PreprocessConfig())
    names = list(batch["id"])
    on_device = [names[i] for i in routed[DEVICE]["rows"]]
    on_cpu = [names[i] for i in routed[CPU]["rows"]]
    assert on_device == ["baseline.jpg", "mpo.jpg", "gray.jpg", "rotated.jpg"]
    assert on_cpu == ["progressive.jpg", "png.png", "cmyk.jpg", "webp.webp", "junk.jpg"]
    assert "bytes" not in routed  # the device's bytes travel in one buffer
    assert routed["label"].tolist() == list(range(len(names)))
    dev = routed[DEVICE]
    # Stored sizes (rotated.jpg is 160x120 as stored, 120x160 as displayed).
    assert dev["width"].tolist() == [300, 320, 150, 160]
    assert dev["height"].tolist() == [200, 240, 100, 120]
    assert dev["orientation"].tolist() == [1, 1, 1, 6]
    for row, offset, length in zip(dev["rows"], dev["offsets"], dev["lengths"], strict=True):
        assert dev["data"][offset : offset + length].tobytes() == batch["bytes"][row]


def test_cpu_rows_are_decode_batchs_own() -> None:
    batch = _batch(_inputs())
    pre = PreprocessConfig(resize_size=64, crop_size=(64, 64))
    cpu = route_batch(batch, pre)[CPU]
    rows = cpu["rows"]
    want = decode_batch(batch, pre)
    for col in ("status", "error", "width", "height"):
        assert cpu[col].tolist() == want[col][rows].tolist(), col
    np.testing.assert_array_equal(cpu["image"], want["image"][rows])
    assert cpu["status"].tolist() == ["ok", "ok", "ok", "ok", "error"]
    assert cpu["error"][-1].startswith("not_image:")


def test_routed_batch_decodes_to_the_cpu_paths_rows() -> None:
    batch = _batch(_inputs())
    pre = PreprocessConfig(resize_size=64, crop_size=(64, 64))
    want = decode_batch(batch, pre)
    got = decode_batch_device(route_batch(batch, pre), pre, CPU_DEVICE)
    for col in ("status", "error", "width", "height"):
        assert list(got[col]) == list(want[col]), col
    diff = np.abs(got["image"].numpy().astype(int) - want["image"].astype(int))  # type: ignore[union-attr]
    assert diff.mean() < 1.0
    i = list(batch["id"]).index("mpo.jpg")  # the first picture, as Pillow decodes it
    assert diff[i].mean() < 1.0 and got["image"][i].float().mean() > 10  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        (oi.encode(oi.photo(40, 30), "JPEG"), (0xC0, 8)),
        (oi.encode(oi.photo(40, 30), "JPEG", progressive=True), (0xC2, 8)),
        (_mpo(), (0xC0, 8)),
        (oi.encode(oi.photo(40, 30), "JPEG")[:30], None),  # cut before the frame header
        (oi.encode(oi.photo(40, 30), "PNG"), None),
        (b"", None),
    ],
    ids=["baseline", "progressive", "mpo", "cut", "png", "empty"],
)
def test_frame_type(data: bytes, expect: tuple[int, int] | None) -> None:
    assert frame_type(data) == expect


def test_decode_dataset_routes_for_the_device_when_asked() -> None:
    batch = _batch(_inputs())
    pre = PreprocessConfig(resize_size=64, crop_size=(64, 64))
    out = DecodeDataset(pre, decode=False, device_route=True)._decoded(batch, 0.0)
    assert isinstance(out[DEVICE]["data"], torch.Tensor)  # shared memory, pinnable
    assert isinstance(out[CPU]["image"], torch.Tensor)
    assert out[DEVICE]["rows"].tolist() == [0, 2, 6, 7]
    assert set(out["_seconds"]) == {"read", "decode"}
    # The threads plan (decode=False alone) still gets the read batch as it is.
    plain = DecodeDataset(pre, decode=False)._decoded(batch, 0.0)
    assert DEVICE not in plain and plain["bytes"] is batch["bytes"]
