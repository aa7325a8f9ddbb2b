"""``batchvision demo``: an offline end-to-end run on generated images with a bundled model.

The bundled checkpoint (trained by scripts/train_demo_model.py on images from
``batchvision.demo.synth``) loads through the same ``--weights PATH`` route users take,
so a high accuracy shows that decoding, preprocessing and labels are wired right.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pyarrow.dataset as pads

from batchvision.api import Summary, run
from batchvision.config import RunConfig
from batchvision.demo import synth
from batchvision.engines.base import ProgressCallback

#: Seed of the demo's image set; the model was trained on seed 0 and validated on seed 1.
DEMO_SEED = 7


@dataclass(frozen=True)
class DemoReport:
    """The run's summary and how many predictions match the generated labels."""

    summary: Summary
    correct: int
    total: int
    classes: tuple[str, ...]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def bundled_model() -> tuple[str, Path, Path]:
    """``(arch, checkpoint path, labels path)`` of the bundled demo classifier."""
    root = Path(str(resources.files("batchvision.demo")))
    meta = json.loads((root / "demo_model.json").read_text())
    return meta["arch"], root / "demo_model.safetensors", root / "labels.txt"


def run_demo(
    output: str, per_class: int = 40, progress: ProgressCallback | None = None
) -> DemoReport:
    """Generate ``per_class`` images per class under OUTPUT/images, classify them into
    OUTPUT/predictions, and score the predictions against the generated labels."""
    out = Path(output)
    images = out / "images"
    if images.exists():
        shutil.rmtree(images)
    synth.write_dataset(images, per_class, seed=DEMO_SEED, layout="class_dirs")
    arch, checkpoint, labels = bundled_model()
    summary = run(
        RunConfig(
            inputs=(str(images),),
            output=str(out / "predictions"),
            model=arch,
            weights=str(checkpoint),
            labels=str(labels),
            overwrite=True,
            top_k=3,
        ),
        progress=progress,
    )
    table = pads.dataset(str(out / "predictions"), format="parquet").to_table(
        columns=["id", "label"]
    )
    truth = [i.split("/", 1)[0] for i in table.column("id").to_pylist()]
    predicted = table.column("label").to_pylist()
    correct = sum(t == p for t, p in zip(truth, predicted, strict=True))
    return DemoReport(summary, correct, len(truth), tuple(labels.read_text().split()))
