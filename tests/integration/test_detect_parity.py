"""``--task detect`` against each family's documented recipe, with seeded random weights.

torchvision: ``weights.transforms()`` then ``model([img])``; Hugging Face: the image
processor, the model, ``post_process_object_detection``. Score threshold 0 on both sides.
A reference detection is matched when batchvision has one of the same label with IoU >=
0.99; the top ``TOP`` of each image are checked. The heads of the random models are widened
(``tests/task_models.py``) so that detections differ in score and box; a wrong pipeline
(channels swapped) is scored the same way and must come out clearly lower, which shows
the check can fail.

torchvision's detectors get each image as decoded and resize it themselves, in float, as
in the recipe; for Hugging Face batchvision resizes on the CPU with the processor's rule
(the Pillow backend's). The images are both enlarged and shrunk, and three share a size,
so a batch of 4 holds images of one size batched together and images of others alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.ops import box_iou

import batchvision
from batchvision.config import PreprocessOverrides, RunConfig
from batchvision.demo import synth
from batchvision.stages.device import resolve_precision
from tests.task_models import DET_CLASSES, save_tiny_detr, tiny_torchvision_detector

TOP = 10
IOU = 0.99
MATCH_PASS = 0.95  # matched share of the top detections, fp32
WRONG_BELOW = 0.5  # what a wrong pipeline must stay under

#: arch -> --resize-size (None: the model's own size); resnet50/VGG models run smaller so
#: the test stays quick on a CPU.
TV_ARCHS = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": None,
    "fasterrcnn_resnet50_fpn_v2": 192,
    "retinanet_resnet50_fpn": 192,
    "fcos_resnet50_fpn": 192,
    "ssdlite320_mobilenet_v3_large": None,
    "ssd300_vgg16": None,
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 photo-like JPEGs, from 90 to 900 pixels a side: models enlarge some, shrink others."""
    root = tmp_path_factory.mktemp("detect_images")
    rng = np.random.default_rng(2468)
    sizes = [(90, 120), (640, 480), (640, 480), (300, 200), (640, 480), (180, 420), (900, 600),
             (500, 880)]  # fmt: skip
    for i, size in enumerate(sizes):
        synth.photo_like(rng, size).save(root / f"img_{i:02d}.jpg", quality=92)
    return root


