"""The predictor: a callable class that loads its model once and classifies uint8 batches.

Written in the shape Ray Data's batch inference expects (load in ``__init__``, infer under
``torch.inference_mode()`` in ``__call__``), so the local engine and ``map_batches`` run
the very same code.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from batchvision.config import PRECISIONS, Precision, RunConfig
from batchvision.errors import ConfigError
from batchvision.models.registry import build_model
from batchvision.models.spec import ModelSpec

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not valid; choose {', '.join(PRECISIONS)}")
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


@dataclass(frozen=True)
class PredictOptions:
    """How to run the model; resolved values are recorded in the manifest."""

    device: str = "auto"
    precision: Precision = "auto"
    top_k: int = 5
    channels_last: bool = True

    @classmethod
    def from_config(cls, config: RunConfig) -> PredictOptions:
        """The options a run's config asks for; every engine builds its predictor from these."""
        return cls(
            device=config.device,
            precision=config.precision,
            top_k=config.top_k,
            channels_last=config.channels_last,
        )


class Predictor:
    """Classify ``(N, H, W, 3)`` uint8 image batches; returns top-k ids and probabilities.

    Normalisation and dtype conversion happen on the device: the batch crosses to the
    device as uint8 (a quarter of float32's bytes), which in NHWC layout is already a
    channels-last tensor once permuted, so no copy is made for channels_last.

    Args:
        spec: the resolved model.
        options: device, precision, top-k and memory format.
        state_dict: weights resolved on the driver; when ``None`` the model loads its own.
    """

    def __init__(
        self,
        spec: ModelSpec,
        options: PredictOptions | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        options = options or PredictOptions()
        check_top_k(options.top_k, spec)
        self.spec = spec
        self.top_k = options.top_k
        self.device = resolve_device(options.device)
        self.precision = resolve_precision(options.precision, self.device)
        self.channels_last = options.channels_last
        model = build_model(spec, state_dict).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        mean = torch.tensor(spec.preprocess.mean, dtype=torch.float32, device=self.device)
        std = torch.tensor(spec.preprocess.std, dtype=torch.float32, device=self.device)
        # (x / 255 - mean) / std  ==  x * scale + shift, one fused multiply-add.
        self._scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
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
        """fp32 logits for a uint8 NHWC batch."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        with self._autocast():
            out = self.model(self.to_input(images))
        if not isinstance(out, torch.Tensor):  # e.g. GoogLeNet/Inception named tuples
            out = out[0]
        return out.float()

    @torch.inference_mode()
    def topk(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k class ids (int32) and softmax probabilities (float32) per image."""
        n = len(images)
        if n == 0:
            return np.zeros((0, self.top_k), np.int32), np.zeros((0, self.top_k), np.float32)
        probs = torch.softmax(self.logits(images), dim=1)
        scores, ids = probs.topk(self.top_k, dim=1)
        return ids.to(torch.int32).cpu().numpy(), scores.cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add ``topk_ids``/``topk_scores`` to a decoded batch; error rows get zeros."""
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
        out = {k: v for k, v in batch.items() if k != "image"}
        out["topk_ids"] = ids
        out["topk_scores"] = scores
        return out
