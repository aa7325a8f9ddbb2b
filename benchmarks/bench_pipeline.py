"""The local engine's loop against an earlier checkout's, side by side (issue 16).

Each run is ``batchvision.run`` in a fresh process with ``PYTHONPATH`` at one tree's
``src``, alternating the trees round by round, so both see the same machine state. Two
workloads: the tiny model of issue 12 (mobilenet_v3_small at 32x32, batch 256, where the
host's share of each batch (postprocessing, tables, writing parts) is large) and resnet50
at 224 (batch 32, the model dominates).

Usage (the baseline is any checkout, e.g. ``git worktree add /tmp/base <commit>``)::

    python benchmarks/bench_pipeline.py --baseline /tmp/base [--tiny-images 20000]
        [--photos 512] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import batchvision
from batchvision.config import PreprocessOverrides, RunConfig
kw = json.loads(sys.argv[1])
kw["inputs"] = tuple(kw["inputs"])
kw["preprocess"] = PreprocessOverrides(**kw.get("preprocess", {}))
t = time.perf_counter()
s = batchvision.run(RunConfig(**kw))
print(json.dumps({"seconds": time.perf_counter() - t, "ok": s.ok, "error": s.error}))
"""


def run_in(tree: Path, kw: dict[str, Any]) -> float:
    """Images per second of one run with ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(kw)], env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"{tree}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] == 0, result
    return (result["ok"] + result["error"]) / result["seconds"]


def inputs(tmp: Path, tiny_images: int, photos: int) -> tuple[Path, Path]:
    """A manifest of ``tiny_images`` hard links to one 320x240 JPEG, and a folder of
    ``photos`` photo-like 640x480 JPEGs."""
    from batchvision.demo import synth

    rng = np.random.default_rng(0)
    one = tmp / "one.jpg"
    synth.photo_like(rng, (320, 240)).save(one, quality=90)
    links = tmp / "links"
    links.mkdir()
    names = []
    for i in range(tiny_images):
        path = links / f"{i:07d}.jpg"
        os.link(one, path)
        names.append(str(path))
    manifest = tmp / "tiny.txt"
    manifest.write_text("\n".join(names) + "\n")
    folder = tmp / "photos"
    folder.mkdir()
    for i in range(photos):
        synth.photo_like(rng, (640, 480)).save(folder / f"{i:05d}.jpg", quality=90)
    return manifest, folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="an earlier checkout")
    ap.add_argument("--tiny-images", type=int, default=20000)
    ap.add_argument("--photos", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="", help="run the workloads whose name has this")
    args = ap.parse_args()
    trees = {"baseline": args.baseline.resolve(), "this tree": HERE}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        manifest, folder = inputs(tmp, args.tiny_images, args.photos)
        workloads: dict[str, dict[str, Any]] = {
            "mobilenet_v3_small 32px, batch 256": {
                "inputs": [str(manifest)], "model": "mobilenet_v3_small", "weights": "random",
                "preprocess": {"resize_size": 32, "crop_size": 32}, "batch_size": 256,
                "part_rows": 256,
            },
            "resnet50 224, batch 32": {
                "inputs": [str(folder)], "model": "resnet50", "weights": "random",
                "draft": False,
            },
        }  # fmt: skip
        workloads = {k: v for k, v in workloads.items() if args.only in k}
        rates: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for name, kw in workloads.items():
                order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
                for tree_name, tree in order:
                    out = tmp / f"out-{r}-{len(list(tmp.glob('out-*')))}"
                    rate = run_in(tree, {**kw, "output": str(out)})
                    rates.setdefault((name, tree_name), []).append(rate)
                    print(f"round {r} {name} {tree_name}: {rate:.1f} img/s", flush=True)
    print(f"\n{'workload':<38} {'baseline':>10} {'this tree':>10} {'ratio':>7}")
    for name in workloads:
        base = float(np.median(rates[(name, "baseline")]))
        new = float(np.median(rates[(name, "this tree")]))
        print(f"{name:<38} {base:10.1f} {new:10.1f} {new / base:6.2f}x")


if __name__ == "__main__":
    main()
