"""How close batchvision's output is to torchvision's own fp32 recipe.

batchvision's full output distribution (``top_k`` = all classes) on the first images,
against the reference: PIL open + ``exif_transpose`` + RGB + ``weights.transforms()`` on
the PIL image (torchvision's documented use: resize the uint8 image, crop, convert,
normalise) in fp32 with the same weights. Scored as the mean *centered cosine* of the
log-probabilities: both are centered by the reference's mean over the images (which
removes what every image shares, e.g. the near-constant logits of random weights) and
compared per image; 1.0 is identical.

Beside it: batchvision at fp32 (what the data path alone costs), batchvision without
BatchNorm folding (what folding costs), and the seeds' pipeline as reference (``ToTensor``
first, so the resize runs in float: up to one grey level from any uint8 resize).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def centered_cosine(logp: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-image cosine of ``logp`` and ``ref`` after subtracting ``ref``'s mean over images."""
    mean = ref.mean(axis=0, keepdims=True)
    a, b = logp - mean, ref - mean
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(1) / np.maximum(denom, np.finfo(np.float64).tiny))


#: Smallest log-probability float32 scores hold (below it they are 0 or subnormal).
LOG_FLOOR = float(np.log(np.finfo(np.float32).tiny))


def parity_scores(probs: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Scores of probabilities ``probs`` against reference log-probabilities ``ref``.

    Both sides are floored at ``LOG_FLOOR``: the output holds float32 probabilities, which
    cannot tell apart log-probabilities below about -87 (random resnet50 weights put most
    classes there), so the reference is compared only on what the output can represent.
    """
    logp = np.log(np.maximum(probs, np.finfo(np.float32).tiny))
    ref = np.maximum(ref, LOG_FLOOR)
    cos = centered_cosine(logp, ref)
    k = min(5, ref.shape[1])
    top = np.argsort(-logp, axis=1)[:, :k]
    top_ref = np.argsort(-ref, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top, top_ref, strict=True)])
    return {
        "mean_centered_cosine": float(cos.mean()),
        "min_centered_cosine": float(cos.min()),
        "top1_agreement": float((top[:, 0] == top_ref[:, 0]).mean()),
        "top5_overlap": float(overlap),
        "max_abs_prob_diff": float(np.abs(probs - np.exp(ref)).max()),
        # How much the reference's outputs differ between images; near 0 (e.g. a random
        # mobilenet, whose logits are all alike) the cosine is noise, not a parity figure.
        "reference_spread": float(np.abs(ref - ref.mean(axis=0, keepdims=True)).mean()),
    }


def _batchvision_probs(
    p: dict[str, Any], paths: list[str], precision: str, fuse: bool = True
) -> tuple[Any, str]:
    """batchvision's full output distribution for ``paths`` (through ``batchvision.run``)."""
    import pyarrow.dataset as pads

    import batchvision
    from batchvision import RunConfig

    with tempfile.TemporaryDirectory(prefix="bench-parity-") as tmp:
        manifest = os.path.join(tmp, "first.txt")
        Path(manifest).write_text("\n".join(paths) + "\n", encoding="utf-8")
        cfg = RunConfig(
            inputs=(manifest,),
            output=os.path.join(tmp, "out"),
            model=p["model"],
            weights=p["weights"],
            labels=p["labels"],
            device=p["device"],
            precision=precision,  # type: ignore[arg-type]
            batch_size=p["batch_size"],
            workers=p["workers"],
            top_k=p["num_classes"],
            seed=p["seed"],
            fuse=fuse,
            runtime=p.get("runtime", "torch"),
            # int8 calibrates on these few images and is not refused here: the figure
            # below is the measure of its agreement.
            min_agreement=0.0,
        )
        summary = batchvision.run(cfg)
        table = pads.dataset(cfg.output, format="parquet").to_table()
    rows = {r["id"]: r for r in table.to_pylist()}
    probs = np.zeros((len(paths), p["num_classes"]), dtype=np.float64)
    for i, path in enumerate(paths):
        row = rows[path]
        if row["status"] != "ok":
            raise RuntimeError(f"batchvision failed on {path}: {row['error']}")
        probs[i, row["topk_ids"]] = row["topk_scores"]
    return probs, summary.precision


def _reference(model: Any, tensors: list[Any], batch_size: int) -> np.ndarray:
    """fp64 log-probabilities of an fp32 ``model`` on preprocessed image tensors."""
    import torch

    chunks = []
    with torch.inference_mode():
        for i in range(0, len(tensors), batch_size):
            x = torch.stack(tensors[i : i + batch_size])
            chunks.append(torch.log_softmax(model(x).double(), dim=1).numpy())
    return np.concatenate(chunks)


def measure_parity(p: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """Parity at the benchmark's precision; at fp32 too when that differs (which separates
    what the data path costs from what reduced precision does); without BatchNorm folding;
    and against the seeds' float pipeline."""
    from PIL import Image, ImageOps

    from batchvision.bench.seeds import seed_transform, weights_transform
    from batchvision.models.registry import build_model, load_state_dict, resolve_model

    spec = resolve_model(p["model"], p["weights"], labels_path=p["labels"], seed=p["seed"])
    p = {**p, "num_classes": spec.num_classes}
    recipes = {"torchvision": weights_transform(spec), "seed": seed_transform(spec)}
    model = build_model(spec, load_state_dict(spec)).float().eval()
    inputs: dict[str, list[Any]] = {name: [] for name in recipes}
    for path in paths:
        with Image.open(path) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")
            for name, recipe in recipes.items():
                inputs[name].append(recipe(rgb))
    refs = {name: _reference(model, x, p["batch_size"]) for name, x in inputs.items()}
    del model, inputs
    ref = refs["torchvision"]

    probs, precision = _batchvision_probs(p, paths, p["precision"])
    result: dict[str, Any] = {
        "images": len(paths),
        "precision": precision,
        "runtime": p.get("runtime", "torch"),
        "reference": "PIL open + exif_transpose + RGB + weights.transforms() on the PIL "
        "image (uint8 resize), fp32",
        "weights": spec.weights,
        **parity_scores(probs, ref),
    }
    if p.get("runtime", "torch") != "torch":  # a runtime's row: its own figure only
        return result
    if precision != "fp32":
        probs32, _ = _batchvision_probs(p, paths, "fp32")
        result["fp32"] = parity_scores(probs32, ref)
    unfused, _ = _batchvision_probs(p, paths, p["precision"], fuse=False)
    result["no_fuse"] = parity_scores(unfused, ref)
    result["vs_seed_pipeline"] = {
        "reference": "the seeds' pipeline: ToTensor first (float resize), fp32",
        **parity_scores(probs, refs["seed"]),
    }
    return result
