"""Export a resolved model to ONNX once, on the driver, cached on disk.

The exported graph takes what the torch path's model takes before its own device work: a
uint8 ``(N, H, W, 3)`` batch. The permute, the float conversion and the normalisation
(``x * scale + shift``, one multiply-add) are inside the graph, followed by the model with
its BatchNorm layers folded (``--no-fuse`` exports them as they are) and the first output
as fp32 logits: the runtime sees a quarter of float32's bytes, and its results are the torch
path's within float rounding. ONNX Runtime runs the ONNX file; OpenVINO reads the same file
(or, after ``--precision int8``, its own quantized IR).

The cache key hashes the model spec, the weights' bytes, the options that change the graph,
and torch's version (both runtimes read the one fp32 export; an int8 model's key adds its
calibration images and the quantizer's versions), so a second run with the same model and
options loads the files instead of exporting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from batchvision.errors import ConfigError
from batchvision.models.spec import ModelSpec

logger = logging.getLogger(__name__)

#: ONNX opset of the exports (ONNX Runtime and OpenVINO both read it).
OPSET = 17
#: Bumped when the exported graph changes for the same inputs (invalidates the cache).
EXPORT_VERSION = 1
#: The exported graph's input and output names.
INPUT, OUTPUT = "image", "logits"
#: Environment variable naming the cache folder (default ``$XDG_CACHE_HOME/batchvision``).
CACHE_ENV = "BATCHVISION_CACHE_DIR"


def cache_root() -> Path:
    """Where exports are kept: ``$BATCHVISION_CACHE_DIR``, else ``~/.cache/batchvision``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "exports"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "batchvision" / "exports"


@dataclass(frozen=True)
class Exported:
    """A model exported for a runtime: what workers load instead of building the model.

    Attributes:
        runtime: ``onnxruntime`` or ``openvino``.
        precision: what the runtime runs: ``fp32``, ``bf16`` (OpenVINO's inference
            precision on CPUs with native bf16) or ``int8``.
        key: the cache key (a hash of everything that made the files).
        files: file name -> bytes (``model.onnx``; or ``model.xml`` + ``model.bin``).
        dynamic_size: whether height and width are free (uncropped segmentation inputs).
        record: what the run's manifest records of the export (and of quantization).
    """

    runtime: str
    precision: str
    key: str
    files: dict[str, bytes] = field(repr=False)
    dynamic_size: bool = False
    record: dict[str, Any] = field(default_factory=dict)

    def materialize(self) -> Path:
        """A folder holding the files: this node's cache, written once, atomically; or a
        temporary folder where the cache cannot be written (a read-only home, say)."""
        folder = cache_root() / self.key
        if (folder / "complete").exists():
            return folder
        try:
            _write_folder(folder, self.files)
            return folder
        except OSError as e:
            tmp = Path(tempfile.mkdtemp(prefix=f"batchvision-{self.key}-"))
            logger.warning("export cache %s not writable (%s): using %s", folder, e, tmp)
            for name, data in self.files.items():
                (tmp / name).write_bytes(data)
            return tmp


def _write_folder(folder: Path, files: dict[str, bytes]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / "complete").write_text("ok\n", encoding="utf-8")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process wrote it first (a non-empty folder is there)
            if not (folder / "complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_cached(key: str) -> dict[str, bytes] | None:
    """The files cached under ``key``, or ``None``."""
    folder = cache_root() / key
    if not (folder / "complete").exists():
        return None
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "complete"}


def write_cache(key: str, files: dict[str, bytes]) -> None:
    """Keep ``files`` under ``key``; a cache that cannot be written only costs a re-export."""
    try:
        _write_folder(cache_root() / key, files)
    except OSError as e:
        logger.warning("export cache %s not written (%s): the next run exports again", key, e)


