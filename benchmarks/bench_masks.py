"""Mask PNG encoding speed: is ``encode_mask`` ever the bottleneck of a segment run?

Class maps are made the way segmentation models make them: random logits at 1/4 of the
image size (SegFormer's output stride), bilinearly upsampled, argmax. That gives the flat
regions with smooth borders real masks have (random noise would be PNG's worst case).

    PYTHONPATH=src python benchmarks/bench_masks.py              # the lead's figures
    PYTHONPATH=src python benchmarks/bench_masks.py --quick      # a seconds-long check
    PYTHONPATH=src python benchmarks/bench_masks.py --batch 16   # a batch's figures only

Prints, per image size and zlib level: milliseconds per mask, megapixels per second and
bytes per mask, and the full postprocess (PNG + class fractions) at batchvision's level.
``--batch N`` instead times one batch of N maps through the task's two steps: ``segment``
(upsample, argmax, read back to the host; logits given, no model) and ``mask_batch``
(every mask's PNG and class fractions), on ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import argparse
import io
import platform
import time

import numpy as np
import torch
from PIL import Image

from batchvision.stages.upsample import UPSAMPLE_BYTES, upsample_argmax
from batchvision.tasks import segment


def class_map(h: int, w: int, classes: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(classes, max(1, h // 32), max(1, w // 32), generator=g)
    dtype = np.uint8 if classes <= 256 else np.uint16
    # Banded like the predictor does, so 150 classes at 12 MP stay within 256 MiB.
    return upsample_argmax(logits, (h, w), UPSAMPLE_BYTES).numpy().astype(dtype)


def encode(arr: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def batch_figures(n: int, size: tuple[int, int], classes: int, repeat: int) -> None:
    """``segment`` and ``mask_batch`` over one batch of ``n`` maps of ``size``."""
    from types import SimpleNamespace

    h, w = size
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, classes, max(1, h // 32), max(1, w // 32), generator=g)
    predictor = SimpleNamespace(
        logits=lambda images: logits,
        spec=SimpleNamespace(num_classes=classes),
        upsample_bytes=UPSAMPLE_BYTES,
        device=torch.device("cpu"),
    )
    sizes = [size] * n
    maps: list[np.ndarray] = []

    def run_segment() -> None:
        maps[:] = segment.segment(predictor, np.zeros((n, 1, 1, 3), np.uint8), sizes)  # type: ignore[arg-type]

    s = timed(run_segment, repeat)
    print(f"{n} x {w}x{h}, {classes} classes: segment (upsample + argmax + read back) "
          f"{s * 1e3:.0f} ms/batch")  # fmt: skip
    column = np.empty(n, dtype=object)
    column[:] = maps
    batch = {"status": np.full(n, "ok", dtype=object), "class_map": column}
    labels = [f"c{i}" for i in range(classes)]
    s = timed(lambda: segment.mask_batch(batch, labels), repeat)
    print(f"{n} x {w}x{h}, {classes} classes: mask_batch {s * 1e3:.0f} ms/batch, "
          f"{s * 1e3 / n:.1f} ms/image")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--classes", type=int, default=150, help="ADE20k has 150")
    parser.add_argument("--batch", type=int, default=0, help="time one batch of N maps")
    parser.add_argument("--size", default="1920x1080", help="--batch's WIDTHxHEIGHT")
    args = parser.parse_args()
    if args.batch:
        w, h = (int(v) for v in args.size.split("x"))
        print(f"machine: {platform.processor() or platform.machine()}, torch threads "
              f"{torch.get_num_threads()}")  # fmt: skip
        batch_figures(args.batch, (h, w), args.classes, repeat=3)
        return
    sizes = [(480, 640)] if args.quick else [(480, 640), (1080, 1920), (3000, 4000)]
    repeat = 2 if args.quick else 10
    levels = (0, 1, 3, 6)
    labels = [f"c{i}" for i in range(args.classes)]
    print(f"machine: {platform.processor() or platform.machine()}, torch threads "
          f"{torch.get_num_threads()}, classes {args.classes}")  # fmt: skip
    print(f"{'size':>11} {'level':>5} {'ms/mask':>8} {'MP/s':>7} {'KiB':>8}")
    for h, w in sizes:
        t0 = time.perf_counter()
        arr = class_map(h, w, args.classes, seed=h)
        print(f"{w:>5}x{h:<5} upsample+argmax of {args.classes} logit maps: "
              f"{(time.perf_counter() - t0) * 1e3:.0f} ms")  # fmt: skip
        for level in levels:
            s = timed(lambda a=arr, lv=level: encode(a, lv), repeat)
            size = len(encode(arr, level))
            print(
                f"{w:>5}x{h:<5} {level:>5} {s * 1e3:8.1f} {h * w / s / 1e6:7.1f} {size / 1024:8.1f}"
            )
        batch = {
            "status": np.array(["ok"], dtype=object),
            "class_map": np.array([arr, None], dtype=object)[:1],
        }
        s = timed(lambda b=batch: segment.mask_batch(b, labels), repeat)
        print(f"{w:>5}x{h:<5}  mask_batch (level {segment.PNG_COMPRESS_LEVEL} + classes): "
              f"{s * 1e3:.1f} ms/image")  # fmt: skip


if __name__ == "__main__":
    main()
