"""Throughput of the tasks side by side, end to end on the local engine (issue 14).

One folder of photo-like 640x480 JPEGs, run with ``batchvision.run`` (default settings,
the machine's default precision) for:

* ``classify``: torchvision resnet50 (random weights), the reference row;
* ``embed`` and ``zero-shot`` on a CLIP with ViT-B/32's towers (vision: hidden 768, 12
  layers, patch 32, 224 px; text: hidden 512, 12 layers; random weights built from the
  config, no download), the zero-shot run with 10 and with 1,000 classes (ImageNet's);
* ``embed`` with ``--format lance`` beside the Parquet run of the same settings.

Prints img/s per row and each row's ratio to the classify row; the prompts are embedded
once per run, on the driver (part of the run's wall time; ``batchvision.embed_text`` of the
1,000 prompts is timed on its own and printed too).

Usage::

    PYTHONPATH=src python benchmarks/bench_tasks.py [--images 512] [--repeat 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import batchvision
from batchvision.config import RunConfig
from batchvision.demo import synth

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.task_models
from tests.task_models import save_tiny_clip

VIT_B_32 = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "patch_size": 32, "image_size": 224,
}  # fmt: skip
#: CLIP ViT-B/32's text tower (the prompts are embedded once per run, on the driver).
CLIP_TEXT = {
    "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": 77,
}  # fmt: skip


def photos(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        synth.photo_like(rng, (640, 480)).save(root / f"{i:05d}.jpg", quality=90)
    return root


def timed(name: str, out: Path, **kw: Any) -> tuple[str, float, int]:
    t = time.perf_counter()
    summary = batchvision.run(RunConfig(output=str(out), **kw))
    seconds = time.perf_counter() - t
    assert summary.error == 0
    return name, seconds, summary.ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=1, help="alternating rounds")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        src = photos(tmp / "in", args.images)
        clip = tmp / "clip"
        save_tiny_clip(clip, size=224, vision=VIT_B_32, text=CLIP_TEXT)
        common: dict[str, Any] = {"inputs": (str(src),), "draft": False}
        hf = {**common, "model": f"hf:{clip}"}
        many = tuple(f"class {i}" for i in range(1000))
        runs: list[tuple[str, dict[str, Any]]] = [
            ("classify resnet50", {**common, "model": "resnet50", "weights": "random"}),
            ("embed CLIP B/32", {**hf, "task": "embed"}),
            ("embed CLIP B/32 lance", {**hf, "task": "embed", "format": "lance"}),
            ("zero-shot CLIP B/32, 10 classes", {**hf, "task": "zero-shot", "classes": many[:10]}),
            ("zero-shot CLIP B/32, 1000 classes", {**hf, "task": "zero-shot", "classes": many}),
        ]
        t = time.perf_counter()
        batchvision.embed_text(f"hf:{clip}", [f"a photo of a {c}." for c in many])
        text_seconds = time.perf_counter() - t
        results: dict[str, list[float]] = {name: [] for name, _ in runs}
        for r in range(args.repeat):
            for i, (name, kw) in enumerate(runs):
                _, seconds, ok = timed(name, tmp / f"out{r}-{i}", **kw)
                results[name].append(ok / seconds)
    print(f"1,000 prompts embedded (text tower, driver): {text_seconds:.1f} s")
    base = float(np.median(results[runs[0][0]]))
    print(f"{'run':<36} {'img/s':>8} {'vs classify':>12}")
    for name, rates in results.items():
        rate = float(np.median(rates))
        print(f"{name:<36} {rate:8.1f} {rate / base:11.2f}x")


if __name__ == "__main__":
    main()
