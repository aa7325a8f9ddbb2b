#!/usr/bin/env python
"""Train the tiny demo classifier bundled with batchvision, reproducibly, on CPU.

The model is a stock torchvision architecture (:data:`ARCH`) trained from scratch on the
synthetic shapes of :mod:`batchvision.demo.synth`. Evaluation uses exactly the preprocessing that
batchvision pipelines use for torchvision models::

    img = ImageOps.exif_transpose(PIL.Image.open(path)).convert("RGB")
    x = get_model_weights(ARCH).DEFAULT.transforms()(ToTensor()(img))

Training images go through the same function once (so epochs are cheap), followed by light
tensor-level augmentation (flips, 90-degree rotations, per-channel gain/offset).

Outputs, in ``--out-dir`` (default ``src/batchvision/demo``):

* ``demo_model.safetensors``: ``model.state_dict()`` (fp32), loadable with
  ``model.load_state_dict(safetensors.torch.load_file(path))`` into
  ``torchvision.models.get_model(ARCH, weights=None, num_classes=len(CLASSES))``;
* ``labels.txt``: class names, one per line, in label-index order;
* ``demo_model.json``: architecture, classes, held-out accuracy, seeds and settings.

Usage::

    python scripts/train_demo_model.py [--out-dir DIR] [--epochs N] [--n-per-class N]

Nothing is downloaded: weights are never requested, and ``Weights.transforms()`` only builds the
preprocessing transform.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import safetensors.torch
import torch
import torchvision
from PIL import Image, ImageOps
from torch import nn
from torchvision.models import get_model, get_model_weights
from torchvision.transforms import ToTensor

REPO_ROOT = Path(__file__).resolve().parents[1]
try:
    from batchvision.demo.synth import CLASSES, write_dataset
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(REPO_ROOT / "src"))
    from batchvision.demo.synth import CLASSES, write_dataset

ARCH = "shufflenet_v2_x0_5"
TRAIN_SEED = 0
VAL_SEED = 1
TORCH_SEED = 0
VAL_PER_CLASS = 100

logger = logging.getLogger("train_demo_model")


def reference_transform(arch: str = ARCH) -> Callable[[Image.Image], torch.Tensor]:
    """Return the reference preprocessing: ``ToTensor()`` then the arch's default transforms."""
    to_tensor = ToTensor()
    weights_tf = get_model_weights(arch).DEFAULT.transforms()

    def transform(img: Image.Image) -> torch.Tensor:
        return weights_tf(to_tensor(img))

    return transform


def load_image(path: Path) -> Image.Image:
    """Open an image the way batchvision does: EXIF orientation applied, RGB."""
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def load_split(
    root: Path,
    items: Sequence[tuple[str, str]],
    transform: Callable[[Image.Image], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and preprocess every image once; return ``(images NCHW, labels N)``."""
    index = {name: i for i, name in enumerate(CLASSES)}
    xs = torch.stack([transform(load_image(root / rel)) for rel, _ in items])
    ys = torch.tensor([index[label] for _, label in items], dtype=torch.long)
    return xs, ys


def make_split(
    workdir: Path,
    name: str,
    n_per_class: int,
    seed: int,
    transform: Callable[[Image.Image], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write a synthetic split to ``workdir/name`` and load it preprocessed."""
    t0 = time.perf_counter()
    root = workdir / name
    items = write_dataset(root, n_per_class, seed=seed)
    xs, ys = load_split(root, items, transform)
    logger.info(
        "%s split: %d images (seed %d) in %.1fs", name, len(items), seed, time.perf_counter() - t0
    )
    return xs, ys


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light label-preserving augmentation of a normalized batch (all classes are symmetric)."""
    n = x.shape[0]
    flip_h = torch.rand(n, generator=gen) < 0.5
    flip_v = torch.rand(n, generator=gen) < 0.5
    transpose = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
    x = torch.where(transpose[:, None, None, None], x.transpose(2, 3), x)
    gain = 1.0 + 0.2 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
    offset = 0.3 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
    return x * gain + offset


@torch.no_grad()
def evaluate(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, batch_size: int = 100) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on preprocessed tensors."""
    model.eval()
    correct = 0
    for i in range(0, len(xs), batch_size):
        correct += int((model(xs[i : i + batch_size]).argmax(1) == ys[i : i + batch_size]).sum())
    return correct / max(len(xs), 1)


def train(
    xs: torch.Tensor,
    ys: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    monitor: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> nn.Module:
    """Train ``ARCH`` from scratch on preprocessed tensors, deterministically.

    If ``monitor`` (images, labels) is given, its accuracy is logged after every epoch.
    """
    torch.manual_seed(TORCH_SEED)
    gen = torch.Generator().manual_seed(TORCH_SEED)
    model = get_model(ARCH, weights=None, num_classes=len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(xs) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xs), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(xs), batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = augment(xs[idx], gen), ys[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            loss_sum += float(loss.detach()) * len(idx)
        logger.info(
            "epoch %d/%d: loss %.4f, train acc %.4f, %.1fs%s",
            epoch + 1,
            epochs,
            loss_sum / total,
            correct / total,
            time.perf_counter() - t0,
            f", val acc {evaluate(model, *monitor):.4f}" if monitor is not None else "",
        )
    model.eval()
    return model


def save(model: nn.Module, out_dir: Path, meta: dict[str, object]) -> Path:
    """Write the checkpoint, labels and metadata into ``out_dir``; return the checkpoint path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    ckpt = out_dir / "demo_model.safetensors"
    safetensors.torch.save_file(state, str(ckpt), metadata={"arch": ARCH})
    (out_dir / "labels.txt").write_text("".join(f"{c}\n" for c in CLASSES), encoding="utf-8")
    (out_dir / "demo_model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return ckpt


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "src/batchvision/demo")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--n-per-class", type=int, default=500, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=VAL_PER_CLASS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--min-accuracy", type=float, default=0.97)
    parser.add_argument(
        "--monitor", action="store_true", help="log held-out accuracy after every epoch"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    transform = reference_transform(ARCH)
    with tempfile.TemporaryDirectory(prefix="bv-demo-") as tmp:
        xs, ys = make_split(Path(tmp), "train", args.n_per_class, TRAIN_SEED, transform)
        val_x, val_y = make_split(Path(tmp), "val", args.val_per_class, VAL_SEED, transform)

    t_train = time.perf_counter()
    monitor = (val_x, val_y) if args.monitor else None
    model = train(xs, ys, args.epochs, args.batch_size, args.lr, monitor)
    train_s = time.perf_counter() - t_train
    acc = evaluate(model, val_x, val_y)
    logger.info("held-out accuracy (seed %d): %.4f", VAL_SEED, acc)

    meta: dict[str, object] = {
        "arch": ARCH,
        "classes": list(CLASSES),
        "val_accuracy": round(acc, 4),
        "val_images": len(val_y),
        "train_seed": TRAIN_SEED,
        "val_seed": VAL_SEED,
        "torch_seed": TORCH_SEED,
        "train_images": len(ys),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "script": "scripts/train_demo_model.py",
    }
    if acc < args.min_accuracy:
        logger.error(
            "accuracy %.4f is below the required %.2f; nothing written", acc, args.min_accuracy
        )
        return 1
    ckpt = save(model, args.out_dir, meta)
    logger.info(
        "wrote %s (%.2f MB); training %.0fs, total %.0fs",
        ckpt,
        ckpt.stat().st_size / 1e6,
        train_s,
        time.perf_counter() - t_start,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
