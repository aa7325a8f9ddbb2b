"""On the driver, before the run: the model exported for ``--runtime``, quantized for
``--precision int8`` and checked against ``--min-agreement``.

int8 calibrates on the input's first ``--calibration-images`` decodable images and measures
agreement with the fp32 export on the next ``--agreement-images``, held apart; on an input
smaller than both, the last part of what is there (at most half) is held apart. Agreement
below ``--min-agreement`` refuses the run (exit code 2) before the output folder is
touched. The calibration set, the held-apart set and the figure go into ``_manifest.json``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from batchvision.config import INT8_NEEDS_RUNTIME, RunConfig
from batchvision.errors import ConfigError
from batchvision.models.spec import ModelSpec
from batchvision.runtimes import resolve_runtime
from batchvision.runtimes.export import (
    Exported,
    cache_key,
    exported_fp32,
    input_size,
    read_cached,
    weights_digest,
    write_cache,
)

logger = logging.getLogger(__name__)

#: Images decoded per read while collecting calibration images.
READ_BATCH = 32
#: Inputs looked at, per image wanted, before giving up on finding decodable ones.
SCAN_FACTOR = 4


def resolve_precision(runtime: str, precision: str, native_bf16: bool) -> str:
    """What ``runtime`` runs for ``--precision``: ``auto`` is bf16 on OpenVINO where the CPU
    has native bf16, else fp32; ONNX Runtime runs fp32 or int8 on the CPU."""
    if runtime == "torch":
        if precision == "int8":  # --runtime auto found no runtime installed
            raise ConfigError(INT8_NEEDS_RUNTIME)
        return precision
    if precision == "auto":
        return "bf16" if runtime == "openvino" and native_bf16 else "fp32"
    if precision == "fp16" or (precision == "bf16" and runtime == "onnxruntime"):
        valid = "auto, fp32, bf16 or int8" if runtime == "openvino" else "auto, fp32 or int8"
        raise ConfigError(f"--precision {precision} is not valid with --runtime {runtime}: "
                          f"choose {valid}")  # fmt: skip
    return precision


def prepare(
    config: RunConfig, spec: ModelSpec, state_dict: Any, device_type: str, native_bf16: bool
) -> Exported | None:
    """The model as the run's runtime loads it, or ``None`` for ``--runtime torch``."""
    if spec.task == "detect" and config.runtime == "auto":
        return None  # boxes are not one tensor: the exports do not cover detectors
    runtime = resolve_runtime(config.runtime, device_type)
    precision = resolve_precision(runtime, config.precision, native_bf16)
    if runtime == "torch":
        return None
    if config.compile:  # --runtime auto chose a runtime that torch.compile cannot apply to
        raise ConfigError(f"--compile applies to --runtime torch, and {runtime} runs here")
    if precision == "int8" and (spec.task == "segment" or input_size(spec) is None):
        raise ConfigError(
            "--precision int8 covers --task classify and embed (inputs of one size); run "
            f"--task {spec.task} at fp32 or bf16"
        )
    weights = weights_digest(state_dict) if state_dict is not None else spec.weights
    key, onnx, record = exported_fp32(
        spec, state_dict, fuse=config.fuse, runtime=runtime, weights=weights
    )
    record = {"runtime": runtime, "precision": precision, **record}
    dynamic = input_size(spec) is None
    fp32 = Exported(runtime, "fp32" if precision == "int8" else precision, key,
                    {"model.onnx": onnx}, dynamic, record)  # fmt: skip
    if precision != "int8":
        check_runs(fp32, spec)
        return fp32
    return quantized(config, spec, fp32, onnx)


