"""Where and in which precision the model runs: device choice and precision resolution."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

import torch

from batchvision.config import TORCH_PRECISIONS, Precision
from batchvision.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
            # Ray (and schedulers like it) show a worker only its own GPUs, from cuda:0.
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            seen = "" if visible is None else f" (CUDA_VISIBLE_DEVICES={visible!r})"
            raise ConfigError(
                f"--device {device!r}: only {count} GPU(s) visible here{seen}; valid: "
                f"cuda:0..cuda:{count - 1}"
            )
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix math in hardware (AVX512-BF16/AMX, or Ampere+).

    On CUDA the model's own GPU is asked (``torch.cuda.is_bf16_supported`` looks at the
    current device, which need not be the model's: a Volta ``cuda:0`` beside an Ampere
    ``cuda:1``). ROCm GPUs run bf16 natively.
    """
    if device.type == "cuda":
        if torch.version.hip:
            return True
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8
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


#: NVIDIA's switch (read by cuBLAS and cuDNN themselves) that turns TF32 off for the whole
#: process: ``NVIDIA_TF32_OVERRIDE=0`` makes ``--precision fp32`` IEEE fp32 throughout.
TF32_OVERRIDE_ENV = "NVIDIA_TF32_OVERRIDE"


def uses_tf32(device: str | torch.device, precision: str) -> bool:
    """Whether a model at ``precision`` on ``device`` runs its fp32 matmuls and convolutions
    on TF32 tensor cores (on Ampere and newer GPUs; older ones have none and run fp32).

    ``--precision fp32`` on CUDA does, as JAX and TensorFlow do by default and PyTorch
    already does for cuDNN convolutions: 10 mantissa bits in the products, fp32 sums and
    range, several times the fp32 matmul speed, and class maps, labels and embeddings that
    agree with IEEE fp32 as closely as bf16's do not. ``NVIDIA_TF32_OVERRIDE=0`` opts out.
    """
    return (
        torch.device(device).type == "cuda"
        and precision == "fp32"
        and os.environ.get(TF32_OVERRIDE_ENV) != "0"
    )


@contextlib.contextmanager
def tf32_math() -> Iterator[None]:
    """Within the block, CUDA fp32 matmuls and convolutions may use TF32; the settings before
    are restored after, so a process that runs batchvision keeps its own.

    Only the new per-backend settings (``fp32_precision``) are read and written: PyTorch
    refuses to read the legacy ``allow_tf32`` flags once the two are mixed, and setting
    only what differs leaves untouched a process that chose TF32 itself.
    """
    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]  # set up at import, unstubbed
    settings = (torch.backends.cuda.matmul, conv)
    before = [s.fp32_precision for s in settings]
    changed = [s for s, b in zip(settings, before, strict=True) if b != "tf32"]
    for s in changed:
        s.fp32_precision = "tf32"
    try:
        yield
    finally:
        for s, b in zip(settings, before, strict=True):
            if s in changed:
                s.fp32_precision = b


def autocast(device: torch.device, precision: str) -> AbstractContextManager[None]:
    """The math context of a model call at ``precision``: autocast for bf16/fp16; for fp32,
    TF32 on CUDA (see :func:`uses_tf32`), else nothing."""
    if precision == "fp32":
        return tf32_math() if uses_tf32(device, precision) else nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])
