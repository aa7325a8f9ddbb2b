"""Model runtimes other than PyTorch eager: ONNX Runtime and OpenVINO, on the CPU.

The model is exported once per run, on the driver (:mod:`batchvision.runtimes.export`),
from the spec and weights batchvision already resolved, with the uint8-to-normalised input
inside the exported graph; workers and Ray actors load the exported file
(:mod:`batchvision.runtimes.sessions`), never export. ``--precision int8`` quantizes the
export after calibrating it on the run's first images and checks its agreement with fp32
(:mod:`batchvision.runtimes.quantize`).

Both runtimes are optional extras: choosing one that is not installed fails with its
install command (exit code 2), never a fallback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from batchvision.config import RUNTIMES
from batchvision.errors import ConfigError

#: What ``--runtime auto`` tries on the CPU, fastest first (docs/benchmarks.md, issue 15).
AUTO_ORDER: tuple[str, ...] = ("openvino", "onnxruntime")
#: Runtime -> (modules it needs: the runtime's, and onnx for torch's exporter; the extra
#: that installs them).
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "onnxruntime": (("onnxruntime", "onnx"), "onnx"),
    "openvino": (("openvino", "onnx"), "openvino"),
}


def install_hint(runtime: str) -> str:
    """The pip command that installs ``runtime``."""
    return f"pip install 'batchvision[{EXTRAS[runtime][1]}]'"


def require(runtime: str) -> ModuleType:
    """``runtime``'s module, or a :class:`ConfigError` with its install command."""
    modules, _ = EXTRAS[runtime]
    loaded = []
    for module in modules:
        try:
            loaded.append(importlib.import_module(module))
        except ImportError as e:
            raise ConfigError(
                f"--runtime {runtime} needs the {module} package ({e}); install it with "
                f"{install_hint(runtime)}, or use --runtime torch"
            ) from None
    return loaded[0]


def installed(runtime: str) -> bool:
    """Whether ``runtime`` can be imported here."""
    try:
        require(runtime)
    except ConfigError:
        return False
    return True


def resolve_runtime(runtime: str, device_type: str) -> str:
    """``auto`` is the fastest installed runtime for the device (torch on CUDA); a named
    runtime must be installed and, other than torch, run on the CPU."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime!r} is not valid; choose {', '.join(RUNTIMES)}")
    if runtime == "auto":
        if device_type != "cpu":
            return "torch"
        return next((r for r in AUTO_ORDER if installed(r)), "torch")
    if runtime != "torch":
        if device_type != "cpu":
            raise ConfigError(
                f"--runtime {runtime} runs the model on the CPU, but the device is "
                f"{device_type}; use --runtime torch there (or --device cpu)"
            )
        require(runtime)
    return runtime
