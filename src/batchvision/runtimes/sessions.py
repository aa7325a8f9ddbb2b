"""Load an exported model into its runtime: a callable from a uint8 NHWC batch to logits.

Workers and Ray actors build one of these from an :class:`~batchvision.runtimes.export.
Exported` (its files written once into the node's cache folder); nothing here exports.
Threads follow the torch path's split: the runtime gets the intra-op threads torch would
have, one inter-op thread, and its threads sleep between batches (ONNX Runtime spins by
default, which would take the cores the decode threads run on between model batches).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from batchvision.runtimes import require
from batchvision.runtimes.export import INPUT, OUTPUT, Exported

#: OpenVINO's inference precision hint for each batchvision precision. int8 models run their
#: quantized layers in int8 and the rest in fp32, the precision their agreement was measured
#: against.
OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


class Session(Protocol):
    """A loaded model: uint8 ``(N, H, W, 3)`` in, fp32 logits out."""

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class OnnxRuntimeSession:
    """An ONNX Runtime CPU session over ``model.onnx``."""

    def __init__(self, path: str, threads: int) -> None:
        ort = require("onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(images)})[0]
        return np.asarray(out, dtype=np.float32)


class OpenVinoSession:
    """An OpenVINO CPU model compiled from ``model.onnx`` or a quantized ``model.xml``."""

    def __init__(self, path: str, threads: int, precision: str) -> None:
        ov = require("openvino")
        core = ov.Core()
        model = core.read_model(path)
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": max(1, threads),
            "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
        }
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(images)})
        # The request reuses its output buffer: copy before the next batch overwrites it.
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)


def load(exported: Exported, threads: int) -> Session:
    """``exported`` loaded for its runtime, on ``threads`` intra-op threads."""
    folder = exported.materialize()
    if exported.runtime == "onnxruntime":
        return OnnxRuntimeSession(str(folder / "model.onnx"), threads)
    if exported.runtime == "openvino":
        name = "model.xml" if "model.xml" in exported.files else "model.onnx"
        return OpenVinoSession(str(folder / name), threads, exported.precision)
    raise ValueError(f"no session for runtime {exported.runtime!r}")
