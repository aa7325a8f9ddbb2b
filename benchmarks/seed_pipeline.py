"""The seed pipeline: Ray Data batch inference written the way Ray's tutorial writes it.

This is the baseline ``bench_local.py`` compares batchvision against ("Image Classification
Batch Inference with PyTorch", the Ray Data example): ``ray.data.read_images`` ->
``ds.map(preprocess_image)`` one row at a time with
``transforms.Compose([transforms.ToTensor(), weights.transforms()])`` -> ``map_batches`` of a
``ResnetModel`` class in fp32 -> the tutorial's last step, dropping ``original_image`` and
writing Parquet.

Deliberate differences from the tutorial, and only these:

* the model is built with ``weights=None`` (random init) instead of downloading, because
  these machines are offline; its architecture is ``--model`` (the tutorial uses resnet152);
* the weights enum used for ``transforms()`` and label names is the architecture's
  ``DEFAULT`` (the same recipe batchvision uses for ``--weights random``);
* ``concurrency=1`` and no ``num_gpus`` (one model replica, CPU machine);
* the dataset is a local folder and the Parquet goes to a temporary folder.

Like the tutorial (a notebook, i.e. ``__main__``), the functions live in the script that runs
them, so Ray ships them to its workers by value. Run it on its own::

    python benchmarks/seed_pipeline.py IMAGE_DIR --model resnet50 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from typing import Any

import numpy as np
import ray
import torch
from torchvision import models, transforms

# Set by configure(): the tutorial keeps these as notebook globals.
ARCH = "resnet50"
weights: Any = None
transform: Any = None


def configure(arch: str) -> None:
    """Pick the architecture and its preprocessing, as the tutorial's globals."""
    global ARCH, weights, transform
    ARCH = arch
    weights = models.get_model_weights(arch).DEFAULT
    imagenet_transforms = weights.transforms
    transform = transforms.Compose([transforms.ToTensor(), imagenet_transforms()])


def preprocess_image(row: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "original_image": row["image"],
        "transformed_image": transform(row["image"]),
    }


class ResnetModel:
    def __init__(self) -> None:
        self.weights = weights
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # The tutorial downloads pretrained weights here; offline, the same model is built
        # with random init.
        self.model = models.get_model(ARCH, weights=None).to(self.device)
        self.model.eval()
        # Not in the tutorial: a log line so the benchmark can report the actor's threads.
        print(f"seed-actor torch_threads={torch.get_num_threads()}", flush=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        # Convert the numpy array of images into a PyTorch tensor.
        # Move the tensor batch to GPU if available.
        torch_batch = torch.from_numpy(batch["transformed_image"]).to(self.device)
        with torch.inference_mode():
            prediction = self.model(torch_batch)
            predicted_classes = prediction.argmax(dim=1).detach().cpu()
            predicted_labels = [self.weights.meta["categories"][i] for i in predicted_classes]
            return {
                "predicted_label": predicted_labels,
                "original_image": batch["original_image"],
            }


def run_pipeline(image_dir: str, batch_size: int, out_dir: str, sink: str = "parquet") -> int:
    """Build and fully consume the pipeline; returns the number of rows produced."""
    ds = ray.data.read_images(image_dir, mode="RGB")
    transformed_ds = ds.map(preprocess_image)
    predictions = transformed_ds.map_batches(
        ResnetModel,
        concurrency=1,
        batch_size=batch_size,
    )
    if sink == "materialize":
        return int(predictions.drop_columns(["original_image"]).materialize().count())
    predictions.drop_columns(["original_image"]).write_parquet(f"local://{out_dir}")
    import pyarrow.dataset as pads

    return int(pads.dataset(out_dir, format="parquet").count_rows())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image_dir")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sink", choices=("parquet", "materialize"), default="parquet")
    p.add_argument("--json-out", help="write the timings here as JSON")
    args = p.parse_args(argv)

    configure(args.model)
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    t1 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="seed-out-") as out_dir:
            start = time.perf_counter()
            rows = run_pipeline(
                os.path.abspath(args.image_dir), args.batch_size, out_dir, args.sink
            )
            seconds = time.perf_counter() - start
    finally:
        t2 = time.perf_counter()
        ray.shutdown()
        t3 = time.perf_counter()
    result = {
        "rows": rows,
        "seconds": seconds,
        "images_per_second": rows / seconds if seconds > 0 else 0.0,
        "ray_init_seconds": t1 - t0,
        "ray_shutdown_seconds": t3 - t2,
        "sink": args.sink,
        "precision": "fp32",
        "ray_version": ray.__version__,
        # The driver only: Ray's raylet, GCS and workers are separate processes.
        "main_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    print(
        f"seed pipeline: {rows} rows in {seconds:.2f} s = {result['images_per_second']:.2f} img/s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
