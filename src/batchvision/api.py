"""``batchvision.run``: the one entry point the CLI and Python users share."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from batchvision import tasks
from batchvision.config import RunConfig
from batchvision.engines.base import Engine, Job, ProgressCallback, get_engine
from batchvision.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_TOO_MANY_ERRORS,
    ConfigError,
    OutputWriteError,
)
from batchvision.interrupts import sigterm_interrupts
from batchvision.io import lance_parts, outdir, outlock, sinks, sources
from batchvision.models.registry import load_state_dict, resolve_model
from batchvision.models.spec import ModelSpec
from batchvision.runtimes.prepare import prepare as prepare_runtime
from batchvision.stages.device import native_bf16, resolve_device, uses_tf32

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
        BatchvisionError: (exit code 2) for anything the user must fix; OutputWriteError
            (exit code 4) when writing the output fails mid-run (e.g. a full disk).
    """
    start = time.perf_counter()
    with sigterm_interrupts() as sigterm:
        engine = get_engine(config.engine)  # e.g. a missing optional dependency: fail first
        if config.format == "lance":
            lance_parts.check_installed()
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
    sources.forget_shard_inputs()  # listed once per run, and afresh for each
    kinds = sources.check_inputs(config.inputs, storage, config.shards, config.manifest)
    known_total = _check_duplicates(config, kinds)
    spec = resolve_model(
        config.model,
        config.weights,
        labels_path=config.labels,
        overrides=config.preprocess,
        seed=config.seed,
        task=config.task,
    )
    tasks.check_options(config, spec)
    # A bad --device (e.g. cuda on a GPU-less machine) must fail before the output exists.
    device = resolve_device(config.device)
    if config.decode_device == "cuda" and device.type != "cuda":
        raise ConfigError(
            f"--decode-device cuda needs the model on CUDA, but --device {config.device!r} "
            f"runs it on {device}; choose cpu or auto"
        )
    state_dict = load_state_dict(spec)
    spec = tasks.get_task(spec.task).prepare(spec, config, state_dict)
    # --runtime onnxruntime/openvino: exported (and for int8 quantized and checked) here,
    # once; workers load the export in place of the weights.
    exported = prepare_runtime(config, spec, state_dict, device.type, native_bf16(device))

    engine.connect(config)  # an unreachable cluster fails here, the output untouched
    run_id = sinks.new_run_id()
    # One writer at a time: the lock comes before any look at the folder, and is held until
    # the manifest's last write (released on any exit, Ctrl-C included).
    with outlock.hold(config.output, run_id, storage) as lock:
        return _write_output(
            config, spec, exported or state_dict, engine, known_total, progress, start, run_id,
            lock, runtime=exported.record if exported else {"runtime": "torch"},
        )  # fmt: skip


