"""Reproductions of the tutorials' code, for comparison only: NOT how batchvision runs.

``batchvision bench`` measures the five ways of running inference on Ray that the seed
tutorials teach, on the same images and model as batchvision, so users see the gap. The
code below is the tutorials' code with the model swapped in; deliberate differences are
listed per strategy, and only those:

* ``sequential``, ``ray_tasks``, ``ray_actors``, ``actor_pool``: "Scalable Batch Inference
  with Ray" (shared/seeds/004, parts 3 to 6). Its SegFormer and Hugging Face feature
  extractor become the benchmarked classifier (batchvision's own weights, fp32) and a
  feature extractor that applies the weights' transform recipe (``ToTensor`` +
  ``ImageClassification``, i.e. ``weights.transforms()``) image by image; its
  post-processing (per-image segmentation maps) becomes per-image class ids. Like the
  tutorial, images are opened into PIL in the driver and grouped into batches, and the
  model runs without ``torch.no_grad()``. ``N_ACTORS = 2`` as in the tutorial.
* ``ray_data``: "Image Classification Batch Inference with PyTorch" (shared/seeds/002, the
  Ray Data example): ``ray.data.read_images`` -> ``ds.map(preprocess_image)`` row by row ->
  ``map_batches(ResnetModel, concurrency=1, batch_size=B)`` in fp32 -> drop
  ``original_image`` and write Parquet (to a temporary folder). The model is built with
  ``weights=None`` (offline machines), its architecture is the benchmarked one.

Timing: from opening the first image (or creating the dataset) to the last prediction
(or row written); ``ray.init`` and building the model in the driver are not counted.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import models, transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from batchvision.errors import ConfigError
from batchvision.models.spec import ModelSpec

N_ACTORS = 2  # the tutorial's


def seed_transform(spec: ModelSpec) -> Callable[[Image.Image], torch.Tensor]:
    """``Compose([ToTensor(), weights.transforms()])`` for ``spec``'s preprocessing recipe:
    the seeds make a float tensor first, so they resize in float."""
    return transforms.Compose([transforms.ToTensor(), weights_transform(spec)])


def weights_transform(spec: ModelSpec) -> ImageClassification:
    """``weights.transforms()`` for ``spec``'s recipe, as torchvision documents its use: on a
    PIL image it resizes the uint8 image, crops, then converts and normalises."""
    pre = spec.preprocess
    if pre.resize_mode != "shorter_crop" or pre.crop_size[0] != pre.crop_size[1]:
        raise ConfigError(
            f"the seed strategies reproduce torchvision tutorials and need a torchvision-style "
            f"classifier (resize the shorter side, square crop); {spec.name} uses "
            f"{pre.resize_mode} {pre.crop_size}: pass --strategies none"
        )
    return ImageClassification(
        crop_size=pre.crop_size[0],
        resize_size=pre.resize_size,
        mean=pre.mean,
        std=pre.std,
        interpolation=InterpolationMode(pre.interpolation),
    )


class FeatureExtractor:
    """The tutorial's ``feature_extractor(images=..., return_tensors="pt")``: a list of PIL
    images in, one stacked float tensor out, each image processed on its own."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])


def load_batches(paths: list[str], batch_size: int) -> list[list[Image.Image]]:
    """The tutorial's "Prepare batches": RGB PIL images, grouped, all in memory."""
    batches = []
    for i in range(0, len(paths), batch_size):
        batch = []
        for path in paths[i : i + batch_size]:
            image = Image.open(path).convert("RGB")  # the tutorial's convert_image_to_rgb
            batch.append(image)
        batches.append(batch)
    return batches


# --- shared/seeds/004, part 3: sequential batch inference --------------------------------


def predict(model: Any, feature_extractor: Any, images: Any, device: Any) -> list[np.ndarray]:
    inputs = feature_extractor(images=images)
    outputs = model(inputs.to(device))

    # The tutorial post-processes each image's segmentation map; a classifier's is its class.
    _class_ids = outputs.argmax(dim=1)

    return [j.detach().cpu().numpy() for j in _class_ids]


