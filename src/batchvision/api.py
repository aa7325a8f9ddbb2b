"""``batchvision.run``: the one entry point the CLI and Python users share."""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from batchvision import __version__
from batchvision.config import PreprocessConfig, RunConfig
from batchvision.engines.base import (
    Engine,
    EngineResult,
    Job,
    ProgressCallback,
    get_engine,
)
from batchvision.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_TOO_MANY_ERRORS,
    ConfigError,
    OutputDirError,
)
from batchvision.interrupts import sigterm_interrupts
from batchvision.io import sinks, sources
from batchvision.models.registry import load_state_dict, resolve_model
from batchvision.models.spec import ModelSpec
from batchvision.stages.predict import check_top_k, resolve_device

logger = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run did. ``exit_code`` is what the CLI exits with."""

    output: str
    ok: int
    error: int
    skipped: int
    already_done: int
    wall_seconds: float
    stage_seconds: dict[str, float]
    error_codes: dict[str, int]
    interrupted: bool
    max_error_rate: float
    device: str = ""
    precision: str = ""
    skipped_examples: list[str] = field(default_factory=list)
    #: Interrupted by SIGTERM (exit 143) rather than Ctrl-C (exit 130).
    terminated: bool = False

    @property
    def processed(self) -> int:
        return self.ok + self.error

    @property
    def error_rate(self) -> float:
        return self.error / self.processed if self.processed else 0.0

    @property
    def images_per_second(self) -> float:
        return self.processed / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_TERMINATED if self.terminated else EXIT_INTERRUPTED
        if self.error_rate > self.max_error_rate:
            return EXIT_TOO_MANY_ERRORS
        return EXIT_OK


def run(config: RunConfig, progress: ProgressCallback | None = None) -> Summary:
    """Run ``config`` to completion and return its summary.

    Everything that can be checked is checked before the output folder is touched: inputs,
    duplicate ids, model name, weights (downloaded or read here, once), options, and that
    the engine's cluster can be reached.

    On the main thread, SIGTERM stops the run as Ctrl-C does (completed rows written, the
    run marked interrupted, ``exit_code`` 143) while it runs; the process's own SIGTERM
    handler is put back afterwards.

    Raises:
        BatchvisionError: (exit code 2) for anything the user must fix.
    """
    start = time.perf_counter()
    with sigterm_interrupts() as sigterm:
        engine = get_engine(config.engine)  # e.g. a missing optional dependency: fail first
        try:
            summary = _run(config, progress, engine, start)
        finally:
            engine.close()
    summary.terminated = sigterm.received
    return summary


def _run(
    config: RunConfig, progress: ProgressCallback | None, engine: Engine, start: float
) -> Summary:
    storage = config.storage
    kinds = sources.check_inputs(config.inputs, storage)
    known_total = _check_duplicates(config, kinds)
    spec = resolve_model(
        config.model,
        config.weights,
        labels_path=config.labels,
        overrides=config.preprocess,
        seed=config.seed,
        task=config.task,
    )
    _check_task_options(config, spec)
    # A bad --device (e.g. cuda on a GPU-less machine) must fail before the output exists.
    device = resolve_device(config.device)
    if config.decode_device == "cuda" and device.type != "cuda":
        raise ConfigError(
            f"--decode-device cuda needs the model on CUDA, but --device {config.device!r} "
            f"runs it on {device}; choose cpu or auto"
        )
    state_dict = load_state_dict(spec)

    reusing = config.resume or config.overwrite
    before = sinks.read_manifest(config.output, storage) if reusing else None
    # Every refusal comes before any deletion, in either folder.
    _prepare_mask_dir(config, before, check_only=True)
    engine.connect(config)  # an unreachable cluster fails here, the output untouched
    sinks.prepare_output_dir(
        config.output,
        resume=config.resume,
        overwrite=config.overwrite,
        mask_dir=config.mask_dir,
        storage_options=storage,
    )
    _prepare_mask_dir(config, before, check_only=False)
    previous = before if config.resume else None
    manifest = _manifest(config, spec, previous)
    if previous is not None:
        _check_resumable(previous, manifest)
    earlier = sinks.read_written(config.output, storage) if config.resume else sinks.Written()
    done = earlier.ids
    if done:
        logger.info("resuming: %d ids already written in %s", len(done), config.output)
    manifest["status"] = "running"
    sinks.write_manifest(config.output, manifest, storage)

    listing = sources.ListingStats()
    skipped_done = [0]
    writer = sinks.PartWriter(
        config.output,
        config.format,
        part_rows=config.part_rows,
        flush_seconds=config.flush_seconds,
        storage_options=storage,
        mask_dir=config.mask_dir,
    )
    job = Job(
        config=config,
        spec=spec,
        state_dict=state_dict,
        items=_not_done(sources.iter_inputs(config.inputs, listing, storage), done, skipped_done),
        writer=writer,
        listing=listing,
        already_done=len(done),
        known_total=None if known_total is None else max(0, known_total - len(done)),
        progress=progress,
    )
    result = engine.run(job)
    summary = Summary(
        output=config.output,
        ok=result.ok,
        error=result.error,
        skipped=listing.skipped,
        already_done=skipped_done[0],
        wall_seconds=time.perf_counter() - start,
        stage_seconds=result.stage_seconds,
        error_codes=dict(result.error_codes.most_common()),
        interrupted=result.interrupted,
        max_error_rate=config.max_error_rate,
        device=result.device,
        precision=result.precision,
        skipped_examples=listing.skipped_examples,
    )
    _finish_manifest(manifest, config, summary, result, writer, earlier)
    sinks.write_manifest(config.output, manifest, storage)
    return summary


def _prepare_mask_dir(
    config: RunConfig, manifest: dict[str, Any] | None, *, check_only: bool
) -> None:
    if config.mask_dir is not None:
        sinks.prepare_mask_dir(
            config.mask_dir,
            config.output,
            resume=config.resume,
            overwrite=config.overwrite,
            previous=(manifest or {}).get("mask_dir"),
            check_only=check_only,
        )


def _check_task_options(config: RunConfig, spec: ModelSpec) -> None:
    """Options that only make sense for one task must not be given for another."""
    if spec.task == "classify":
        check_top_k(config.top_k, spec)
    if config.normalize and spec.task != "embed":
        raise ConfigError(f"--normalize applies to --task embed only; this run is {spec.task}")
    if config.mask_dir is not None and spec.task != "segment":
        raise ConfigError(f"--mask-dir applies to --task segment only; this run is {spec.task}")


def _check_duplicates(config: RunConfig, kinds: list[str]) -> int | None:
    """Fail before any work when two inputs share an id; returns the count when listed."""
    if not sources.needs_duplicate_check(config.inputs, kinds):
        return None
    count, dups = sources.duplicate_ids(config.inputs, storage_options=config.storage)
    if dups:
        raise ConfigError(
            f"duplicate ids in this run: {', '.join(repr(d) for d in dups)}; every input must "
            "have a distinct id (path relative to its INPUT folder, or as listed) - pass "
            "their common parent folder or a manifest without repeats"
        )
    return count


def _not_done(
    items: Iterator[sources.InputItem], done: set[str], counter: list[int]
) -> Iterator[sources.InputItem]:
    for item in items:
        if item.id in done:
            counter[0] += 1
            continue
        yield item


def _versions() -> dict[str, str]:
    import numpy
    import PIL
    import pyarrow
    import torchvision

    return {
        "batchvision": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
    }


# What must match for --resume to add rows to an earlier run's output.
_RESUME_KEYS = (
    "model",
    "task",
    "weights",
    "preprocess",
    "top_k",
    "format",
    "labels_sha",
    "normalize",
    "mask_dir",
)


def _manifest(
    config: RunConfig, spec: ModelSpec, previous: dict[str, Any] | None
) -> dict[str, Any]:
    import hashlib

    labels_sha = hashlib.sha256("\n".join(spec.labels).encode()).hexdigest()[:16]
    manifest: dict[str, Any] = dict(previous or {})
    manifest.update(
        {
            "model": spec.name,
            "task": spec.task,
            "weights": spec.weights,
            "weights_kind": spec.weights_kind,
            "num_classes": spec.num_classes,
            "labels_sha": labels_sha,
            "preprocess": asdict(spec.preprocess),
            "top_k": config.top_k,
            "format": config.format,
            "normalize": config.normalize,
            "mask_dir": None if config.mask_dir is None else str(Path(config.mask_dir).resolve()),
            "inputs": list(config.inputs),
            # Where s3:// paths were read and written; credentials are never recorded.
            "s3_endpoint": config.s3_endpoint,
            "versions": _versions(),
        }
    )
    if spec.task == "embed":
        manifest["embedding_dim"] = spec.embedding_dim
    if spec.task == "segment":
        manifest["labels"] = list(spec.labels)
    manifest.setdefault("runs", [])
    return manifest


_LATER_PREPROCESS_KEYS = ("resize_mode", "resize_hw", "crop_offset", "rescale_factor")


def _check_resumable(previous: dict[str, Any], current: dict[str, Any]) -> None:
    import json

    for key in _RESUME_KEYS:
        # Compare as stored: the manifest's JSON turns tuples (crop_size, mean, std) into lists.
        now = json.loads(json.dumps(current[key], default=str))
        before = previous.get(key)
        if key == "preprocess" and isinstance(before, dict):
            # Manifests from before resize modes existed used what are now the defaults.
            defaults = json.loads(json.dumps(asdict(PreprocessConfig())))
            before = {**{k: defaults[k] for k in _LATER_PREPROCESS_KEYS}, **before}
        if key in previous and before != now:
            raise OutputDirError(
                f"cannot --resume: {key} differs from the earlier run "
                f"({previous[key]!r} there, {now!r} now); use the same settings, "
                "or --overwrite"
            )


def _finish_manifest(
    manifest: dict[str, Any],
    config: RunConfig,
    summary: Summary,
    result: EngineResult,
    writer: sinks.PartWriter,
    earlier: sinks.Written,
) -> None:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest["runs"].append(
        {
            "finished_at": now,
            "status": "interrupted" if summary.interrupted else "complete",
            "config": asdict(config),
            "device": result.device,
            "precision": result.precision,
            "workers": result.workers,
            "batch_size": result.batch_size,
            "batch_size_search": result.batch_search,
            "decode_device": result.decode_device,
            "decode_threads": result.decode_threads,
            "ok": summary.ok,
            "error": summary.error,
            "skipped": summary.skipped,
            "already_done": summary.already_done,
            "rows_written": writer.rows_written,
            "parts_written": writer.parts_written,
            "wall_seconds": round(summary.wall_seconds, 3),
            "images_per_second": round(summary.images_per_second, 2),
            "stage_seconds": {k: round(v, 3) for k, v in summary.stage_seconds.items()},
            "error_codes": summary.error_codes,
        }
    )
    runs = manifest["runs"]
    manifest["status"] = runs[-1]["status"]
    # From the part files, not from earlier runs' records: a killed run records nothing.
    manifest["counts"] = {
        "ok": earlier.statuses["ok"] + summary.ok,
        "error": earlier.statuses["error"] + summary.error,
        "rows_written": sum(earlier.statuses.values()) + writer.rows_written,
        "skipped": summary.skipped,
    }