def _write_output(
    config: RunConfig,
    spec: ModelSpec,
    state_dict: Any,
    engine: Engine,
    known_total: int | None,
    progress: ProgressCallback | None,
    start: float,
    run_id: str,
    lock: outlock.OutputLock,
    runtime: dict[str, Any],
) -> Summary:
    """Prepare the output folder, run the engine into it, record the run; under the lock.
    ``state_dict``: the weights, or the model exported for the run's runtime."""
    storage = config.storage
    reusing = config.resume or config.overwrite
    before = outdir.read_previous(config.output, storage) if reusing else None
    # Every refusal comes before any deletion, in either folder.
    _prepare_mask_dir(config, before, check_only=True)
    outdir.prepare_output_dir(
        config.output,
        resume=config.resume,
        overwrite=config.overwrite,
        mask_dir=config.mask_dir,
        storage_options=storage,
        previous=before,
    )
    _prepare_mask_dir(config, before, check_only=False)
    previous = before if config.resume else None
    manifest = outdir.new_manifest(
        config, spec, previous, run_id, tasks.get_task(spec.task).manifest_fields(spec, config)
    )
    manifest["runtime"] = runtime
    if previous is not None:
        outdir.check_resumable(previous, manifest, tasks.get_task(spec.task).resume_fields)
    earlier, committed = outdir.read_earlier(config, previous, by_unit=engine.by_unit)
    done = earlier.ids
    if done or committed:
        logger.info(
            "resuming: %d rows already written in %s",
            sum(earlier.statuses.values()),
            config.output,
        )
    manifest["status"] = "running"
    outdir.write_manifest(config.output, manifest, storage)

    listing = sources.ListingStats()
    skipped_done = [0]
    writer = sinks.PartWriter(
        config.output,
        config.format,
        part_rows=config.part_rows,
        flush_seconds=config.flush_seconds,
        run_id=run_id,
        storage_options=storage,
        mask_dir=config.mask_dir,
        guard=lock.check,
    )
    job = Job(
        config=config,
        spec=spec,
        state_dict=state_dict,
        items=(
            iter(())
            if engine.by_unit
            else _not_done(
                sources.iter_inputs(
                    config.inputs, listing, storage, config.shards, config.manifest
                ),
                done,
                skipped_done,
            )
        ),
        writer=writer,
        listing=listing,
        already_done=len(done),
        known_total=None if known_total is None else max(0, known_total - len(done)),
        progress=progress,
        committed=committed if committed is not None else earlier.committed,
        total_unknown=any(
            sources.shard_input(spec, storage, config.shards, config.manifest)
            for spec in config.inputs
        ),
    )
    try:
        result = engine.run(job)
    except OutputWriteError as e:  # e.g. the disk is full: say so in the manifest too
        outdir.record_failure(
            manifest, config, writer, earlier, str(e), storage, on_full=lock.free_reserve
        )
        raise
    result.tf32 = uses_tf32(result.device or "cpu", result.precision)
    summary = Summary(
        output=config.output,
        ok=result.ok,
        error=result.error,
        skipped=listing.skipped,
        already_done=result.already_done if engine.by_unit else skipped_done[0],
        wall_seconds=time.perf_counter() - start,
        stage_seconds=result.stage_seconds,
        error_codes=dict(result.error_codes.most_common()),
        interrupted=result.interrupted,
        max_error_rate=config.max_error_rate,
        device=result.device,
        precision=result.precision,
        skipped_examples=listing.skipped_examples,
    )
    if config.format == "lance":
        # Readers see the committed parts' fragments from here on (the earlier runs' too).
        lock.check()
        try:
            version = outdir.commit_lance(config.output, storage)
        except OutputWriteError as e:
            outdir.record_failure(
                manifest, config, writer, earlier, str(e), storage, on_full=lock.free_reserve
            )
            raise
        manifest["lance"] = {"dataset": lance_parts.DATASET_NAME, "version": version}
    outdir.record_run(manifest, config, summary, result, writer, earlier)
    outdir.write_manifest(config.output, manifest, storage, on_full=lock.free_reserve)
    return summary


def _prepare_mask_dir(
    config: RunConfig, manifest: dict[str, Any] | None, *, check_only: bool
) -> None:
    if config.mask_dir is not None:
        outdir.prepare_mask_dir(
            config.mask_dir,
            config.output,
            resume=config.resume,
            overwrite=config.overwrite,
            previous=(manifest or {}).get("mask_dir"),
            check_only=check_only,
        )


def embed_text(model: str, texts: list[str], weights: str = "DEFAULT") -> Any:
    """Texts embedded by an image-text model (CLIP, SigLIP), L2-normalised: ``(N, d)``
    float32 in the space of the image embeddings ``--task embed`` writes for that model,
    so a text query finds images by cosine similarity (see the README)."""
    spec = resolve_model(model, weights, task="embed")
    from batchvision.models.registry import encode_text

    embeddings, _ = encode_text(spec, load_state_dict(spec), list(texts))
    return embeddings


def _check_duplicates(config: RunConfig, kinds: list[str]) -> int | None:
    """Fail before any work when two inputs share an id; returns the count when listed."""
    if not sources.needs_duplicate_check(config.inputs, kinds):
        return None
    count, dups = sources.duplicate_ids(
        config.inputs,
        storage_options=config.storage,
        shard_opts=config.shards,
        manifest=config.manifest,
    )
    if dups:
        raise ConfigError(
            f"duplicate ids in this run: {', '.join(repr(d) for d in dups)}; every input must "
            "have a distinct id (path relative to its INPUT folder, or as listed) - pass "
            "their common parent folder or a manifest without repeats"
        )
    return None if "shards" in kinds else count  # a shard's samples are counted as read


def _not_done(
    items: Iterator[sources.InputItem], done: set[str], counter: list[int]
) -> Iterator[sources.InputItem]:
    for item in items:
        if item.id in done:
            counter[0] += 1
            continue
        yield item
