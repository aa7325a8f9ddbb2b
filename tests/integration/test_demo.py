"""The bundled demo model through batchvision agrees with the plain torchvision reference."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as pads
import torch
import torchvision
from PIL import Image, ImageOps
from safetensors.torch import load_file

from batchvision.demo.runner import bundled_model, run_demo


def _reference_labels(paths: list[Path], arch: str, ckpt: Path, labels: list[str]) -> list[str]:
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    model = torchvision.models.get_model(arch, weights=None, num_classes=len(labels))
    model.load_state_dict(load_file(str(ckpt)))
    model.eval()
    transform = torchvision.transforms.Compose(
        [torchvision.transforms.ToTensor(), weights.transforms()]
    )
    batch = torch.stack(
        [transform(ImageOps.exif_transpose(Image.open(p)).convert("RGB")) for p in paths]
    )
    with torch.inference_mode():
        ids = model(batch).argmax(1).tolist()
    return [labels[i] for i in ids]


def test_demo_accuracy_and_agreement_with_reference(tmp_path: Path) -> None:
    report = run_demo(str(tmp_path / "demo"), per_class=12)
    assert report.total == 12 * len(report.classes)
    assert report.summary.ok == report.total and report.summary.error == 0
    assert report.accuracy >= 0.95

    table = pads.dataset(str(tmp_path / "demo" / "predictions"), format="parquet").to_table()
    rows = sorted(
        zip(table.column("path").to_pylist(), table.column("label").to_pylist(), strict=True)
    )
    arch, ckpt, labels_path = bundled_model()
    labels = labels_path.read_text().split()
    reference = _reference_labels([Path(p) for p, _ in rows], arch, ckpt, labels)
    agree = sum(r == label for r, (_, label) in zip(reference, rows, strict=True)) / len(rows)
    assert agree >= 0.99, f"top-1 agreement with the reference {agree:.3f}"
