"""The segment and embed tasks from the command line: outputs, mask files, refusals, resume."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

import batchvision
from batchvision.config import RunConfig
from batchvision.demo import synth
from batchvision.errors import ConfigError, OutputDirError
from batchvision.io.outdir import read_manifest
from batchvision.io.sinks import mask_file_name
from batchvision.tasks.segment import decode_mask
from tests.conftest import run_cli
from tests.task_models import SEG_CLASSES, save_tiny_segformer

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("segformer_cli")
    save_tiny_segformer(path, size=64)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """Four photos in two folders, one of them named like a hidden file, and a corrupt JPEG."""
    root = tmp_path / "in"
    rng = np.random.default_rng(5)
    for rel in ("a/one.jpg", "a/two.jpg", "b/three.jpg", "b/x y%.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(60, 160)), int(rng.integers(60, 160)))
        synth.photo_like(rng, size).save(root / rel, quality=90)
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _seg(src: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        "run", str(src), "--model", f"hf:{model}", "--output", str(out), "--workers", "0",
        "--max-error-rate", "0.5", "-q", *extra,
    ]  # fmt: skip


def test_segment_mask_dir_resume_overwrite(
    inputs: Path, segformer_dir: Path, tmp_path: Path
) -> None:
    # Inside the output folder, a name starting with "_" keeps dataset readers off the PNGs.
    out, masks = tmp_path / "out", tmp_path / "out" / "_masks"
    r = run_cli(*_seg(inputs, out, segformer_dir, "--mask-dir", str(masks)))
    assert r.returncode == 0, r.stderr
    rows = {row["id"]: row for row in pq.read_table(out).to_pylist()}
    assert set(rows) == {"a/one.jpg", "a/two.jpg", "b/three.jpg", "b/x y%.jpg", "b/broken.jpg"}
    bad = rows.pop("b/broken.jpg")
    assert bad["status"] == "error" and bad["error"]
    assert bad["mask_path"] is None and bad["classes"] is None and bad["mask_width"] is None
    assert "mask" not in rows["a/one.jpg"]
    for item_id, row in rows.items():
        path = Path(row["mask_path"])
        assert path == (masks / mask_file_name(item_id)).resolve()
        class_map = decode_mask(path.read_bytes())
        assert class_map.shape == (row["height"], row["width"])
        assert class_map.shape == (row["mask_height"], row["mask_width"])
        assert {c["id"] for c in row["classes"]} == set(np.unique(class_map).tolist())
    assert (masks / "b" / "x y%25.jpg.png").is_file()
    manifest = read_manifest(str(out))
    assert manifest is not None
    assert manifest["task"] == "segment" and manifest["mask_dir"] == str(masks.resolve())
    assert manifest["num_classes"] == SEG_CLASSES and len(manifest["labels"]) == SEG_CLASSES

    # Without --resume/--overwrite the folder is refused; other settings cannot resume.
    # (In-process: the same checks as the CLI's, without paying for a process each.)
    seg = {"inputs": (str(inputs),), "output": str(out), "model": f"hf:{segformer_dir}"}
    with pytest.raises(OutputDirError, match="not empty"):
        batchvision.run(RunConfig(**seg, mask_dir=str(masks)))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="does not fit"):  # SegFormer cannot embed
        batchvision.run(RunConfig(**seg, task="embed", resume=True))  # type: ignore[arg-type]
    with pytest.raises(OutputDirError, match="mask_dir differs"):  # masks inline now
        batchvision.run(RunConfig(**seg, resume=True))  # type: ignore[arg-type]
    with pytest.raises(OutputDirError, match="mask_dir differs"):
        batchvision.run(RunConfig(**seg, mask_dir=str(tmp_path / "elsewhere"), resume=True))  # type: ignore[arg-type]
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f.png").write_bytes(b"x")
    with pytest.raises(OutputDirError, match="wrote its masks to"):
        batchvision.run(RunConfig(**seg, mask_dir=str(tmp_path / "elsewhere"), resume=True))  # type: ignore[arg-type]

    # --resume does the new image only, and writes its mask.
    synth.photo_like(np.random.default_rng(9), (90, 70)).save(inputs / "a" / "new.jpg")
    r = run_cli(*_seg(inputs, out, segformer_dir, "--mask-dir", str(masks), "--resume"))
    assert r.returncode == 0, r.stderr
    ids = pq.read_table(out, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted([*rows, "b/broken.jpg", "a/new.jpg"])
    assert (masks / "a" / "new.jpg.png").is_file()

    # --overwrite replaces masks, but refuses a mask folder holding someone else's file.
    (masks / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"notes\.txt"):
        batchvision.run(RunConfig(**seg, mask_dir=str(masks), overwrite=True))  # type: ignore[arg-type]
    assert (masks / "a" / "new.jpg.png").is_file()  # refused before deleting anything
    (masks / "notes.txt").unlink()
    r = run_cli(*_seg(inputs, out, segformer_dir, "--mask-dir", str(masks), "--overwrite"))
    assert r.returncode == 0, r.stderr
    assert pq.read_table(out).num_rows == 6
    assert len(list(masks.rglob("*.png"))) == 5


def test_segment_inline_masks_csv(inputs: Path, segformer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run_cli(*_seg(inputs, out, segformer_dir, "--format", "csv"))
    assert r.returncode == 0, r.stderr
    (part,) = out.glob("part-*.csv")
    opts = pacsv.ConvertOptions(
        column_types={"mask": "string", "classes": "string"}, strings_can_be_null=True
    )
    rows = {row["id"]: row for row in pacsv.read_csv(part, convert_options=opts).to_pylist()}
    class_map = decode_mask(base64.b64decode(rows["a/one.jpg"]["mask"]))
    assert class_map.shape == (rows["a/one.jpg"]["height"], rows["a/one.jpg"]["width"])
    classes = json.loads(rows["a/one.jpg"]["classes"])
    assert [c["fraction"] for c in classes] == sorted(
        (c["fraction"] for c in classes), reverse=True
    )
    assert rows["b/broken.jpg"]["mask"] is None


def test_embed_normalize_jsonl_and_refusals(
    inputs: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt, labels = tiny_checkpoint
    base = [
        "run", str(inputs), "--model", "mobilenet_v3_small", "--weights", str(ckpt),
        "--labels", str(labels), "--workers", "0", "-q", "--max-error-rate", "0.5",
    ]  # fmt: skip
    out = tmp_path / "emb"
    r = run_cli(*base, "-o", str(out), "--task", "embed", "--normalize", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = [
        json.loads(line) for p in out.glob("part-*.jsonl") for line in p.read_text().splitlines()
    ]
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(ok) == 4 and all(len(row["embedding"]) == 1024 for row in ok)
    assert all(abs(np.linalg.norm(row["embedding"]) - 1) < 1e-5 for row in ok)
    assert [row["embedding"] for row in rows if row["status"] == "error"] == [None]
    assert read_manifest(str(out))["embedding_dim"] == 1024  # type: ignore[index]

    r = run_cli(*base, "-o", str(out), "--resume")  # classify: one process for the exit code
    assert r.returncode == 2 and "task differs" in r.stderr

    cfg = {
        "inputs": (str(inputs),), "model": "mobilenet_v3_small", "weights": str(ckpt),
        "labels": str(labels), "format": "jsonl",
    }  # fmt: skip
    with pytest.raises(OutputDirError, match="normalize differs"):
        batchvision.run(RunConfig(**cfg, output=str(out), task="embed", resume=True))  # type: ignore[arg-type]
    with pytest.raises(OutputDirError, match="not empty"):
        batchvision.run(RunConfig(**cfg, output=str(out), task="embed", normalize=True))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="supports classify, embed"):
        batchvision.run(RunConfig(**cfg, output=str(tmp_path / "x"), task="segment"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--normalize applies to --task embed"):
        batchvision.run(RunConfig(**cfg, output=str(tmp_path / "y"), normalize=True))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--mask-dir applies to --task segment"):
        batchvision.run(RunConfig(**cfg, output=str(tmp_path / "z"), mask_dir=str(tmp_path / "m")))  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists() and not (tmp_path / "m").exists()


def test_models_lists_sources_and_tasks() -> None:
    r = run_cli("models", "--source", "hf")
    assert r.returncode == 0
    assert "hf:ORG/NAME" in r.stdout and "hf:/path/to/dir" in r.stdout
    assert "segment" in r.stdout and "classify|embed" in r.stdout
    r = run_cli("models")
    assert "timm:NAME" in r.stdout and "torchvision:NAME" in r.stdout
    assert "deeplabv3_mobilenet_v3_large" in r.stdout


def test_segment_refuses_extreme_aspect_ratios_before_spending_memory(tmp_path: Path) -> None:
    # torchvision's segmentation weights resize the shorter side to 520 with no crop: a
    # 1x65000 PNG (a few hundred bytes) would be a 520x33,800,000 input (its logits 21
    # classes x 4 bytes each), a 4000x40 banner 52000x520. Both are too_large from the
    # header; the photo and the 15:1 panorama next to them get their masks.
    root = tmp_path / "in"
    root.mkdir()
    Image.new("L", (1, 65000), 80).save(root / "strip.png")
    Image.new("RGB", (4000, 40), (10, 200, 30)).save(root / "banner.png")
    synth.photo_like(np.random.default_rng(1), (96, 72)).save(root / "photo.jpg", quality=90)
    synth.photo_like(np.random.default_rng(2), (1500, 100)).save(root / "pano.jpg", quality=90)
    out = tmp_path / "out"
    args = ["run", str(root), "--model", "lraspp_mobilenet_v3_large", "--weights", "random",
            "--task", "segment", "--output", str(out), "--workers", "0", "--batch-size", "2",
            "--max-error-rate", "1", "-q"]  # fmt: skip
    r = run_cli(*args, timeout=240)
    assert r.returncode == 0, r.stderr
    rows = {row["id"]: row for row in pq.read_table(out).to_pylist()}
    assert rows["strip.png"]["error"] == (
        "too_large: 1x65000 image makes a 520x33800000 = 17576000000 pixel model input "
        "(resize shorter to 520), more than --max-input-pixels 4194304"
    )
    assert rows["banner.png"]["error"].startswith("too_large: 4000x40 image makes a 52000x520 ")
    for name, size in (("photo.jpg", (96, 72)), ("pano.jpg", (1500, 100))):
        assert rows[name]["status"] == "ok", rows[name]["error"]
        assert (rows[name]["mask_width"], rows[name]["mask_height"]) == size
    # --resume meets the same files and finds them done, instead of dying on them again.
    again = run_cli(*args, "--resume", timeout=240)
    assert again.returncode == 0, again.stderr
    assert pq.read_table(out).num_rows == 4


def test_zero_shot_from_the_command_line_with_odd_images(tmp_path: Path, inputs: Path) -> None:
    """--classes-file and --prompt through the CLI on a tiny CLIP; a 1x1 image, a
    grayscale one, a CMYK JPEG and a large panorama are rows; the corrupt file is an error
    row; zero-shot's options on another task are refused in one line."""
    from tests.task_models import save_tiny_clip

    model = tmp_path / "clip"
    save_tiny_clip(model)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(inputs / "a" / "dot.png")
    Image.new("L", (90, 70), 128).save(inputs / "a" / "grey.jpg")
    Image.new("CMYK", (64, 48), (0, 80, 160, 0)).save(inputs / "a" / "cmyk.jpg")
    Image.new("RGB", (6000, 400), (20, 120, 40)).save(inputs / "b" / "wide.jpg")
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\ncar, red\n", encoding="utf-8")
    out = tmp_path / "zs"
    args = [
        "run", str(inputs), "--model", f"hf:{model}", "--output", str(out), "--workers", "0",
        "--task", "zero-shot", "--classes-file", str(classes), "--prompt", "a picture of {}",
        "--max-error-rate", "0.5", "-q",
    ]  # fmt: skip
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    rows = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    assert len(rows) == 9
    assert rows["b/broken.jpg"]["status"] == "error" and rows["b/broken.jpg"]["label"] is None
    for name in ("a/dot.png", "a/grey.jpg", "a/cmyk.jpg", "b/wide.jpg"):
        row = rows[name]
        assert row["status"] == "ok", row
        assert row["label"] in ("cat", "dog", "car, red")
        assert sorted(row["topk_labels"]) == ["car, red", "cat", "dog"]  # 3 classes < top 5
        assert abs(sum(row["topk_scores"]) - 1) < 1e-4  # CLIP: softmax over the classes
    manifest = read_manifest(str(out))
    assert manifest is not None and manifest["prompt"] == "a picture of {}"
    refused = run_cli(*[a if a != "zero-shot" else "embed" for a in args])
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "--classes-file applies" in refused.stderr
