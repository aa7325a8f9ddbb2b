"""Output folders for the report tests: real classification runs, synthetic segment/embed.

The segmentation and embedding outputs are written with pyarrow to the schema those tasks
use (``mask``/``mask_path``, ``mask_width``, ``mask_height``, ``classes``; ``embedding``),
so the report is tested against it before those engines exist on this branch.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import batchvision
from batchvision import PreprocessOverrides, RunConfig
from batchvision.demo import synth

SMALL = PreprocessOverrides(resize_size=64, crop_size=64)
GOOD = 14
BAD = {"zero.jpg": "empty", "text.jpg": "not_image", "truncated.jpg": "truncated"}
GONE = "gone.jpg"  # deleted after the run: its thumbnail must be a placeholder

CLASSES_TYPE = pa.list_(
    pa.struct([("id", pa.int32()), ("label", pa.string()), ("fraction", pa.float32())])
)
SEG_LABELS = {0: "background", 1: "road", 2: "car", 300: "rare_thing"}


def make_images(root: Path, n: int = GOOD, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs of varied sizes, plus the bad files of ``BAD`` and ``GONE``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        size = (int(rng.integers(80, 400)), int(rng.integers(80, 400)))
        path = root / f"img_{i:02d}.jpg"
        synth.photo_like(rng, size).save(path, "JPEG", quality=85)
        paths.append(path)
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image\n")
    full = paths[0].read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    synth.photo_like(rng, (120, 90)).save(root / GONE, "JPEG")
    return paths


@pytest.fixture(scope="session")
def classify_outputs(
    tiny_checkpoint: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Real runs of the tiny classifier over one folder, in every output format."""
    root = tmp_path_factory.mktemp("report_classify")
    images = root / "images"
    make_images(images)
    ckpt, labels = tiny_checkpoint
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    outs = {}
    try:
        for fmt in ("parquet", "csv", "jsonl"):
            out = root / f"out_{fmt}"
            batchvision.run(
                RunConfig(
                    inputs=(str(images),),
                    output=str(out),
                    model="mobilenet_v3_small",
                    weights=str(ckpt),
                    labels=str(labels),
                    batch_size=8,
                    workers=0,
                    top_k=3,
                    format=fmt,  # type: ignore[arg-type]
                    preprocess=SMALL,
                    max_error_rate=1.0,
                    part_rows=8,
                )
            )
            outs[fmt] = out
    finally:
        torch.set_num_threads(threads)
    (images / GONE).unlink()
    return outs


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")  # uint8 -> mode L, uint16 -> 16-bit
    return buf.getvalue()


def class_map(w: int, h: int, ids: tuple[int, ...]) -> np.ndarray:
    """Vertical stripes of ``ids``, one per equal-width band."""
    band = np.minimum(np.arange(w) * len(ids) // w, len(ids) - 1)
    row = np.array(ids)[band]
    dtype = np.uint16 if max(ids) > 255 else np.uint8
    return np.tile(row, (h, 1)).astype(dtype)


def _classes(arr: np.ndarray, labels: dict[int, str]) -> list[dict[str, object]]:
    ids, counts = np.unique(arr, return_counts=True)
    return [
        {"id": int(i), "label": labels[int(i)], "fraction": float(c / arr.size)}
        for i, c in zip(ids, counts, strict=True)
    ]


def write_segment_output(root: Path, labels: dict[int, str] = SEG_LABELS) -> Path:
    """A segmentation output: masks inline (mode L) and by path (16-bit), errors, a gone image.

    ``labels`` names the class ids 0, 1, 2 and 300."""
    images = root / "images"
    paths = make_images(images, n=6, seed=5)
    (images / GONE).unlink()
    out = root / "seg_out"
    (out / "masks").mkdir(parents=True)
    rows = []
    for i, p in enumerate([*paths, images / GONE]):
        w, h = Image.open(p).size if p.exists() else (120, 90)
        ids = (0, 1, 2) if i % 2 == 0 else (0, 300)
        arr = class_map(w // 2, h // 2, ids)
        row = {
            "id": p.name,
            "path": str(p),
            "status": "ok",
            "error": None,
            "width": w,
            "height": h,
            "mask": None,
            "mask_path": None,
            "mask_width": arr.shape[1],
            "mask_height": arr.shape[0],
            "classes": _classes(arr, labels),
        }
        if arr.dtype == np.uint16:
            rel = f"masks/{p.stem}.png"
            (out / rel).write_bytes(_png(arr))
            row["mask_path"] = rel
        else:
            row["mask"] = _png(arr)
        rows.append(row)
    for name, code in BAD.items():
        rows.append(
            {"id": name, "path": str(images / name), "status": "error", "error": f"{code}: x"}
        )
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("path", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("mask", pa.binary()),
            ("mask_path", pa.string()),
            ("mask_width", pa.int32()),
            ("mask_height", pa.int32()),
            ("classes", CLASSES_TYPE),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "part-seg-00000.parquet")
    manifest = {"model": "tiny_seg", "weights": "random", "task": "segment", "runs": []}
    (out / "_manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def segment_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_segment_output(tmp_path_factory.mktemp("report_segment"))


@pytest.fixture(scope="session")
def embed_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedding output (no labels): 6 ok rows (one on unreachable S3), 1 error row."""
    root = tmp_path_factory.mktemp("report_embed")
    paths = make_images(root / "images", n=5, seed=9)
    out = root / "embed_out"
    out.mkdir()
    rows = [
        {"id": p.name, "path": str(p), "status": "ok", "error": None, "embedding": [0.1] * 8}
        for p in paths
    ]
    # An object-store image that cannot be fetched here: a placeholder, never a crash.
    rows.append({"id": "s3", "path": "s3://no-bucket/a.jpg", "status": "ok", "error": None})
    rows.append({"id": "x", "path": "nowhere.jpg", "status": "error", "error": "not_found: x"})
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("path", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("embedding", pa.list_(pa.float32())),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "part-e-00000.parquet")
    (out / "_manifest.json").write_text(json.dumps({"model": "emb", "task": "embed"}))
    return out
