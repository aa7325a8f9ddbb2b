"""Bundled demo assets: a tiny classifier for synthetic shapes and the generator of its images.

The checkpoint (``demo_model.safetensors``), its class names (``labels.txt``, one per line, in
label-index order) and training metadata (``demo_model.json``) live next to this file and are
produced by ``scripts/train_demo_model.py``.
"""

from batchvision.demo.synth import (
    CLASSES,
    photo_like,
    render,
    write_benchmark_images,
    write_dataset,
)

__all__ = ["CLASSES", "photo_like", "render", "write_benchmark_images", "write_dataset"]
