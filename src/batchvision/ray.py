"""batchvision's stages as Ray Data callables, for your own ``ray.data`` pipelines.

These are batchvision's stages (the very functions the engines run), so a pipeline of your
own gives the same rows as ``batchvision run``::

    import ray
    import batchvision.ray as bvr

    ds = ray.data.from_items([{"id": p, "path": p} for p in paths])
    ds = ds.map_batches(bvr.Decoder(model="resnet50"), batch_size=32)  # CPU tasks
    ds = ds.map_batches(
        bvr.Predictor,  # a class: an actor pool, one model per actor
        fn_constructor_kwargs={"model": "resnet50", "options": bvr.PredictOptions(top_k=5)},
        compute=ray.data.ActorPoolStrategy(size=2),
        batch_size=32,
    )

Rows need a ``path`` column (and an ``id`` column; ``path`` is used where it is missing).
A file that cannot be read or decoded becomes an error row (``status`` "error", ``error``
"code: message"), never a failed task.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import ray
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "batchvision.ray needs Ray Data; install it with: pip install 'batchvision[ray]'"
    ) from e

# Only torch-free modules at import time: decode tasks unpickle Decoder, which imports this
# module, and need not pay torch's import time and memory. Predictor imports torch itself.
from batchvision.config import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_INPUT_PIXELS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_PROMPT,
    PredictOptions,
    PreprocessConfig,
    TaskName,
)
from batchvision.errors import StorageAuthError
from batchvision.io.sources import read_batch
from batchvision.io.storage import StorageOptions
from batchvision.memory import HeapTrimmer
from batchvision.models.spec import ModelSpec
from batchvision.stages.preprocess import decode_batch
from batchvision.tasks import get_task

__all__ = [
    "DecodeOptions",
    "Decoder",
    "PredictOptions",
    "Predictor",
    "find_batch_size",
    "resolve",
]

logger = logging.getLogger(__name__)

#: The error code of rows whose read hit an authentication failure (S3 refused the
#: credentials): every row after it would fail alike.
FATAL_CODE = "storage_auth"


@dataclass(frozen=True)
class DecodeOptions:
    """Everything the decode stage needs, in one small picklable object Ray ships to tasks."""

    preprocess: PreprocessConfig
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = False
    #: How to reach ``s3://`` paths (endpoint, retries); ``None``: AWS defaults.
    storage: StorageOptions | None = None
    #: Larger resized images (model inputs, or crops) are error rows (from the header).
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    #: Larger files and objects are error rows (from their size, before reading).
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES


def resolve(
    model: str,
    weights: str = "DEFAULT",
    *,
    labels: str | None = None,
    task: TaskName | None = None,
    classes: tuple[str, ...] = (),
    prompt: str = DEFAULT_PROMPT,
) -> tuple[ModelSpec, Any]:
    """Resolve a model once on the driver: its spec and its weights in the object store.

    Pass both to :class:`Predictor` (``spec=``, ``state_dict=``) so that actors never
    download or read the weights themselves. ``task="zero-shot"`` embeds ``classes`` (each
    in ``prompt``) here, once; the spec carries them to the actors.
    """
    from batchvision.models.registry import load_state_dict, resolve_model
    from batchvision.tasks.zero_shot import with_classes

    spec = resolve_model(model, weights, labels_path=labels, task=task)
    state_dict = load_state_dict(spec)
    if spec.task == "zero-shot":
        spec = with_classes(spec, state_dict, tuple(classes), prompt)
    return spec, (ray.put(state_dict) if state_dict is not None else None)


class Decoder:
    """Reads, decodes and preprocesses a batch of rows with ``path``; a stateless callable.

    Pass an instance to ``map_batches`` (it runs as Ray tasks, on CPUs). Output columns:
    ``id``, ``path``, ``status``, ``error``, ``width``, ``height`` and ``image``
    (``(N, H, W, 3)`` uint8; zeros on error rows).

    Args:
        preprocess: the preprocessing to apply; or give ``model`` (and ``weights``) to use
            that model's own.
        model: a model name, e.g. ``resnet50``.
        weights: as ``--weights``.
        max_pixels: larger images are error rows (decided from the header).
        draft: allow reduced-size JPEG decoding for large images (faster, not bit-true
            to the reference; off by default).
        max_input_pixels: images whose resize would be larger are error rows (from the
            header; see ``--max-input-pixels``).
        max_file_bytes: larger files and objects are error rows (from their size, before
            reading); only regular files are read.
        options: a ready :class:`DecodeOptions` (the engine's way in).
    """

    def __init__(
        self,
        preprocess: PreprocessConfig | None = None,
        *,
        model: str | None = None,
        weights: str = "DEFAULT",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft: bool = False,
        options: DecodeOptions | None = None,
        max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        if options is None:
            if preprocess is None:
                if model is None:
                    raise ValueError("Decoder needs preprocess=, model= or options=")
                from batchvision.models.registry import resolve_model

                preprocess = resolve_model(model, weights).preprocess
            options = DecodeOptions(
                preprocess,
                max_pixels=max_pixels,
                draft=draft,
                max_input_pixels=max_input_pixels,
                max_file_bytes=max_file_bytes,
            )
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        opts = self.options
        if "id" not in batch:
            batch = {**batch, "id": batch["path"]}
        try:
            read = read_batch(
                {"id": batch["id"], "path": batch["path"]}, opts.storage, opts.max_file_bytes
            )
        except StorageAuthError as e:
            # Ray would wrap the exception and lose its type on the way back: as rows,
            # each says what happened (code storage_auth), and the pipeline goes on.
            n = len(batch["path"])
            read = {
                "id": batch["id"],
                "path": batch["path"],
                "bytes": np.full(n, None, dtype=object),
                "error": np.full(n, f"{FATAL_CODE}: {e}", dtype=object),
            }
        return decode_batch(
            read,
            opts.preprocess,
            max_pixels=opts.max_pixels,
            draft=opts.draft,
            max_input_pixels=opts.max_input_pixels,
        )


class Predictor:
    """Runs the model on decoded batches (the :class:`Decoder`'s output) on an actor pool.

    Give it to ``map_batches`` as a class, with ``fn_constructor_kwargs``; each actor loads
    the model once. Output: the input columns without ``image``, plus the task's columns:
    classify: ``topk_ids`` and ``topk_scores`` and, with ``postprocess`` (the default),
    ``label``, ``score`` and ``topk_labels``; segment: ``mask`` (PNG), ``mask_width``,
    ``mask_height``, ``classes``; embed: ``embedding``. Error rows get no prediction.

    Args:
        model: a model name (resolved and loaded in each actor); or pass ``spec``.
        weights: as ``--weights``.
        options: how to run it (:class:`PredictOptions`: ``device``, ``precision``,
            ``top_k``, ``channels_last``, ``normalize``, ``compile``, ``fuse``, as the CLI
            flags); default: ``PredictOptions()``, the CLI's defaults.
        labels: class names file, for checkpoints.
        task: ``classify``, ``segment``, ``embed`` or ``zero-shot`` (default: the model's own;
            zero-shot needs a ``spec`` from :func:`resolve` with its classes).
        spec: a spec resolved on the driver (see :func:`resolve`).
        state_dict: the weights resolved on the driver, or an object ref to them.
        postprocess: add the task's output columns (``label``, ``score``, ``topk_labels``;
            ``mask``, ``classes``; ``embedding``) in the actor.
        threads: torch threads in this actor (default: Ray's, one per CPU reserved).
    """

    def __init__(
        self,
        model: str | None = None,
        weights: str = "DEFAULT",
        *,
        options: PredictOptions | None = None,
        labels: str | None = None,
        task: TaskName | None = None,
        spec: ModelSpec | None = None,
        state_dict: Any = None,
        postprocess: bool = True,
        threads: int | None = None,
    ) -> None:
        import torch

        from batchvision.models.registry import load_state_dict, resolve_model
        from batchvision.stages.predict import Predictor as StagePredictor

        if threads:
            torch.set_num_threads(threads)
        if spec is None:
            if model is None:
                raise ValueError("Predictor needs model= or spec=")
            spec = resolve_model(model, weights, labels_path=labels, task=task)
            if state_dict is None:
                state_dict = load_state_dict(spec)
        if isinstance(state_dict, ray.ObjectRef):
            state_dict = ray.get(state_dict)
        self.spec = spec
        self.predictor = StagePredictor(spec, options or PredictOptions(), state_dict)
        self.postprocess = postprocess
        self.trim = HeapTrimmer()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.trim(len(batch["id"]))
        with warnings.catch_warnings():
            # Ray hands zero-copy, read-only views of its blocks; the model never writes them.
            warnings.filterwarnings("ignore", message=".*not writable.*")
            out = self.predictor(batch)
        if self.postprocess:
            out = get_task(self.spec.task).postprocess(_text_columns(out), self.spec)
            if "topk_labels" in out:
                # A 1-D column of lists: Arrow stores list<string> where a 2-D object array
                # would be pickled.
                labels = np.empty(len(out["topk_labels"]), dtype=object)
                labels[:] = [list(row) for row in out["topk_labels"]]
                out["topk_labels"] = labels
        return out


def find_batch_size(
    spec: ModelSpec, state_dict: Any, options: Any, threads: int | None = None
) -> Any:
    """``--batch-size auto`` where the predictors run: a :class:`BatchSearch`.

    Run it as a Ray task with the predictor actors' resources (``num_gpus``/``num_cpus``),
    so it measures the device they get.
    """
    import torch

    from batchvision.stages.predict import Predictor as StagePredictor

    if threads:
        torch.set_num_threads(threads)
    if isinstance(state_dict, ray.ObjectRef):
        state_dict = ray.get(state_dict)
    return StagePredictor(spec, options, state_dict).find_batch_size()


def _text_columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Undo Arrow's round trip between tasks: a block whose ``error`` column held no string
    comes back as nulls that numpy shows as NaN; the sink wants ``None``."""
    out = dict(batch)
    out["error"] = np.array(
        [e if isinstance(e, str) else None for e in batch["error"].tolist()], dtype=object
    )
    return out