def check_runs(exported: Exported, spec: ModelSpec) -> Any:
    """Load ``exported`` and run it on one image here, before any worker does: a model the
    runtime cannot load or run is one line naming the cause (never a traceback per worker).
    Returns the loaded session."""
    from batchvision.runtimes import sessions

    h, w = input_size(spec) or (spec.preprocess.resize_size,) * 2
    try:
        session = sessions.load(exported, _threads())
        out = session(np.zeros((1, h, w, 3), np.uint8))
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(
            f"--runtime {exported.runtime} cannot run {spec.name} at {exported.precision} "
            f"({type(e).__name__}: {_first_line(e)}); use --runtime torch"
        ) from e
    if not np.isfinite(out).all():
        raise ConfigError(
            f"--runtime {exported.runtime}: {spec.name} gives non-finite outputs at "
            f"{exported.precision}; use --runtime torch"
        )
    return session


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def quantized(config: RunConfig, spec: ModelSpec, fp32: Exported, onnx: bytes) -> Exported:
    """``fp32`` quantized on the input's first images, or a refusal below the agreement."""
    from batchvision.runtimes import quantize

    t0 = time.perf_counter()
    ids, images = first_images(config, spec, config.calibration_images + config.agreement_images)
    if len(images) < 2:
        raise ConfigError(
            f"--precision int8 calibrates on the input's images, but only {len(images)} "
            "could be decoded; use fp32"
        )
    held = min(config.agreement_images, len(images) // 2)
    calib_ids, held_ids = ids[: len(ids) - held], ids[len(ids) - held :]
    calib, held_images = images[: len(ids) - held], images[len(ids) - held :]
    digest = _ids_digest(calib_ids)
    quantizer = quantize.quantize_onnxruntime
    if fp32.runtime == "openvino":
        quantizer = quantize.quantize_openvino
    key = cache_key(spec, fp32.key, {"int8": fp32.runtime, "calibration": digest,
                                     "versions": _runtime_versions(fp32.runtime)})  # fmt: skip
    files = read_cached(key)
    cached = files is not None
    if files is None:
        logger.info("%s: quantizing to int8 on %d images", spec.name, len(calib))
        try:
            files = quantizer(onnx, calib)
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(
                f"--precision int8: {fp32.runtime} could not quantize {spec.name} "
                f"({type(e).__name__}: {_first_line(e)}); run at fp32"
            ) from e
        write_cache(key, files)
    int8 = Exported(fp32.runtime, "int8", key, files, fp32.dynamic_size, {})
    int8_session = check_runs(int8, spec)
    # The figure for this int8 model on these held-apart images, measured once: a second
    # run over the same input (or a resumed one) does not run both models on them again.
    figure_key = cache_key(spec, key, {"agreement": _ids_digest(held_ids)})
    known = read_cached(figure_key)
    if known is not None and "agreement.json" in known:
        figure = float(json.loads(known["agreement.json"])["value"])
    else:
        reference = quantize.outputs(check_runs(fp32, spec), held_images)
        figure = quantize.agreement(
            spec.task, reference, quantize.outputs(int8_session, held_images)
        )
        write_cache(figure_key, {"agreement.json": json.dumps({"value": figure}).encode()})
    measure = "mean cosine" if spec.task == "embed" else "top-1 agreement"
    logger.info("int8 %s with fp32 on %d held-apart images: %.4f", measure, held, figure)
    if figure < config.min_agreement:
        raise ConfigError(
            f"--precision int8: {measure} with fp32 is {figure:.4f} on {held} held-apart "
            f"images, below --min-agreement {config.min_agreement}; run at fp32, calibrate "
            "on more images (--calibration-images), or lower --min-agreement"
        )
    record = {
        **fp32.record,
        "precision": "int8",
        "int8_key": key,
        "int8_cached": cached,
        "calibration": {
            "images": len(calib_ids),
            "first_id": calib_ids[0] if calib_ids else None,
            "last_id": calib_ids[-1] if calib_ids else None,
            "ids_digest": digest,
        },
        "agreement": {
            "measure": measure,
            "value": round(figure, 6),
            "images": held,
            "first_id": held_ids[0] if held_ids else None,
            "min_agreement": config.min_agreement,
            "cached": known is not None,
        },
        "int8_seconds": round(time.perf_counter() - t0, 2),
    }
    return Exported(fp32.runtime, "int8", key, files, fp32.dynamic_size, record)


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _runtime_versions(runtime: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("onnxruntime", "onnx") if runtime == "onnxruntime" else ("openvino", "nncf"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "none"
    return out


def _ids_digest(ids: list[str]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for i in ids:
        h.update(i.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def first_images(config: RunConfig, spec: ModelSpec, n: int) -> tuple[list[str], np.ndarray]:
    """The ids and decoded model inputs of the input's first ``n`` decodable images, in
    input order (files, manifests and shards), looking at no more than ``SCAN_FACTOR * n``
    inputs."""
    from batchvision.stages.preprocess import decode_batch

    ids: list[str] = []
    arrays: list[np.ndarray] = []
    read = _read_batches(config)
    for batch in itertools.islice(read, SCAN_FACTOR * max(1, n) // READ_BATCH + 1):
        decoded = decode_batch(batch, spec.preprocess, max_pixels=config.max_pixels,
                               max_input_pixels=config.max_input_pixels)  # fmt: skip
        for i in np.flatnonzero(decoded["status"] == "ok"):
            ids.append(str(decoded["id"][i]))
            arrays.append(decoded["image"][i])
            if len(ids) >= n:
                return ids, np.stack(arrays)
    if not arrays:
        return [], np.zeros((0, 1, 1, 3), np.uint8)
    return ids, np.stack(arrays)


def _read_batches(config: RunConfig) -> Iterator[dict[str, Any]]:
    """Read batches of the inputs in order: listed files, then each shard's samples."""
    from batchvision.io import sources, units

    storage = config.storage
    for spec in config.inputs:
        if sources.shard_input(spec, storage, config.shards, config.manifest) is None:
            items = sources.iter_inputs([spec], None, storage, config.shards, config.manifest)
            while chunk := list(itertools.islice(items, READ_BATCH)):
                batch = sources.items_to_batch(chunk)
                yield sources.read_batch(batch, storage, config.max_file_bytes)
            continue
        for unit in units.plan_shard_units([spec], storage, config.shards, config.manifest):
            for batch in units.read_batches(
                unit, config.shards, storage, config.max_file_bytes, READ_BATCH
            ):
                batch.pop("_keep", None)  # kept columns are the output's, not the model's
                yield batch