def weights_digest(state_dict: Any) -> str:
    """A hash of the weights' names, types, shapes and bytes (``none``: the model's own)."""
    if state_dict is None:
        return "none"
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}={t!r};".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        # Flattened first: a 0-d tensor (BatchNorm's num_batches_tracked, int64) cannot be
        # viewed as bytes of another element size.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(spec: ModelSpec, weights: str, parts: dict[str, Any]) -> str:
    """The key of an export: the spec, the weights' digest and ``parts`` (options, versions)."""
    import torch

    head = spec.text_head  # zero-shot: the class embeddings are constants of the graph,
    # made from the prompts by these weights: the prompts stand for them in the key.
    spec = replace(spec, text_head=None)
    described = {
        "spec": {k: v for k, v in asdict(spec).items() if k != "labels"},
        "text_head": None if head is None else {"prompts": head.prompts, "scores": head.scores},
        "weights": weights,
        "torch": torch.__version__,
        "export": EXPORT_VERSION,
        "opset": OPSET,
        **parts,
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def input_size(spec: ModelSpec) -> tuple[int, int] | None:
    """``(h, w)`` of every model input (the crop), or ``None`` where sizes vary (resize
    mode ``shorter``: no crop)."""
    pre = spec.preprocess
    return None if pre.uncropped else tuple(pre.crop_size)  # type: ignore[return-value]


def uint8_model(model: Any, spec: ModelSpec) -> Any:
    """``model`` behind the uint8 NHWC input the torch path feeds it: permute, float, one
    multiply-add of normalisation, the first output as fp32."""
    import torch

    pre = spec.preprocess
    mean = torch.tensor(pre.mean, dtype=torch.float32)
    std = torch.tensor(pre.std, dtype=torch.float32)

    class Uint8Input(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("scale", (pre.rescale_factor / std).view(1, 3, 1, 1))
            self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale, shift = self.get_buffer("scale"), self.get_buffer("shift")
            x = torch.addcmul(shift, x.permute(0, 3, 1, 2).float(), scale)
            out = self.model(x)
            if not isinstance(out, torch.Tensor):  # e.g. GoogLeNet/Inception named tuples
                out = out[0]
            return out.float()

    return Uint8Input().eval()


def export_onnx(spec: ModelSpec, state_dict: Any, fuse: bool, runtime: str) -> bytes:
    """``spec``'s model (folded unless ``fuse`` is off) as ONNX bytes; a model that cannot
    export is one :class:`ConfigError` naming the cause and ``--runtime torch``."""
    import torch

    from batchvision.models.registry import build_model
    from batchvision.stages.fuse import fold_batch_norms

    model = build_model(spec, state_dict)
    if fuse:
        model, _ = fold_batch_norms(model)
    wrapped = uint8_model(model, spec)
    size = input_size(spec)
    h, w = size or (spec.preprocess.resize_size,) * 2
    sample = torch.zeros((2, h, w, 3), dtype=torch.uint8)
    axes: dict[str, dict[int, str]] = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}
    if size is None:
        axes[INPUT].update({1: "height", 2: "width"})
    with tempfile.TemporaryDirectory(prefix="batchvision-export-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation
                torch.onnx.export(
                    wrapped,
                    (sample,),
                    path,
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=[INPUT],
                    output_names=[OUTPUT],
                    dynamic_axes=axes,
                )
            data = Path(path).read_bytes()
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ConfigError(
                f"--runtime {runtime}: {spec.name} cannot be exported to ONNX "
                f"({type(e).__name__}: {first}); use --runtime torch"
            ) from e
        if any(p.name != "model.onnx" for p in Path(tmp).iterdir()):
            raise ConfigError(
                f"--runtime {runtime}: {spec.name} exports to an ONNX model over 2 GB "
                "(external data), which batchvision does not ship to workers; use "
                "--runtime torch"
            )
    return data


def exported_fp32(
    spec: ModelSpec, state_dict: Any, *, fuse: bool, runtime: str, weights: str
) -> tuple[str, bytes, dict[str, Any]]:
    """The fp32 ONNX export (from the cache where it is there): key, bytes, record."""
    key = cache_key(spec, weights, {"fuse": fuse, "kind": "onnx"})
    t0 = time.perf_counter()
    cached = read_cached(key)
    if cached is not None and "model.onnx" in cached:
        data = cached["model.onnx"]
        logger.info("%s: ONNX export read from the cache (%s)", spec.name, key)
    else:
        data = export_onnx(spec, state_dict, fuse, runtime)
        write_cache(key, {"model.onnx": data})
        logger.info("%s: exported to ONNX in %.1f s", spec.name, time.perf_counter() - t0)
    record = {
        "export_key": key,
        "export_cached": cached is not None,
        "export_seconds": round(time.perf_counter() - t0, 2),
        "export_bytes": len(data),
    }
    return key, data, record
