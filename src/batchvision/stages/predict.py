"""The predictor: a callable class that loads its model once and runs it on uint8 batches.

One predictor serves every task: ``classify`` adds top-k ids and probabilities,
``embed`` adds pooled feature vectors, ``segment`` adds per-image class maps at each
image's original size (logits upsampled bilinearly on the device, then argmax).

Written in the shape Ray Data's batch inference expects (load in ``__init__``, infer under
``torch.inference_mode()`` in ``__call__``), so the local engine and ``map_batches`` run
the very same code.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from batchvision.config import TORCH_PRECISIONS, Precision, PredictOptions
from batchvision.errors import ConfigError
from batchvision.models.registry import build_model
from batchvision.models.spec import ModelSpec
from batchvision.runtimes.export import Exported
from batchvision.runtimes.sessions import Session
from batchvision.runtimes.sessions import load as load_session
from batchvision.stages.batching import (
    SEARCH_BUDGET_S,
    SEARCH_LIMIT,
    SEARCH_START,
    BatchSearch,
    free_cached_memory,
    is_out_of_memory,
    search_batch_size,
)

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Largest upsampled logits tensor (bytes) made at once; bigger images go in row bands.
UPSAMPLE_BYTES = 256 * 2**20
#: Out of memory while upsampling halves the bands, down to this (then the error is real).
MIN_UPSAMPLE_BYTES = 2**20


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda:N`` must name an existing GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(
            f"--device {device!r} is not valid; choose auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"--device {device!r} is not valid; choose auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {device!r}: no CUDA GPU is available; use cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"--device {device!r}: only {count} GPU(s) here; valid: cuda:0..cuda:{count - 1}"
            )
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix math in hardware (AVX512-BF16/AMX, or Ampere+)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """``auto`` is bf16 where the device runs it natively, else fp32."""
    if precision not in TORCH_PRECISIONS:
        raise ConfigError(
            f"--precision {precision!r} is not valid for torch; choose "
            f"{', '.join(TORCH_PRECISIONS)} (int8 needs --runtime onnxruntime or openvino)"
        )
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def check_top_k(top_k: int, spec: ModelSpec) -> None:
    """``top_k`` must lie within the model's classes."""
    if not 1 <= top_k <= spec.num_classes:
        raise ConfigError(
            f"--top-k {top_k} is not valid for {spec.arch} with {spec.num_classes} classes; "
            f"choose 1..{spec.num_classes}"
        )


