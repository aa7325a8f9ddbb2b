"""Report benchmark: ``build_report`` on a large synthetic output, timed by phase.

Writes an output folder of ``--rows`` classification rows (``--parts`` parquet parts, 10%
error rows, 1,000 labels) whose paths cycle over ``--images`` distinct photo-like JPEGs of
``--size``, then times ``batchvision report`` on it (in this process, after the data is
written and the page cache is warm). Distinct, camera-sized images make the thumbnail
phase honest: every sampled row is a real decode (with JPEG draft scaling).

Usage::

    python benchmarks/bench_report.py --rows 1000000 --images 400 --size 3000x2000 \\
        [--sample 200] [--out bench-output/report]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchvision.demo import synth
from batchvision.report import ReportConfig, build_report


def write_output(out: Path, images: list[str], rows: int, parts: int) -> None:
    """A classification output of ``rows`` rows over ``images``, in ``parts`` parts."""
    out.mkdir(parents=True, exist_ok=True)
    labels = np.array([f"class_{i:04d}" for i in range(1000)], dtype=object)
    rng = np.random.default_rng(0)
    per = -(-rows // parts)
    for k in range(parts):
        idx = np.arange(k * per, min(rows, (k + 1) * per))
        err = idx % 10 == 7
        lab = labels[rng.zipf(1.3, len(idx)) % 1000]
        scores = np.sort(rng.random((len(idx), 5)).astype(np.float32), axis=1)[:, ::-1]
        table = pa.table(
            {
                "id": pa.array([f"{i:08d}.jpg" for i in idx]),
                "path": pa.array([images[i % len(images)] for i in idx]),
                "status": pa.array(np.where(err, "error", "ok").tolist()),
                "error": pa.array(np.where(err, "corrupt: damaged", None).tolist(), pa.string()),
                "label": pa.array(np.where(err, None, lab).tolist(), pa.string()),
                "score": pa.array(scores[:, 0], mask=err),
                "topk_labels": pa.array([[x] * 5 for x in lab.tolist()]),
                "topk_scores": pa.array(scores.tolist(), pa.list_(pa.float32())),
            }
        )
        pq.write_table(table, out / f"part-bench-{k:05d}.parquet", compression="zstd")
    manifest = {"model": "bench", "weights": "none", "task": "classify", "runs": []}
    (out / "_manifest.json").write_text(json.dumps(manifest))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--parts", type=int, default=100)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--size", default="3000x2000")
    p.add_argument("--sample", type=int, default=200)
    p.add_argument("--out", default="bench-output/report")
    args = p.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    w, h = (int(v) for v in args.size.split("x"))
    t0 = time.perf_counter()
    names = synth.write_benchmark_images(root / "images", args.images, size=(w, h))
    images = [str((root / "images" / Path(n).name).resolve()) for n in names]
    write_output(root / "output", images, args.rows, args.parts)
    prep = time.perf_counter() - t0
    result = build_report(
        ReportConfig(str(root / "output"), html=str(root / "report.html"), sample=args.sample)
    )
    record = {
        "rows": result.rows,
        "sampled": result.sampled,
        "placeholders": result.placeholders,
        "image_size": args.size,
        "report_seconds": round(result.seconds, 2),
        "html_bytes": (root / "report.html").stat().st_size,
        "prepare_seconds": round(prep, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
