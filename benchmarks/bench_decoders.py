"""JPEG decode + resize + crop per image, one thread: Pillow (batchvision's CPU path),
simplejpeg (libjpeg-turbo bindings, if importable) and torchvision.io's batched decoder
with the tensor resize (the ``--decode-device`` path, here on the CPU).

Each candidate's output is compared with Pillow's: mean absolute pixel difference, and
the centered cosine of a random resnet18's log-probabilities (the parity measure).

Usage::

    PYTHONPATH=src python benchmarks/bench_decoders.py --images 200 [--size 500x375]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from batchvision.config import PreprocessConfig
from batchvision.demo.synth import photo_like
from batchvision.stages.decode import decode_image
from batchvision.stages.device_decode import _decode_jpegs, resize_crop_tensor
from batchvision.stages.preprocess import draft_floor, resize_crop

CFG = PreprocessConfig()


def pillow(datas: list[bytes]) -> np.ndarray:
    floor = draft_floor(CFG)
    return np.stack(
        [resize_crop(decode_image(d, max_pixels=10**9, min_size=floor).image, CFG) for d in datas]
    )


def simplejpeg_path(datas: list[bytes]) -> np.ndarray:
    import simplejpeg

    out = []
    side = max(CFG.resize_size, *CFG.crop_size)
    for d in datas:
        arr = simplejpeg.decode_jpeg(d, colorspace="RGB", min_height=side, min_width=side)
        out.append(resize_crop(Image.fromarray(arr), CFG))
    return np.stack(out)


def torchvision_batched(datas: list[bytes]) -> np.ndarray:
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    imgs = _decode_jpegs(tensors, torch.device("cpu"))
    return np.stack([resize_crop_tensor(i, CFG).numpy() for i in imgs])


def _time(fn: Callable[[list[bytes]], np.ndarray], datas: list[bytes], reps: int) -> Any:
    fn(datas[:4])  # warm-up
    runs = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn(datas)
        runs.append(time.perf_counter() - t)
    return out, statistics.median(runs)


def _logp(images: np.ndarray) -> np.ndarray:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=100).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return torch.log_softmax(model((x - mean) / std), 1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", default="500x375")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    w, h = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    datas = []
    for _ in range(args.images):
        buf = io.BytesIO()
        photo_like(rng, (w, h)).save(buf, "JPEG", quality=90)
        datas.append(buf.getvalue())
    candidates: dict[str, Callable[[list[bytes]], np.ndarray]] = {
        "pillow (batchvision cpu)": pillow,
        "torchvision.io batched + tensor resize": torchvision_batched,
    }
    try:
        import simplejpeg  # noqa: F401

        candidates["simplejpeg + pillow resize"] = simplejpeg_path
    except ImportError:
        print("simplejpeg not importable: skipped")
    ref, ref_s = _time(pillow, datas, args.reps)
    ref_logp = _logp(ref[:64])
    centre = ref_logp.mean(0, keepdims=True)
    print(f"{args.images} JPEGs {w}x{h}, 1 thread, median of {args.reps}")
    print(f"{'path':42} {'ms/img':>7} {'x pillow':>8} {'mean|diff|':>10} {'cos min':>8}")
    for name, fn in candidates.items():
        out, s = (ref, ref_s) if fn is pillow else _time(fn, datas, args.reps)
        diff = float(np.abs(out.astype(np.int16) - ref.astype(np.int16)).mean())
        a, b = _logp(out[:64]) - centre, ref_logp - centre
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        ms = 1000 * s / len(datas)
        print(f"{name:42} {ms:7.2f} {ref_s / s:8.2f} {diff:10.3f} {cos.min():8.4f}")


if __name__ == "__main__":
    main()