def _pil(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _run(
    images: Path, out: Path, model: str, batch_size: int = 4, **kwargs: Any
) -> dict[str, dict[str, Any]]:
    config = RunConfig(
        inputs=(str(images),),
        output=str(out),
        model=model,
        workers=0,
        batch_size=batch_size,
        score_threshold=0.0,
        **kwargs,
    )
    summary = batchvision.run(config)
    assert summary.error == 0 and summary.ok == len(list(images.glob("*.jpg")))
    return {str(r["id"]): r for r in pq.read_table(out).to_pylist()}


def matched(row: dict[str, Any], ref: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
    """The share of the reference's top ``TOP`` detections that ``row`` has (same label,
    IoU >= ``IOU``)."""
    boxes, scores, labels = ref
    order = torch.argsort(scores, descending=True)[:TOP]
    dets = row["detections"]
    ours = torch.tensor([[d["x0"], d["y0"], d["x1"], d["y1"]] for d in dets]).reshape(-1, 4)
    ours_labels = torch.tensor([d["label_id"] for d in dets], dtype=torch.long)
    iou = box_iou(boxes[order].float(), ours)
    same = labels[order][:, None].long() == ours_labels[None, :]
    hit = ((iou >= IOU) & same).any(dim=1)
    return float(hit.float().mean()) if len(order) else 1.0


Ref = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _tv_reference(model: torch.nn.Module, arch: str, imgs: list[Image.Image], swap: bool = False
                  ) -> list[Ref]:  # fmt: skip
    """``weights.transforms()`` then ``model([...])``: one call for ``imgs``."""
    t = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    xs = [t(img).flip(0) if swap else t(img) for img in imgs]
    with torch.no_grad():
        outs = model(xs)
    return [(o["boxes"], o["scores"], o["labels"]) for o in outs]


def _agreement(rows: dict[str, dict[str, Any]], images: Path, batch: int, reference: Any
               ) -> list[float]:  # fmt: skip
    """``matched`` per row, the reference called on the run's batches (files in order)."""
    names = sorted(rows)
    out = []
    for start in range(0, len(names), batch):
        chunk = names[start : start + batch]
        refs = reference([_pil(images / n) for n in chunk])
        out += [matched(rows[n], ref) for n, ref in zip(chunk, refs, strict=True)]
    return out


#: fp32 at batch 1 and 4, and the default precision where it is not fp32 (on a CPU without
#: native bf16 ``auto`` is fp32: that run would repeat the first, at minutes a model).
RUNS = (("fp32", 1), ("fp32", 4)) + (
    (("auto", 1),) if resolve_precision("auto", torch.device("cpu")) != "fp32" else ()
)


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("det_labels") / "labels.txt"
    path.write_text("\n".join(["__background__"] + [f"obj_{i}" for i in range(1, DET_CLASSES)]))
    return path


@pytest.mark.parametrize("arch", list(TV_ARCHS))
def test_torchvision_detectors_match_their_recipe(
    arch: str, images: Path, labels_file: Path, tmp_path: Path
) -> None:
    model = tiny_torchvision_detector(arch)
    ckpt = tmp_path / "det.pt"
    torch.save(model.state_dict(), ckpt)
    resize = TV_ARCHS[arch]
    post = getattr(model, "roi_heads", model)
    post.score_thresh = 0.0
    post.detections_per_img = 100
    if resize is not None:
        t = model.transform
        t.max_size = round(t.max_size * resize / t.min_size[-1])
        t.min_size = (resize,)
    figures = {}
    labels = ("__background__", *(f"obj_{i}" for i in range(1, DET_CLASSES)))
    for precision, batch in RUNS:
        rows = _run(
            images, tmp_path / f"{precision}{batch}", f"torchvision:{arch}", weights=str(ckpt),
            labels=str(labels_file), precision=precision, batch_size=batch,
            preprocess=PreprocessOverrides(resize_size=resize),
        )  # fmt: skip
        for name, row in rows.items():
            assert (row["width"], row["height"]) == _pil(images / name).size
            assert all(d["label"] == labels[d["label_id"]] for d in row["detections"])
        # At any batch size, each image gets what model([img]) gives it: a batch holds
        # images of one size (padding to a neighbour's size would change the proposals).
        agree = _agreement(rows, images, 1, lambda imgs: _tv_reference(model, arch, imgs))
        figures[f"{precision}, batch {batch}"] = float(np.mean(agree))
        if precision == "fp32":
            assert np.mean(agree) >= MATCH_PASS, agree
        if batch == 1 and precision == "fp32":
            wrong = _agreement(
                rows, images, 1, lambda imgs: _tv_reference(model, arch, imgs, swap=True)
            )
            assert np.mean(wrong) < WRONG_BELOW, wrong
    print(f"\n{arch}: matched top-{TOP} (IoU >= {IOU}, same label): {figures}")


# ---------------------------------------------------------------------------------------
# Hugging Face DETR-style models

tf = pytest.importorskip("transformers")


def _hf_reference(path: Path, model: Any, imgs: list[Image.Image], swap: bool = False,
                  backend: str = "pil") -> list[Ref]:  # fmt: skip
    """The processor (padding a batch, with its pixel mask), the model and
    ``post_process_object_detection``: one call for ``imgs``."""
    processor = tf.AutoImageProcessor.from_pretrained(path, backend=backend)
    inputs = processor(imgs, return_tensors="pt")
    if swap:  # channels swapped, and the image mirrored (as an ignored EXIF flip would)
        inputs["pixel_values"] = inputs["pixel_values"].flip(1).flip(3)
    with torch.no_grad():
        out = model(**inputs)
    sizes = [(img.height, img.width) for img in imgs]
    results = processor.post_process_object_detection(out, threshold=0.0, target_sizes=sizes)
    return [(r["boxes"], r["scores"], r["labels"]) for r in results]


@pytest.mark.parametrize("kind", ["detr", "conditional_detr", "yolos"])
def test_hf_detectors_match_their_recipe(kind: str, images: Path, tmp_path: Path) -> None:
    """DETR-style models batch with a pixel mask, as their processors do; YOLOS has none
    (padding would be image to it), so its batches hold one size: each image gets what
    the recipe gives it alone."""
    path = tmp_path / kind
    model = save_tiny_detr(path, kind)
    figures = {}
    for precision, batch in RUNS:
        rows = _run(
            images, tmp_path / f"{precision}{batch}", f"hf:{path}", precision=precision,
            batch_size=batch,
        )  # fmt: skip
        for row in rows.values():
            assert all(d["label"] == f"obj_{d['label_id']}" for d in row["detections"])
        ref_batch = 1 if kind == "yolos" else batch
        agree = _agreement(rows, images, ref_batch, lambda imgs: _hf_reference(path, model, imgs))
        figures[f"{precision}, batch {batch}"] = float(np.mean(agree))
        if precision == "fp32":
            assert np.mean(agree) >= MATCH_PASS, agree
        if precision == "fp32" and batch == 1:
            wrong = _agreement(
                rows, images, 1, lambda imgs: _hf_reference(path, model, imgs, swap=True)
            )
            assert np.mean(wrong) < WRONG_BELOW, wrong
            other = _agreement(
                rows, images, 1,
                lambda imgs: _hf_reference(path, model, imgs, backend="torchvision"),
            )  # fmt: skip
            figures["fp32, batch 1, vs the torchvision backend"] = float(np.mean(other))
    print(f"\nhf {kind}: matched top-{TOP} (IoU >= {IOU}, same label): {figures}")
