"""The predictor: a callable class that loads its model once and runs it on uint8 batches.

The predictor owns the model, its input normalisation and out-of-memory halving; what a
task does with the model's output (top-k, features, upsampled class maps, ...) is the
task's ``predict`` (:mod:`batchvision.tasks`), which ``__call__`` hands the batch to.

Written in the shape Ray Data's batch inference expects (load in ``__init__``, infer under
``torch.inference_mode()`` in ``__call__``), so the local engine and ``map_batches`` run
the very same code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from batchvision.config import PredictOptions
from batchvision.models.registry import build_model
from batchvision.models.spec import ModelSpec
from batchvision.runtimes.export import Exported
from batchvision.runtimes.sessions import Session
from batchvision.runtimes.sessions import load as load_session
from batchvision.stages.batching import (
    BatchSearch,
    find_batch_size,
    free_cached_memory,
    is_out_of_memory,
)
from batchvision.stages.device import autocast, resolve_device, resolve_precision
from batchvision.stages.fuse import fold_batch_norms
from batchvision.stages.readback import Readback, start_readback
from batchvision.stages.upsample import UPSAMPLE_BYTES
from batchvision.tasks import get_task

logger = logging.getLogger(__name__)
_R = TypeVar("_R")

#: After an out-of-memory halving, this many pieces must fit in a row before the size is
#: doubled again (and twice as many after each grown size that runs out again).
GROW_AFTER = 64


class Predictor:
    """Run ``spec``'s model for ``spec.task`` on ``(N, H, W, 3)`` uint8 image batches.

    Normalisation and dtype conversion happen on the device: the batch crosses to the
    device as uint8 (a quarter of float32's bytes), which in NHWC layout is already a
    channels-last tensor once permuted, so no copy is made for channels_last.

    A model call that runs out of device memory is retried on the same rows in halves, down
    to one image (then the error is real), and the smaller size is kept for later batches:
    ``batch_limit`` is then the largest batch the model is run on.

    Args:
        spec: the resolved model.
        options: device, precision, top-k and memory format.
        state_dict: weights resolved on the driver; when ``None`` the model loads its own.
            Or the model exported on the driver for ``--runtime onnxruntime``/``openvino``
            (:class:`~batchvision.runtimes.export.Exported`): it then runs in that runtime,
            on as many intra-op threads as torch has here, at the export's precision.
    """

    def __init__(
        self,
        spec: ModelSpec,
        options: PredictOptions | None = None,
        state_dict: dict[str, torch.Tensor] | Exported | None = None,
    ) -> None:
        options = options or PredictOptions()
        self.spec = spec
        self.task = get_task(spec.task)
        self.top_k = options.top_k
        self.normalize = options.normalize
        self.score_threshold = options.score_threshold
        self.max_detections = options.max_detections
        self.upsample_bytes = UPSAMPLE_BYTES
        self.device = resolve_device(options.device)
        self.channels_last = options.channels_last
        #: BatchNorm layers folded into convolutions (0: none, or the model was not traceable).
        self.folded_batch_norms = 0
        #: The runtime that runs the model (``torch``, or the export's).
        self.runtime = "torch"
        self._session: Session | None = None
        if isinstance(state_dict, Exported):
            self.runtime = state_dict.runtime
            self.precision = state_dict.precision
            self._session = load_session(state_dict, torch.get_num_threads())
        else:
            self.precision = resolve_precision(options.precision, self.device)
            model = build_model(spec, state_dict)
            if options.fuse:
                model, self.folded_batch_norms = fold_batch_norms(model)
            model = model.to(self.device)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self.model = model
            self._forward = torch.compile(model) if options.compile else model
        self.inject_oom_above = options.inject_oom_above
        #: Largest batch given to the model at once; ``None``: whole batches (no OOM yet).
        self.batch_limit: int | None = None
        #: Pieces that must fit in a row at ``batch_limit`` before it is doubled again.
        self.grow_after = GROW_AFTER
        self._fits_in_a_row = 0
        self._grown = False
        mean = torch.tensor(spec.preprocess.mean, dtype=torch.float32, device=self.device)
        std = torch.tensor(spec.preprocess.std, dtype=torch.float32, device=self.device)
        # (x * rescale - mean) / std  ==  x * scale + shift, one fused multiply-add.
        self._scale = (spec.preprocess.rescale_factor / std).view(1, 3, 1, 1)
        self._shift = (-mean / std).view(1, 3, 1, 1)
        #: Pad smaller batches to one shape (see :meth:`_padded`): on CUDA, for fixed-size
        #: (cropped) inputs run by torch, where cuDNN's autotuner is then switched on.
        self.pad_batches = (
            self.device.type == "cuda" and self._session is None and not spec.preprocess.uncropped
        )
        self._largest = 0
        if self.pad_batches:
            torch.backends.cudnn.benchmark = True
        self.task.setup(self)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC (any device) to the normalised float NCHW model input on the device."""
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = torch.addcmul(self._shift, x, self._scale)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def logits(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """fp32 logits for a uint8 NHWC batch, in pieces of ``batch_limit`` after an OOM."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        batch = images
        pieces = self.in_pieces(len(batch), lambda a, b: self._logits(batch[a:b]))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def in_pieces(self, n: int, run: Callable[[int, int], _R]) -> list[_R]:
        """``run(start, stop)`` over rows ``0..n``: whole, or in pieces of ``batch_limit``.

        A piece that runs out of device memory is retried in halves, down to one row (then
        the error is real), and the smaller size is kept for later batches; after
        ``grow_after`` pieces in a row have fit at that size it is doubled again (a
        transient peak, another process's memory freed), and each time a grown size runs
        out of memory again the wait before the next try doubles. Tasks whose model output
        is not one tensor (detection) run their own forward through this.
        """
        if n == 0:
            return [run(0, 0)]
        outs: list[_R] = []
        start = 0
        while start < n:
            stop = min(n, start + (self.batch_limit or n))
            try:
                outs.append(run(start, stop))
            except Exception as e:
                if stop - start <= 1 or not is_out_of_memory(e):
                    raise
                message = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            else:
                self._fitted(stop - start, n)
                start = stop
                continue
            # Outside the handler: the failed call's traceback, and the activations its
            # frames hold, are released before the allocator's cache is emptied.
            self._shrink(stop - start, message)
        return outs

    def _fitted(self, size: int, n: int) -> None:
        """A piece of ``size`` rows (of a batch of ``n``) ran: grow the limit back in time."""
        if self.batch_limit is None or size < self.batch_limit:
            return
        self._fits_in_a_row += 1
        if self._fits_in_a_row < self.grow_after:
            return
        self._fits_in_a_row = 0
        grown = self.batch_limit * 2
        self.batch_limit = None if grown >= n else grown
        self._grown = True
        logger.info(
            "%d batches fitted on %s: trying batches of %s again",
            *(self.grow_after, self.device, grown if self.batch_limit else n),
        )

    def check_injected_oom(self, n: int) -> None:
        """The test hook: a model call on more than ``inject_oom_above`` images raises
        ``torch.cuda.OutOfMemoryError``, on any device."""
        if self.inject_oom_above is not None and n > self.inject_oom_above:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (injected by the test hook: batch of {n} > "
                f"{self.inject_oom_above})"
            )

    def _logits(self, images: torch.Tensor, *, trial: bool = False) -> torch.Tensor:
        """fp32 model outputs for one piece. ``trial``: a batch-size search's run, as it
        is (not padded) and without ``torch.compile``, which would spend the search's
        budget compiling each size."""
        n = len(images)
        self.check_injected_oom(n)
        if self._session is not None:  # the exported graph takes the uint8 batch itself
            return torch.from_numpy(self._session(images.numpy()))
        images = images if trial else self._padded(images)
        forward = self.model if trial else self._forward
        with autocast(self.device, self.precision):
            out = forward(self.to_input(images))
        if not isinstance(out, torch.Tensor):  # e.g. GoogLeNet/Inception named tuples
            out = out[0]
        return out[:n].float()

    def _padded(self, images: torch.Tensor) -> torch.Tensor:
        """With ``pad_batches``, a smaller batch (the last one, a batch's ok rows, a piece)
        padded with copies of its last image to the largest size run so far, within
        ``batch_limit``: the model then sees one input shape, so cuDNN's autotuner
        (``cudnn.benchmark``) tunes once instead of at every new size, and a compiled model
        does not recompile. The padding rows' outputs are dropped; in eval mode no row
        depends on another."""
        n = len(images)
        if not self.pad_batches or n == 0:
            return images
        self._largest = max(self._largest, n)
        target = min(self._largest, self.batch_limit or self._largest)
        if n >= target:
            return images
        return torch.cat([images, images[-1:].expand(target - n, *images.shape[1:])])

    def _shrink(self, n: int, message: str) -> None:
        """Halve the batch after an out-of-memory error on ``n`` images; keep the new size."""
        free_cached_memory(self.device)
        if self._grown:  # a size grown back ran out again: wait twice as long next time
            self.grow_after *= 2
        self._grown = False
        self._fits_in_a_row = 0
        self.batch_limit = max(1, n // 2)
        logger.warning(
            "out of memory on %s with a batch of %d (%s): retrying the same rows in batches "
            "of %d, and keeping that size",
            *(self.device, n, message, self.batch_limit),
        )

    def batch_size_used(self, requested: int) -> int:
        """The batch size the model ran at: ``requested``, or less after an OOM."""
        return min(requested, self.batch_limit or requested)

    def input_size(self) -> tuple[int, int]:
        """``(h, w)`` of a model input: the crop, or the resize for uncropped inputs."""
        pre = self.spec.preprocess
        if pre.uncropped:
            return pre.resize_size, pre.resize_size
        return pre.crop_size

    def find_batch_size(
        self,
        start: int | None = None,
        limit: int | None = None,
        budget_s: float | None = None,
    ) -> BatchSearch:
        """``--batch-size auto`` for this predictor: see :func:`find_batch_size`."""
        return find_batch_size(self, start=start, limit=limit, budget_s=budget_s)

    def launch(self, batch: dict[str, np.ndarray]) -> Readback:
        """Queue ``batch`` on the device and the copy of its columns back to the host,
        without waiting for either: the caller can queue the next batch at once and
        :meth:`Readback.wait` for this one elsewhere (the engines' finishing thread)."""
        return start_readback(self.task.predict(self, batch), self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The task's columns for a decoded batch (``image`` dropped): see the task's
        ``predict``. Error rows get zeros (or empty values) and never reach the model."""
        return self.launch(batch).wait()