def fold_batch_norms(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """Fold an eval-mode model's BatchNorm layers into the convolutions that feed them.

    A folded layer costs nothing at inference (its scale and shift move into the
    convolution's weights and bias, computed in fp32), so the results are the same within
    float rounding, one pass over the activations fewer per layer (resnet50 on the CPU in
    bf16: model alone about 9% faster, end to end 7%). Uses ``torch.fx``'s conv-bn
    fusion. A model without BatchNorm, in training mode, or that ``torch.fx`` cannot trace
    (control flow on tensor values, most Hugging Face models) is returned as it is.

    Returns:
        the model to run, and how many BatchNorm layers were folded.
    """
    from torch.fx.experimental.optimization import fuse

    def count(m: torch.nn.Module) -> int:
        return sum(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())

    before = count(model)
    if before == 0 or model.training:
        return model, 0
    try:
        # inplace: no deep copy; tracing fails before anything is changed, and the graph
        # module gets new parents for the folded convolutions, leaving ``model``'s own.
        fused = fuse(model, inplace=True)
    except Exception as e:  # torch.fx raises many kinds (TraceError, TypeError, ...)
        logger.debug("BatchNorm layers not folded: torch.fx cannot trace the model (%s)", e)
        return model, 0
    folded = before - count(fused)
    logger.debug("folded %d of %d BatchNorm layers into convolutions", folded, before)
    return (fused, folded) if folded else (model, 0)


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
        if spec.task == "classify":
            check_top_k(options.top_k, spec)
        self.spec = spec
        self.task = spec.task
        self.top_k = options.top_k
        self.normalize = options.normalize
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
        mean = torch.tensor(spec.preprocess.mean, dtype=torch.float32, device=self.device)
        std = torch.tensor(spec.preprocess.std, dtype=torch.float32, device=self.device)
        # (x * rescale - mean) / std  ==  x * scale + shift, one fused multiply-add.
        self._scale = (spec.preprocess.rescale_factor / std).view(1, 3, 1, 1)
        self._shift = (-mean / std).view(1, 3, 1, 1)

    def _autocast(self) -> torch.autocast | nullcontext[None]:
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

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
        n = len(images)
        limit = self.batch_limit or n
        if n <= limit:
            try:
                return self._logits(images)
            except Exception as e:
                if n <= 1 or not is_out_of_memory(e):
                    raise
                limit = self._shrink(n, e)
        outs = []
        start = 0
        while start < n:
            chunk = images[start : start + limit]
            try:
                outs.append(self._logits(chunk))
            except Exception as e:
                if len(chunk) <= 1 or not is_out_of_memory(e):
                    raise
                limit = self._shrink(len(chunk), e)
                continue
            start += len(chunk)
        return torch.cat(outs)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.inject_oom_above is not None and len(images) > self.inject_oom_above:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (injected by the test hook: batch of {len(images)} > "
                f"{self.inject_oom_above})"
            )
        if self._session is not None:  # the exported graph takes the uint8 batch itself
            return torch.from_numpy(self._session(images.numpy()))
        with self._autocast():
            out = self._forward(self.to_input(images))
        if not isinstance(out, torch.Tensor):  # e.g. GoogLeNet/Inception named tuples
            out = out[0]
        return out.float()

    def _shrink(self, n: int, error: BaseException) -> int:
        """Halve the batch after an out-of-memory error on ``n`` images; keep the new size."""
        free_cached_memory(self.device)
        self.batch_limit = max(1, n // 2)
        logger.warning(
            "out of memory on %s with a batch of %d (%s): retrying the same rows in batches "
            "of %d, and keeping that size",
            *(self.device, n, str(error).splitlines()[0][:120], self.batch_limit),
        )
        return self.batch_limit

    def batch_size_used(self, requested: int) -> int:
        """The batch size the model ran at: ``requested``, or less after an OOM."""
        return min(requested, self.batch_limit or requested)

    def input_size(self) -> tuple[int, int]:
        """``(h, w)`` of a model input: the crop, or the resize for uncropped inputs."""
        pre = self.spec.preprocess
        if pre.resize_mode == "shorter":
            return pre.resize_size, pre.resize_size
        return pre.crop_size

    @torch.inference_mode()
    def find_batch_size(
        self,
        start: int | None = None,
        limit: int | None = None,
        budget_s: float | None = None,
    ) -> BatchSearch:
        """``--batch-size auto``: the batch size with the best throughput that fits.

        Times the model on synthetic uint8 input of the model's input size, on the device,
        at doubling sizes (see :func:`search_batch_size`); defaults depend on the device type.
        """
        kind = self.device.type if self.device.type in SEARCH_START else "cpu"
        h, w = self.input_size()
        gen = torch.Generator(device="cpu").manual_seed(0)
        sample = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=gen)
        sample = sample.to(self.device)

        def run(n: int) -> None:
            self._logits(sample.expand(n, h, w, 3).contiguous())
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        search = search_batch_size(
            run,
            start=start or SEARCH_START[kind],
            limit=limit or SEARCH_LIMIT[kind],
            budget_s=SEARCH_BUDGET_S[kind] if budget_s is None else budget_s,
            on_oom=lambda: free_cached_memory(self.device),
        )
        free_cached_memory(self.device)
        logger.info(
            "--batch-size auto: %d on %s (%s) in %.1f s",
            search.size,
            self.device,
            ", ".join(
                f"{b}: {r:.0f} img/s" if r else f"{b}: out of memory" for b, r in search.trials
            ),
            search.seconds,
        )
        return search

    @torch.inference_mode()
    def topk(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k class ids (int32) and softmax probabilities (float32) per image."""
        n = len(images)
        if n == 0:
            return np.zeros((0, self.top_k), np.int32), np.zeros((0, self.top_k), np.float32)
        probs = torch.softmax(self.logits(images), dim=1)
        scores, ids = probs.topk(self.top_k, dim=1)
        return ids.to(torch.int32).cpu().numpy(), scores.cpu().numpy()

    @torch.inference_mode()
    def embed(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Pooled features ``(N, D)`` float32, L2-normalised when the options say so."""
        feats = self.logits(images).reshape(len(images), -1)
        if self.normalize:
            feats = F.normalize(feats, dim=1)
        return feats.cpu().numpy()

    @torch.inference_mode()
    def segment(
        self, images: torch.Tensor | np.ndarray, sizes: list[tuple[int, int]]
    ) -> list[np.ndarray]:
        """Class maps at ``sizes`` ((height, width) per image): uint8, or uint16 past 256."""
        logits = self.logits(images)
        dtype = np.uint8 if self.spec.num_classes <= 256 else np.uint16
        return [
            self._upsample(logits[i], size).cpu().numpy().astype(dtype)
            for i, size in enumerate(sizes)
        ]

    def _upsample(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """:func:`upsample_argmax`; out of device memory, retried in bands half as large
        (kept for later images), down to ``MIN_UPSAMPLE_BYTES``."""
        while True:
            try:
                return upsample_argmax(logits, size, self.upsample_bytes)
            except Exception as e:
                if not is_out_of_memory(e) or self.upsample_bytes <= MIN_UPSAMPLE_BYTES:
                    raise
                free_cached_memory(self.device)
                self.upsample_bytes = max(MIN_UPSAMPLE_BYTES, self.upsample_bytes // 2)
                logger.warning(
                    "out of memory on %s upsampling a %dx%d class map (%s): retrying in "
                    "bands of at most %d MiB, and keeping that size",
                    *(self.device, size[1], size[0], str(e).splitlines()[0][:120]),
                    self.upsample_bytes // 2**20,
                )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add the task's columns to a decoded batch and drop ``image``.

        classify: ``topk_ids``/``topk_scores`` (zeros on error rows); embed: ``embedding``
        ``(N, D)`` float32 (zeros on error rows); segment: ``class_map``, an object array
        of 2-D class maps at each image's displayed size (empty ``(0, 0)`` on error rows).
        """
        if self.task == "embed":
            return self._embed_batch(batch)
        if self.task == "segment":
            return self._segment_batch(batch)
        status = batch["status"]
        ok = np.flatnonzero(status == "ok")
        n = len(status)
        ids = np.zeros((n, self.top_k), dtype=np.int32)
        scores = np.zeros((n, self.top_k), dtype=np.float32)
        if len(ok):
            images = batch["image"]
            if len(ok) < n:
                images = images[ok]
            ids[ok], scores[ok] = self.topk(images)
        out = _without_image(batch)
        out["topk_ids"] = ids
        out["topk_scores"] = scores
        return out

    def _embed_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.flatnonzero(batch["status"] == "ok")
        n = len(batch["status"])
        out = _without_image(batch)
        emb = np.zeros((n, self.spec.embedding_dim or 0), dtype=np.float32)
        if len(ok):
            feats = self.embed(batch["image"][ok] if len(ok) < n else batch["image"])
            if emb.shape[1] != feats.shape[1]:
                emb = np.zeros((n, feats.shape[1]), dtype=np.float32)
            emb[ok] = feats
        out["embedding"] = emb
        return out

    def _segment_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.flatnonzero(batch["status"] == "ok")
        # Error rows get an empty map rather than None, so the column stays all arrays
        # (Ray Data stores it as a variable-shaped tensor column).
        empty = np.zeros((0, 0), np.uint8 if self.spec.num_classes <= 256 else np.uint16)
        maps = np.empty(len(batch["status"]), dtype=object)
        for i in range(len(maps)):
            maps[i] = empty
        images = batch["image"]
        # Inputs of different sizes (no crop) run in groups of equal size, unpadded.
        if "input_height" in batch:
            keys = [(int(batch["input_height"][i]), int(batch["input_width"][i])) for i in ok]
        else:
            keys = [tuple(images.shape[1:3])] * len(ok)
        for key in dict.fromkeys(keys):
            idx = np.array([i for i, k in zip(ok, keys, strict=True) if k == key])
            sizes = [(int(batch["height"][i]), int(batch["width"][i])) for i in idx]
            for i, m in zip(idx, self.segment(images[idx, : key[0], : key[1]], sizes), strict=True):
                maps[i] = m
        out = _without_image(batch)
        out["class_map"] = maps
        return out


def _without_image(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    drop = ("image", "input_height", "input_width")
    return {k: v for k, v in batch.items() if k not in drop}


def upsample_argmax(logits: torch.Tensor, size: tuple[int, int], max_bytes: int) -> torch.Tensor:
    """argmax over classes of ``logits`` ``(C, h, w)`` bilinearly upsampled to ``size``.

    Same as ``F.interpolate(..., mode="bilinear", align_corners=False)`` then argmax (what
    ``post_process_semantic_segmentation`` does); when the upsampled logits would exceed
    ``max_bytes`` they are made in bands of output rows (each a blend of its two nearest
    input rows, then interpolated along the width), so memory stays bounded for any image
    size and class count, and time grows with the output's pixels (C x out_h x (w + out_w)),
    not with the product of the input's and the output's sizes.
    """
    c, h, w = logits.shape
    out_h, out_w = size
    logits = logits.float()
    if c * out_h * out_w * 4 <= max_bytes:
        up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)
        return up[0].argmax(0)
    y0, y1, fy = _bilinear_taps(h, out_h, logits.device)
    band = max(1, max_bytes // (4 * c * (out_w + 3 * w)))
    rows = []
    for r0 in range(0, out_h, band):
        rs = slice(r0, r0 + band)
        # Rows: each output row blends its two input rows (bilinear is separable) ...
        u = torch.lerp(logits[:, y0[rs]], logits[:, y1[rs]], fy[rs].view(1, -1, 1))
        # ... then the columns of every row at once, over the full width (so the scale is
        # the image's own), by the native 1-D kernel.
        b = u.shape[1]
        v = F.interpolate(u.reshape(1, c * b, w), size=out_w, mode="linear", align_corners=False)
        rows.append(v.view(c, b, out_w).argmax(0))
    return torch.cat(rows)


def _bilinear_taps(
    n_in: int, n_out: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of ``n_out`` rows: its two input neighbours and the weight of the second
    (half-pixel centres, edge clamp: ``F.interpolate``'s ``align_corners=False``)."""
    dst = torch.arange(n_out, dtype=torch.float32, device=device)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, src - i0.float()