def run_sequential(model: Any, feature_extractor: Any, batches: list[Any]) -> list[Any]:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(dev)
    predictions = []
    for batch in batches:
        segmentation_maps = predict(
            model=model,
            feature_extractor=feature_extractor,
            images=batch,
            device=dev,
        )
        predictions.append(segmentation_maps)
    return predictions


# --- shared/seeds/004, parts 4 to 6: Ray tasks, Ray actors, ActorPool --------------------


@functools.cache
def _remote_defs() -> tuple[Any, Any]:
    """The tutorial's ``@ray.remote`` task and actor (made on first use: ray is optional)."""
    import ray

    @ray.remote
    def inference_task(model: Any, feature_extractor: Any, images: Any, device: Any) -> Any:
        return predict(
            model=model,
            feature_extractor=feature_extractor,
            images=images,
            device=device,
        )

    @ray.remote
    class PredictionActor:
        def __init__(self, model: Any, feature_extractor: Any) -> None:
            self.model = model
            self.feature_extractor = feature_extractor
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

        def predict(self, images: Any) -> Any:
            inputs = self.feature_extractor(images=images)
            outputs = self.model(inputs.to(self.device))

            _class_ids = outputs.argmax(dim=1)

            return [j.detach().cpu().numpy() for j in _class_ids]

    return inference_task, PredictionActor


def run_ray_tasks(model: Any, feature_extractor: Any, batches: list[Any]) -> list[Any]:
    import ray

    inference_task, _ = _remote_defs()
    segformer_ref = ray.put(model)
    segformer_feature_extractor_ref = ray.put(feature_extractor)
    # Ray tasks get no GPU unless they ask for one (the tutorial's do not).
    dev = torch.device("cpu")
    prediction_refs = []
    for batch in batches:
        task_ref = inference_task.remote(
            model=segformer_ref,
            feature_extractor=segformer_feature_extractor_ref,
            images=batch,
            device=dev,
        )
        prediction_refs.append(task_ref)
    predictions: list[Any] = ray.get(prediction_refs)
    return predictions


def _make_actors(model: Any, feature_extractor: Any) -> list[Any]:
    import ray

    _, PredictionActor = _remote_defs()
    segformer_ref = ray.put(model)
    segformer_feature_extractor_ref = ray.put(feature_extractor)
    idle_actors = []
    for _i in range(N_ACTORS):
        idle_actors.append(
            PredictionActor.remote(
                model=segformer_ref, feature_extractor=segformer_feature_extractor_ref
            )
        )
    return idle_actors


def prediction_results_postprocessing(predictions: list[Any], segmentation_maps: Any) -> None:
    predictions.append(segmentation_maps)


def run_ray_actors(model: Any, feature_extractor: Any, batches: list[Any]) -> list[Any]:
    import ray

    idle_actors = _make_actors(model, feature_extractor)
    batches = list(batches)
    predictions: list[Any] = []
    future_to_actor_mapping = {}
    while batches:
        if idle_actors:
            actor = idle_actors.pop()
            batch = batches.pop()
            future = actor.predict.remote(images=batch)
            future_to_actor_mapping[future] = actor
        else:
            [ready], _ = ray.wait(list(future_to_actor_mapping.keys()), num_returns=1)
            actor = future_to_actor_mapping.pop(ready)
            idle_actors.append(actor)
            prediction_results_postprocessing(
                predictions=predictions, segmentation_maps=ray.get(ready)
            )

    # Process any leftover results at the end.
    for future in future_to_actor_mapping:
        prediction_results_postprocessing(
            predictions=predictions, segmentation_maps=ray.get(future)
        )
    for actor in idle_actors + list(future_to_actor_mapping.values()):
        actor.__ray_terminate__.remote()
    return predictions


