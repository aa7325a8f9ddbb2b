"""Post-training static int8 quantization, and its agreement with fp32.

ONNX Runtime: its static quantizer (QDQ format, per-channel int8 weights, uint8
activations, MinMax calibration) on the pre-processed fp32 export. OpenVINO: NNCF's
``quantize`` (its default preset) on the model read from the same export, saved as IR.
Both calibrate on the images they are given, one image at a time.

Agreement is what ``--min-agreement`` is checked against, on images held apart from the
calibration set: for classification the share of images whose top-1 class is the fp32
model's, for segmentation the share of pixels (of the model's output) whose class is, and
for embeddings the mean cosine similarity of the int8 and fp32 vectors.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from batchvision.runtimes import require
from batchvision.runtimes.export import INPUT
from batchvision.runtimes.sessions import Session

logger = logging.getLogger(__name__)

#: Images per calibration batch for ONNX Runtime's calibrator. Its augmented model keeps
#: every intermediate tensor as an output, so the peak grows with the batch (resnet50:
#: 4.7 GB at 16, 2.1 GB at 4, 1.5 GB at 1, the export itself 1.2 GB of it) and not with the
#: number of images; one at a time costs no time (6.7 s for 64 images at 1, 4 or 16).
CALIBRATION_BATCH = 1
#: Images per batch when measuring agreement.
AGREEMENT_BATCH = 32


def quantize_onnxruntime(onnx: bytes, images: np.ndarray) -> dict[str, bytes]:
    """``onnx`` quantized to int8 by ONNX Runtime, calibrated on ``images``."""
    require("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                images[i : i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: np.ascontiguousarray(batch)}

    with tempfile.TemporaryDirectory(prefix="batchvision-int8-") as tmp:
        fp32, pre, out = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        Path(fp32).write_bytes(onnx)
        quant_pre_process(fp32, pre, skip_symbolic_shape=True)
        quantize_static(
            pre,
            out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # MinMax keeps only each tensor's reduced min and max per batch: small for any
            # number of images (its CalibMaxIntermediateOutputs drops what it collected).
            calibrate_method=CalibrationMethod.MinMax,
        )
        return {"model.onnx": Path(out).read_bytes()}


def quantize_openvino(onnx: bytes, images: np.ndarray) -> dict[str, bytes]:
    """``onnx`` read by OpenVINO and quantized to int8 by NNCF, calibrated on ``images``."""
    ov = require("openvino")
    try:
        import nncf
    except ImportError as e:
        raise_missing_nncf(e)
    with tempfile.TemporaryDirectory(prefix="batchvision-int8-") as tmp:
        src = os.path.join(tmp, "model.onnx")
        Path(src).write_bytes(onnx)
        model = ov.Core().read_model(src)
        dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
        quantized = nncf.quantize(model, dataset, subset_size=len(images))
        xml = os.path.join(tmp, "model.xml")
        ov.save_model(quantized, xml, compress_to_fp16=False)
        return {n: Path(tmp, n).read_bytes() for n in ("model.xml", "model.bin")}


def raise_missing_nncf(error: ImportError) -> None:
    from batchvision.errors import ConfigError
    from batchvision.runtimes import install_hint

    raise ConfigError(
        f"--precision int8 with --runtime openvino needs the nncf package ({error}); "
        f"install it with {install_hint('openvino')}"
    ) from None


def outputs(session: Session, images: np.ndarray) -> np.ndarray:
    """``session``'s logits for ``images``, in batches."""
    parts = [
        session(images[i : i + AGREEMENT_BATCH]) for i in range(0, len(images), AGREEMENT_BATCH)
    ]
    return np.concatenate(parts)


def agreement(task: str, reference: np.ndarray, other: np.ndarray) -> float:
    """How far ``other``'s outputs agree with ``reference``'s (see the module's docstring)."""
    if len(reference) == 0:
        return 1.0
    if task == "embed":
        a = reference.reshape(len(reference), -1).astype(np.float64)
        b = other.reshape(len(other), -1).astype(np.float64)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        denom = na * nb
        # Two zero vectors agree; one zero vector (an embedding int8 collapsed) does not.
        same = np.where((na == 0) & (nb == 0), 1.0, 0.0)
        cos = np.where(denom > 0, (a * b).sum(axis=1) / np.maximum(denom, 1e-30), same)
        return float(cos.mean())
    return float((reference.argmax(axis=1) == other.argmax(axis=1)).mean())
