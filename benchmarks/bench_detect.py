"""Detection throughput: ``batchvision run --task detect`` against the reference loop.

``batchvision bench`` measures classifiers only, so this script times, side by side on the
same photo-like JPEGs (640x480), for each detector (seeded random weights, widened heads as
in the tests, so boxes survive the threshold):

* the reference: Pillow decode, ``weights.transforms()``, ``model([img])`` one image at a
  time, fp32 (what the docs of torchvision show);
* ``batchvision.run`` end to end (decode, model, Parquet) at fp32 and at the default
  precision (``auto``: bf16 on a CPU with native bf16).

and the matched share of the reference's top-10 detections (IoU >= 0.99, same label) for
each batchvision run, so every speed has its parity beside it. Rounds alternate between
the contenders so that machine noise hits all of them.

    PYTHONPATH=src:. python benchmarks/bench_detect.py --images 48 --rounds 2
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torchvision
from PIL import Image
from tests.integration.test_detect_parity import matched
from tests.task_models import DET_CLASSES, tiny_torchvision_detector

import batchvision
from batchvision.config import RunConfig
from batchvision.demo import synth

ARCHS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large",
         "fasterrcnn_resnet50_fpn_v2")  # fmt: skip


def reference(model: torch.nn.Module, arch: str, files: list[Path]) -> tuple[float, list]:
    t = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    start = time.perf_counter()
    outs = []
    with torch.inference_mode():
        for f in files:
            with Image.open(f) as img:
                x = t(img.convert("RGB"))
            o = model([x])[0]
            outs.append((o["boxes"], o["scores"], o["labels"]))
    return len(files) / (time.perf_counter() - start), outs


def ours(src: Path, out: Path, ckpt: Path, labels: Path, arch: str, precision: str,
         batch: int) -> tuple[float, dict]:  # fmt: skip
    config = RunConfig(
        inputs=(str(src),), output=str(out), model=arch, weights=str(ckpt), labels=str(labels),
        precision=precision, batch_size=batch, score_threshold=0.0, overwrite=True,
    )  # fmt: skip
    start = time.perf_counter()
    summary = batchvision.run(config)
    rate = summary.ok / (time.perf_counter() - start)
    return rate, {r["id"]: r for r in pq.read_table(out).to_pylist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--archs", default=",".join(ARCHS))
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "img"
        src.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):
            synth.photo_like(rng, (640, 480)).save(src / f"{i:04d}.jpg", quality=90)
        files = sorted(src.iterdir())
        labels = root / "labels.txt"
        labels.write_text(
            "\n".join(["__background__"] + [f"obj_{i}" for i in range(1, DET_CLASSES)])
        )
        for arch in args.archs.split(","):
            model = tiny_torchvision_detector(arch)
            ckpt = root / f"{arch}.pt"
            torch.save(model.state_dict(), ckpt)
            post = getattr(model, "roi_heads", model)
            post.score_thresh, post.detections_per_img = 0.0, 100
            rates: dict[str, list[float]] = {"reference": [], "fp32": [], "auto": []}
            parity: dict[str, float] = {}
            for _ in range(args.rounds):
                rate, refs = reference(model, arch, files)
                rates["reference"].append(rate)
                for precision in ("fp32", "auto"):
                    rate, rows = ours(src, root / "out", ckpt, labels, arch, precision, 1)
                    rates[precision].append(rate)
                    parity[precision] = float(np.mean(
                        [matched(rows[f.name], r) for f, r in zip(files, refs, strict=True)]
                    ))  # fmt: skip
            best = {k: max(v) for k, v in rates.items()}
            print(f"\n{arch} ({args.images} images 640x480, best of {args.rounds}, batch 1):")
            for k, v in best.items():
                ratio = v / best["reference"]
                match = f", top-10 matched {parity[k]:.3f}" if k in parity else ""
                print(f"  {k:9s} {v:6.2f} img/s  x{ratio:.2f} the reference{match}")


if __name__ == "__main__":
    main()
