"""Unit tests of the task pieces: masks, upsampling, mask file names, preprocessing maps."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from batchvision.config import PreprocessConfig, PreprocessOverrides, RunConfig
from batchvision.errors import ConfigError, OutputDirError
from batchvision.io.sinks import (
    mask_file_name,
    masks_to_files,
)
from batchvision.models.hf import preprocess_from_processor
from batchvision.models.registry import resolve_model
from batchvision.models.timm import preprocess_from_data_config
from batchvision.stages.preprocess import decode_batch, resize_crop
from batchvision.stages.upsample import upsample_argmax
from batchvision.tasks import check_options, get_task
from batchvision.tasks.segment import decode_mask, encode_mask, mask_batch

SEGMENT_SCHEMA = get_task("segment").schema()
SEGMENT_FILES_SCHEMA = get_task("segment").schemas()["segment_files"]
EMBED_SCHEMA = get_task("embed").schema()

# ---------------------------------------------------------------------------------------
# Masks


@pytest.mark.parametrize("dtype, high", [(np.uint8, 256), (np.uint16, 3000)])
def test_masks_decode_back_exactly(dtype: type, high: int) -> None:
    rng = np.random.default_rng(0)
    class_map = rng.integers(0, high, size=(37, 53)).astype(dtype)
    data = encode_mask(class_map)
    assert data.startswith(b"\x89PNG")
    back = decode_mask(data)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, class_map)
    with Image.open(__import__("io").BytesIO(data)) as img:
        assert img.mode == ("L" if dtype == np.uint8 else "I;16")


def _segment_batch() -> dict[str, np.ndarray]:
    class_map = np.zeros((4, 5), np.uint8)
    class_map[:, 3:] = 2
    class_map[0, 0] = 1
    return {
        "id": np.array(["a/x.jpg", "b.jpg"], dtype=object),
        "path": np.array(["/a/x.jpg", "/b.jpg"], dtype=object),
        "status": np.array(["ok", "error"], dtype=object),
        "error": np.array([None, "corrupt: bad"], dtype=object),
        "width": np.array([5, 0], np.int32),
        "height": np.array([4, 0], np.int32),
        "class_map": np.array([class_map, np.zeros((0, 0), np.uint8)], dtype=object),
    }


def test_mask_batch_classes_sorted_by_fraction_and_nulls_on_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = mask_batch(_segment_batch(), ["sky", "cat", "road"])
    table = get_task("segment").to_table(out)
    assert table.schema == SEGMENT_SCHEMA
    rows = table.to_pylist()
    assert [c["label"] for c in rows[0]["classes"]] == ["sky", "road", "cat"]
    assert [c["fraction"] for c in rows[0]["classes"]] == pytest.approx([11 / 20, 8 / 20, 1 / 20])
    assert (rows[0]["mask_width"], rows[0]["mask_height"]) == (5, 4)
    assert rows[1]["mask"] is None and rows[1]["classes"] is None
    assert rows[1]["mask_width"] is None
    files = masks_to_files(table, str(tmp_path))
    assert files.schema == SEGMENT_FILES_SCHEMA
    path = files.column("mask_path").to_pylist()[0]
    assert path == str(tmp_path / "a" / "x.jpg.png")
    with open(path, "rb") as f:
        np.testing.assert_array_equal(decode_mask(f.read()), _segment_batch()["class_map"][0])
    assert files.column("mask_path").to_pylist()[1] is None
    assert not list(tmp_path.rglob(".*.tmp"))


def test_embed_table_schema_and_error_nulls() -> None:
    batch = {k: v for k, v in _segment_batch().items() if k != "class_map"}
    batch["embedding"] = np.ones((2, 3), np.float32)
    table = get_task("embed").to_table(batch)
    assert table.schema.names == EMBED_SCHEMA.names
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 3)
    assert table.column("embedding").to_pylist() == [[1.0, 1.0, 1.0], None]
    # pandas reads the fixed-size list as it reads a list; DuckDB as a FLOAT[3] array.
    assert list(table.to_pandas()["embedding"][0]) == [1.0, 1.0, 1.0]
    import duckdb

    con = duckdb.connect()
    con.register("t", table)
    rows = con.sql(
        "SELECT typeof(embedding), array_cosine_similarity(embedding, [2, 2, 2]::FLOAT[3]) "
        "FROM t WHERE status = 'ok'"
    ).fetchall()
    assert rows[0][0] == "FLOAT[3]" and rows[0][1] == pytest.approx(1.0)


def test_resume_refuses_an_embed_output_of_the_variable_list_layout() -> None:
    from batchvision.io.outdir import _RESUME_KEYS, check_resumable

    spec = resolve_model("mobilenet_v3_small", "random", task="embed")
    config = RunConfig(inputs=("x",), output="o", model="m", task="embed")
    now = {**dict.fromkeys(_RESUME_KEYS, 0), **get_task("embed").manifest_fields(spec, config)}
    assert now["embedding_type"] == "fixed_size_list<float32>[1024]"
    keys = get_task("embed").resume_fields
    check_resumable(dict(now), now, keys)  # the same layout: no error
    with pytest.raises(OutputDirError, match="embedding_type differs"):
        check_resumable({**now, "embedding_type": None}, now, keys)  # written before the change


def test_mask_file_names_are_safe_and_distinct() -> None:
    ids = [
        "a/b.jpg", "a/b.jpg.png", "a%2Fb.jpg", "../up.jpg", "./x.jpg", "/abs/p.jpg",
        "abs/p.jpg", ".hidden.jpg", "a//b.jpg", "a\\b.jpg", "ü name?.jpg", "x" * 400 + ".jpg",
        "y" * 400 + ".jpg",
    ]  # fmt: skip
    names = [mask_file_name(i) for i in ids]
    assert len(set(names)) == len(names)
    assert names[0] == "a/b.jpg.png"
    for name in names:
        parts = name.split("/")
        assert all(p and p not in (".", "..") and not p.startswith(".") for p in parts), name
        assert all(len(p.encode()) <= 255 for p in parts)
        assert name.endswith(".png")


# ---------------------------------------------------------------------------------------
# Upsampling


def test_banded_upsample_equals_interpolate() -> None:
    torch.manual_seed(0)
    logits = torch.randn(7, 9, 13)
    size = (61, 45)
    expected = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    full = upsample_argmax(logits, size, max_bytes=1 << 30)
    banded = upsample_argmax(logits, size, max_bytes=7 * 45 * 4 * 5)  # bands of 5 rows
    np.testing.assert_array_equal(full.numpy(), expected.argmax(0).numpy())
    agree = (banded == expected.argmax(0)).float().mean().item()
    assert agree > 0.999  # the same math; only float rounding may flip a tie


@pytest.mark.parametrize(
    ("shape", "size"), [((21, 8, 300), (10, 4000)), ((21, 300, 8), (4000, 10))]
)
def test_banded_upsample_of_extreme_aspect_ratios_equals_interpolate(
    shape: tuple[int, int, int], size: tuple[int, int]
) -> None:
    # Wide and tall maps, in bands of one or a few rows: each output row from its two
    # input rows, then the full width at once (no dense input x output weight matrices).
    torch.manual_seed(1)
    logits = torch.randn(*shape)
    expected = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)
    banded = upsample_argmax(logits, size, max_bytes=4 * 21 * (size[1] + 3 * shape[2]) * 2)
    assert banded.shape == size
    assert (banded == expected[0].argmax(0)).float().mean().item() > 0.999


def test_downsample_too() -> None:
    logits = torch.randn(3, 40, 40)
    expected = F.interpolate(logits[None], size=(9, 11), mode="bilinear", align_corners=False)
    banded = upsample_argmax(logits, (9, 11), max_bytes=3 * 11 * 4 * 2)
    assert (banded == expected[0].argmax(0)).float().mean().item() > 0.99


@pytest.mark.parametrize(
    ("classes", "dtype"), [(21, np.uint8), (300, np.uint16), (40000, np.uint16)]
)
def test_segment_maps_are_made_in_the_map_dtype_and_read_back_in_few_copies(
    classes: int, dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    import batchvision.tasks.segment as seg
    from batchvision.stages.readback import Readback

    torch.manual_seed(classes)
    sizes = [(7, 9), (10, 8), (2, 40), (8, 6)]  # small: 40000 classes upsample per pixel
    logits = torch.randn(len(sizes), classes, 4, 5)
    logits[1, classes - 1] += 5  # the highest id wins there (past int16's 32767 for 40000)
    predictor = SimpleNamespace(
        logits=lambda images: logits,
        spec=SimpleNamespace(num_classes=classes),
        upsample_bytes=1 << 30,
        device=torch.device("cpu"),
    )
    made: list[torch.dtype] = []
    real_upsample = seg.upsample_argmax

    def upsample(logits, size, max_bytes, out=None):  # type: ignore[no-untyped-def]
        made.append(out.dtype)
        return real_upsample(logits, size, max_bytes, out=out)

    copied: list[int] = []
    real_readback = seg.start_readback
    monkeypatch.setattr(seg, "upsample_argmax", upsample)

    def readback(columns: dict[str, torch.Tensor], device: torch.device) -> Readback:
        copied.append(columns["maps"].numel())
        return real_readback(columns, device)

    monkeypatch.setattr(seg, "start_readback", readback)
    # Room for the first two maps (7*9 + 10*8 = 143 pixels) in one copy, not three.
    monkeypatch.setattr(seg, "READBACK_BYTES", 150 * np.dtype(dtype).itemsize)
    maps = seg.segment(predictor, np.zeros((4, 1, 1, 3), np.uint8), sizes)  # type: ignore[arg-type]
    assert made == [torch.uint8 if dtype == np.uint8 else torch.int16] * 4  # never int64
    assert copied == [7 * 9 + 10 * 8, 2 * 40 + 8 * 6]
    for i, (m, size) in enumerate(zip(maps, sizes, strict=True)):
        expected = real_upsample(logits[i], size, 1 << 30).numpy()
        assert m.dtype == dtype and m.shape == size
        np.testing.assert_array_equal(m, expected.astype(dtype))
        np.testing.assert_array_equal(m.astype(np.int64), expected)  # no id wrapped
    assert int(maps[1].max()) == classes - 1


def test_segment_picks_its_rows_of_a_tensor_batch_without_numpy_indices() -> None:
    from types import SimpleNamespace

    class NoNumpyIndex(torch.Tensor):
        """A tensor that refuses numpy indices, which on a GPU wait for the device."""

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func is torch.Tensor.__getitem__:
                index = args[1] if isinstance(args[1], tuple) else (args[1],)
                assert not any(isinstance(i, np.ndarray) for i in index), "numpy index"
            return super().__torch_function__(func, types, args, kwargs or {})

    seen: list[tuple[list[int], tuple[int, ...]]] = []

    def logits(images: torch.Tensor) -> torch.Tensor:
        seen.append((images[:, 0, 0, 0].tolist(), tuple(images.shape[1:3])))
        return torch.zeros(len(images), 3, 2, 2)

    predictor = SimpleNamespace(
        logits=logits,
        spec=SimpleNamespace(num_classes=3),
        upsample_bytes=1 << 30,
        device=torch.device("cpu"),
    )
    images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 6, 8, 3).clone()
    batch = {
        "status": np.array(["ok", "error", "ok", "ok", "ok"], dtype=object),
        "image": images.as_subclass(NoNumpyIndex),
        "input_height": np.array([6, 0, 4, 6, 6]),
        "input_width": np.array([8, 0, 8, 8, 8]),
        "height": np.array([3, 0, 2, 3, 3]),
        "width": np.array([4, 0, 4, 4, 4]),
    }
    out = get_task("segment").predict(predictor, batch)  # type: ignore[arg-type]
    # Rows 0, 3, 4 (an index on the tensor's device), then row 2 (a slice), each group cut
    # to its input size.
    assert seen == [([0, 3, 4], (6, 8)), ([2], (4, 8))]
    assert [m.shape for m in out["class_map"]] == [(3, 4), (0, 0), (2, 4), (3, 4), (3, 4)]


def test_take_rows_slices_consecutive_rows_and_indexes_on_the_device() -> None:
    from batchvision.tasks.base import take_rows

    images = torch.arange(6 * 2).view(6, 2)
    run = take_rows(images, np.array([2, 3, 4]))
    assert run.data_ptr() == images[2].data_ptr()  # a view: no copy, no index
    np.testing.assert_array_equal(take_rows(images, np.array([0, 3, 5])).numpy(), images[[0, 3, 5]])
    arr = images.numpy()
    np.testing.assert_array_equal(take_rows(arr, np.array([1, 4])), arr[[1, 4]])


def test_mask_batch_on_threads_equals_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import batchvision.tasks.segment as seg

    rng = np.random.default_rng(5)
    maps = [rng.integers(0, 4, size=(30 + i, 40)).astype(np.uint8) for i in range(6)]
    maps[4] = rng.integers(0, 700, size=(20, 30)).astype(np.uint16)
    column = np.empty(7, dtype=object)
    column[:] = [*maps, np.zeros((0, 0), np.uint8)]
    batch = {"status": np.array(["ok"] * 6 + ["error"], dtype=object), "class_map": column}
    labels = [f"c{i}" for i in range(700)]
    threads: set[str] = set()
    real_png = seg._png

    def png(img):  # type: ignore[no-untyped-def]
        threads.add(threading.current_thread().name)
        return real_png(img)

    monkeypatch.setattr(seg, "_png", png)
    monkeypatch.setattr(seg.torch, "get_num_threads", lambda: 1)
    one = mask_batch(batch, labels)
    assert threads == {threading.current_thread().name}
    threads.clear()
    monkeypatch.setattr(seg.torch, "get_num_threads", lambda: 3)
    many = mask_batch(batch, labels)
    assert threads and all(t.startswith("masks") for t in threads)
    assert list(many["mask"]) == list(one["mask"])
    assert list(many["classes"]) == list(one["classes"])
    for m, data, listed in zip(maps, many["mask"], many["classes"], strict=False):
        np.testing.assert_array_equal(decode_mask(data), m)
        ids, counts = np.unique(m, return_counts=True)
        assert sorted((c["id"], c["fraction"]) for c in listed) == sorted(
            zip(ids.tolist(), (counts / m.size).tolist(), strict=True)
        )
    assert many["mask"][6] is None and many["classes"][6] is None


# ---------------------------------------------------------------------------------------
# Preprocessing from Hugging Face and timm configs


def test_hf_height_width_is_a_squash_resize() -> None:
    cfg = preprocess_from_processor(
        {
            "image_processor_type": "SegformerImageProcessor",
            "size": {"height": 512, "width": 384},
            "resample": 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
        }
    )
    assert cfg.resize_mode == "squash_crop" and cfg.resize_hw == (512, 384)
    assert cfg.crop_size == (512, 384) and cfg.interpolation == "bilinear"
    arr = resize_crop(Image.new("RGB", (1000, 300)), cfg)
    assert arr.shape == (512, 384, 3)


def test_hf_convnext_crop_pct_and_no_normalize() -> None:
    cfg = preprocess_from_processor(
        {
            "image_processor_type": "ConvNextImageProcessor",
            "size": {"shortest_edge": 224},
            "crop_pct": 0.875,
            "resample": 3,
            "do_normalize": False,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
        }
    )
    assert (cfg.resize_size, cfg.crop_size, cfg.resize_mode) == (256, (224, 224), "shorter_crop")
    assert cfg.mean == (0.0, 0.0, 0.0) and cfg.std == (1.0, 1.0, 1.0)
    assert cfg.interpolation == "bicubic" and cfg.crop_offset == "floor"


def test_hf_poolformer_crop_pct() -> None:
    cfg = preprocess_from_processor(
        {"image_processor_type": "PoolFormerImageProcessor", "size": {"shortest_edge": 224},
         "crop_pct": 0.9, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
         "resample": 3}
    )  # fmt: skip
    assert (cfg.resize_size, cfg.crop_size, cfg.resize_mode) == (248, (224, 224), "shorter_crop")


def test_hf_shortest_edge_with_crop_and_refusals() -> None:
    base = {"image_processor_type": "X", "resample": 2, "image_mean": 0.5, "image_std": 0.5}
    cfg = preprocess_from_processor(
        {**base, "size": {"shortest_edge": 256}, "do_center_crop": True,
         "crop_size": {"height": 224, "width": 224}}
    )  # fmt: skip
    assert (cfg.resize_size, cfg.crop_size, cfg.mean) == (256, (224, 224), (0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="resample=1"):
        preprocess_from_processor({**base, "resample": 1, "size": {"height": 8, "width": 8}})
    with pytest.raises(ConfigError, match="not supported"):
        preprocess_from_processor({**base, "size": {"shortest_edge": 8, "longest_edge": 20}})
    with pytest.raises(ConfigError, match="do_flip_channel_order"):
        preprocess_from_processor(
            {**base, "size": {"height": 8, "width": 8}, "do_flip_channel_order": True}
        )


def test_timm_center_and_squash() -> None:
    data = {
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 0.95,
        "crop_mode": "center",
    }
    cfg = preprocess_from_data_config(data)
    assert (cfg.resize_size, cfg.crop_size, cfg.interpolation) == (235, (224, 224), "bicubic")
    squash = preprocess_from_data_config({**data, "crop_mode": "squash", "crop_pct": 1.0})
    assert squash.resize_mode == "squash_crop" and squash.resize_hw == (224, 224)
    with pytest.raises(ConfigError, match="border"):
        preprocess_from_data_config({**data, "crop_mode": "border"})


def test_overrides_still_apply_to_squash() -> None:
    base = PreprocessConfig(resize_mode="squash_crop", resize_hw=(64, 64), crop_size=(64, 64))
    out = PreprocessOverrides(resize_size=80, crop_size=72).apply(base)
    assert out.resize_hw == (80, 80) and out.crop_size == (72, 72)


def test_variable_size_inputs_are_padded_with_their_sizes() -> None:
    import io

    cfg = PreprocessConfig(resize_size=32, crop_size=(32, 32), resize_mode="shorter")
    blobs = []
    for size in ((64, 32), (32, 96)):
        buf = io.BytesIO()
        Image.new("RGB", size, (200, 10, 10)).save(buf, "PNG")
        blobs.append(buf.getvalue())
    batch = {
        "id": np.array(["a", "b", "c"], dtype=object),
        "path": np.array(["a", "b", "c"], dtype=object),
        "bytes": np.array([*blobs, None], dtype=object),
        "error": np.array([None, None, "not_found: x"], dtype=object),
    }
    out = decode_batch(batch, cfg)
    assert out["image"].shape == (3, 96, 64, 3)
    assert out["input_height"].tolist() == [32, 96, 0] and out["input_width"].tolist() == [
        64,
        32,
        0,
    ]
    assert out["image"][0, :32, :64].min() > 0 and out["image"][0, 32:].max() == 0


# ---------------------------------------------------------------------------------------
# Tasks, options and optional packages


def test_task_defaults_and_refusals() -> None:
    assert resolve_model("mobilenet_v3_small", "random").task == "classify"
    spec = resolve_model("mobilenet_v3_small", "random", task="embed")
    assert spec.embedding_dim == 1024
    seg = resolve_model("lraspp_mobilenet_v3_large", "random")
    assert seg.task == "segment" and seg.preprocess.resize_mode == "shorter"
    assert pickle.loads(pickle.dumps(seg)) == seg
    with pytest.raises(ConfigError, match="supports segment"):
        resolve_model("lraspp_mobilenet_v3_large", "random", task="classify")
    with pytest.raises(ConfigError, match="--task 'detector' is not valid"):
        RunConfig(inputs=("x",), output="o", model="m", task="detector")  # type: ignore[arg-type]
    det = resolve_model("fasterrcnn_mobilenet_v3_large_320_fpn", "random")
    assert det.task == "detect" and det.preprocess.resize_mode == "model"
    with pytest.raises(ConfigError, match="supports classify, embed"):
        resolve_model("mobilenet_v3_small", "random", task="detect")
    with pytest.raises(ConfigError, match="--score-threshold applies to --task detect"):
        cfg = RunConfig(inputs=("x",), output="o", model="m", score_threshold=0.2)
        check_options(cfg, resolve_model("mobilenet_v3_small", "random"))
    with pytest.raises(ConfigError, match="--task detect runs in torch"):
        cfg = RunConfig(inputs=("x",), output="o", model="m", runtime="onnxruntime")
        check_options(cfg, det)
    with pytest.raises(ConfigError, match="--normalize applies to --task embed"):
        cfg = RunConfig(inputs=("x",), output="o", model="m", task="classify", normalize=True)
        check_options(cfg, resolve_model("mobilenet_v3_small", "random"))


@pytest.mark.parametrize(
    "model, package, extra",
    [("hf:org/name", "transformers", "hf"), ("timm:resnet18", "timm", "timm")],
)
def test_missing_optional_package_is_one_line_with_install_command(
    monkeypatch: pytest.MonkeyPatch, model: str, package: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(ConfigError) as info:
        resolve_model(model)
    msg = str(info.value)
    assert "\n" not in msg and package in msg and f"pip install 'batchvision[{extra}]'" in msg


def test_resume_accepts_a_manifest_from_before_resize_modes() -> None:
    import json
    from dataclasses import asdict

    from batchvision.errors import OutputDirError
    from batchvision.io.outdir import _RESUME_KEYS, check_resumable

    now = {key: None for key in _RESUME_KEYS}
    now["preprocess"] = asdict(PreprocessConfig())
    old = json.loads(json.dumps(now))
    for key in ("resize_mode", "resize_hw", "crop_offset", "rescale_factor"):
        del old["preprocess"][key]
    check_resumable(old, now)  # no error
    now["preprocess"] = asdict(PreprocessConfig(crop_offset="floor"))
    with pytest.raises(OutputDirError, match="preprocess differs"):
        check_resumable(old, now)


def test_arrow_schema_names_are_stable() -> None:
    assert SEGMENT_SCHEMA.names[-4:] == ["mask", "mask_width", "mask_height", "classes"]
    assert SEGMENT_FILES_SCHEMA.field("mask_path").type == pa.string()
    assert SEGMENT_SCHEMA.field("classes").type.value_type.names == ["id", "label", "fraction"]


def test_segment_predictor_batched_equals_one_by_one() -> None:
    import io

    from batchvision.demo import synth
    from batchvision.stages.predict import PredictOptions, Predictor

    spec = resolve_model(
        "lraspp_mobilenet_v3_large", "random", overrides=PreprocessOverrides(resize_size=48)
    )
    rng = np.random.default_rng(3)
    blobs = []
    for size in ((80, 60), (60, 80), (80, 60)):
        buf = io.BytesIO()
        synth.photo_like(rng, size).save(buf, "PNG")
        blobs.append(buf.getvalue())
    batch = {
        "id": np.array(["a", "b", "c", "d"], dtype=object),
        "path": np.array(["a", "b", "c", "d"], dtype=object),
        "bytes": np.array([*blobs, b"junk"], dtype=object),
        "error": np.full(4, None, dtype=object),
    }
    decoded = decode_batch(batch, spec.preprocess)
    predictor = Predictor(spec, PredictOptions(device="cpu", precision="fp32"))
    out = predictor(decoded)
    assert "image" not in out and "input_height" not in out
    assert [m.shape for m in out["class_map"]] == [(60, 80), (80, 60), (60, 80), (0, 0)]
    for i in range(3):
        one = {k: v[i : i + 1] for k, v in decoded.items()}
        np.testing.assert_array_equal(predictor(one)["class_map"][0], out["class_map"][i])
    assert pickle.loads(pickle.dumps(PredictOptions(normalize=True))).normalize


def test_prepare_mask_dir_refuses_and_cleans(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from batchvision.errors import OutputDirError
    from batchvision.io.outdir import prepare_mask_dir
    from batchvision.io.sinks import write_mask_file

    out, masks = tmp_path / "out", tmp_path / "masks"
    prepare_mask_dir(str(masks), str(out), resume=False, overwrite=False, previous=None)
    assert not masks.exists()  # made by the first mask written, not before
    kept = write_mask_file(str(masks), "a/b.jpg", b"png")
    (masks / "a" / ".c.jpg.png.tmp").write_bytes(b"half")  # a crash mid-write
    with pytest.raises(OutputDirError, match="not empty"):
        prepare_mask_dir(str(masks), str(out), resume=False, overwrite=False, previous=None)
    with pytest.raises(OutputDirError, match="wrote its masks to"):
        prepare_mask_dir(str(masks), str(out), resume=True, overwrite=False, previous=None)
    with pytest.raises(OutputDirError, match="must not be the --output folder"):
        prepare_mask_dir(str(out), str(out), resume=False, overwrite=False, previous=None)
    prepare_mask_dir(str(masks), str(out), resume=True, overwrite=False, previous=str(masks))
    assert Path(kept).read_bytes() == b"png" and not (masks / "a" / ".c.jpg.png.tmp").exists()
    (masks / "mine.txt").write_text("x")
    with pytest.raises(OutputDirError, match="did not write"):
        prepare_mask_dir(str(masks), str(out), resume=False, overwrite=True, previous=str(masks))
    assert Path(kept).exists()  # refused before deleting anything
    (masks / "mine.txt").unlink()
    prepare_mask_dir(str(masks), str(out), resume=False, overwrite=True, previous=str(masks))
    assert not list(masks.rglob("*.png"))


def test_task_registry_has_one_way_in_and_lists_the_valid_names() -> None:
    from batchvision.tasks import list_tasks, register_task
    from batchvision.tasks.classify import Classify

    assert {"classify", "embed", "segment", "zero-shot"} <= set(list_tasks())
    with pytest.raises(ValueError, match="already registered under the name 'classify'"):
        register_task(Classify)
    with pytest.raises(
        ConfigError, match="--task 'detector' is not valid; choose one of: classify"
    ):
        get_task("detector")


def test_zero_shot_options_and_their_refusals(tmp_path: Path) -> None:
    from batchvision.tasks.zero_shot import prompts, read_classes

    def cfg(**kw: object) -> RunConfig:
        return RunConfig(inputs=("x",), output="o", model="m", **kw)  # type: ignore[arg-type]

    assert read_classes(cfg(classes="cat, dog,,cat ,car")) == ("cat", "dog", "car")
    names = tmp_path / "classes.txt"
    names.write_bytes("\ufeffhot dog, with mustard\n\n  café \nhot dog, with mustard\n".encode())
    assert read_classes(cfg(classes_file=str(names))) == ("hot dog, with mustard", "café")
    with pytest.raises(ConfigError, match="needs class names"):
        read_classes(cfg())
    with pytest.raises(ConfigError, match="exclude each other"):
        read_classes(cfg(classes="a", classes_file=str(names)))
    with pytest.raises(ConfigError, match="--classes-file"):
        read_classes(cfg(classes_file=str(tmp_path / "missing.txt")))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"--classes-file .*can.t decode"):
        read_classes(cfg(classes_file=str(latin1)))
    assert prompts("a {} photo", ("cat",)) == ("a cat photo",)
    for bad in ("a photo", "{} and {}"):
        with pytest.raises(ConfigError, match="must hold \\{\\} once"):
            prompts(bad, ("cat",))
    spec = resolve_model("mobilenet_v3_small", "random")
    with pytest.raises(ConfigError, match="--classes applies to --task zero-shot only"):
        check_options(cfg(classes="a,b"), spec)
    with pytest.raises(ConfigError, match="supports classify, embed"):
        resolve_model("mobilenet_v3_small", "random", task="zero-shot")