def run_actor_pool(model: Any, feature_extractor: Any, batches: list[Any]) -> list[Any]:
    from ray.util.actor_pool import ActorPool

    actors = _make_actors(model, feature_extractor)
    actor_pool = ActorPool(actors)

    def actor_call(actor: Any, batch_of_images: Any) -> Any:
        return actor.predict.remote(images=batch_of_images)

    predictions: list[Any] = []
    for segmentation_maps in actor_pool.map_unordered(actor_call, batches):
        prediction_results_postprocessing(
            predictions=predictions, segmentation_maps=segmentation_maps
        )
    if not actor_pool.has_next():
        while actor_pool.has_free():
            actor = actor_pool.pop_idle()
            actor.__ray_terminate__.remote()
    return predictions


# --- shared/seeds/002: the Ray Data example ----------------------------------------------

# Set by configure(): the tutorial keeps these as notebook globals. Ray ships this module's
# functions by value (as it ships a notebook's), so the workers see the values set here.
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


def run_ray_data(paths: list[str], batch_size: int, out_dir: str) -> int:
    """Build and fully consume the Ray Data pipeline; returns the number of rows written."""
    import pyarrow.dataset as pads
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ds = ray.data.read_images(paths, mode="RGB")
    transformed_ds = ds.map(preprocess_image)
    predictions = transformed_ds.map_batches(
        ResnetModel,
        concurrency=1,
        batch_size=batch_size,
    )
    predictions.drop_columns(["original_image"]).write_parquet(f"local://{out_dir}")
    return int(pads.dataset(out_dir, format="parquet").count_rows())


# --- running one strategy -----------------------------------------------------------------

RUNNERS: dict[str, Callable[[Any, Any, list[Any]], list[Any]]] = {
    "sequential": run_sequential,
    "ray_tasks": run_ray_tasks,
    "ray_actors": run_ray_actors,
    "actor_pool": run_actor_pool,
}


def _count(predictions: list[Any]) -> int:
    return sum(len(p) for p in predictions)


def measure_strategy(
    strategy: str,
    paths: list[str],
    batch_size: int,
    spec: ModelSpec,
    state_dict: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    """Run one strategy over ``paths``; its throughput and timings.

    Ray strategies start a local Ray instance first (timed apart, not counted), as the
    tutorials' ``ray.init()`` cell does, and shut it down after.
    """
    from batchvision.models.registry import build_model

    init_seconds = 0.0
    if strategy != "sequential":
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        init_seconds = time.perf_counter() - t
    try:
        extra: dict[str, Any] = {}
        if strategy == "ray_data":
            configure(spec.arch)
            with tempfile.TemporaryDirectory(prefix="seed-out-") as out_dir:
                start = time.perf_counter()
                rows = run_ray_data(paths, batch_size, out_dir)
                seconds = time.perf_counter() - start
            extra["precision"] = "fp32"
        else:
            model = build_model(spec, state_dict).float().eval()
            feature_extractor = FeatureExtractor(seed_transform(spec))
            start = time.perf_counter()
            batches = load_batches(paths, batch_size)
            loaded = time.perf_counter()
            predictions = RUNNERS[strategy](model, feature_extractor, batches)
            seconds = time.perf_counter() - start
            rows = _count(predictions)
            extra.update(
                load_seconds=round(loaded - start, 3),
                precision="fp32",
                actors=N_ACTORS if strategy in ("ray_actors", "actor_pool") else None,
                torch_threads=torch.get_num_threads(),
            )
    finally:
        if strategy != "sequential":
            import ray

            ray.shutdown()
    if rows != len(paths):
        raise RuntimeError(f"{strategy} produced {rows} predictions for {len(paths)} images")
    return {
        "images": rows,
        "seconds": seconds,
        "images_per_second": rows / seconds if seconds > 0 else 0.0,
        "ray_init_seconds": round(init_seconds, 3),
        **extra,
    }
