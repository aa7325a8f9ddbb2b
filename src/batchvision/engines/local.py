"""The local engine: read (and decode) in worker processes, infer in this one.

Reading runs in a torch ``DataLoader``'s worker processes. The "sampler" is the lazy
stream of input chunks, so the listing feeds workers while it is still walking, and the
loader's bounded prefetch keeps memory flat for any number of images. Where images are
decoded depends on the device (``--decode-device``, ``--decode-threads``):

- model on the CPU (default): here, on one thread per core, between model batches, so
  inference never shares the cores with decoders;
- model on CUDA (default): in the workers, overlapping the GPU's work; decoded batches
  come back through shared (pinned) memory and the next one is copied to the GPU while
  the model runs on this one;
- ``--decode-device cuda``: here, batched on the GPU, with a per-image CPU fallback.

:class:`DecodePlan` is that choice, made once per run.

Shards (WebDataset, Parquet image bytes) are read here, on a thread, a batch of samples at a
time, and their bytes go to the workers to decode; each shard is a unit, committed whole as
one part once its last batch is through (:class:`UnitParts`), so ``--resume`` skips or
redoes whole shards. Loose files keep streaming into parts of ``--part-rows``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import queue
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from batchvision.config import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_INPUT_PIXELS,
    DEFAULT_MAX_PIXELS,
    DecodeDevice,
    PreprocessConfig,
    RunConfig,
    usable_cores,
)
from batchvision.engines.base import Engine, EngineResult, Job, RunStats
from batchvision.engines.decode_ahead import decode_ahead
from batchvision.engines.finisher import Finisher
from batchvision.engines.prefetch import prefetch_to_device
from batchvision.errors import ConfigError, StorageAuthError
from batchvision.interrupts import defer_interrupts
from batchvision.io import shards, units
from batchvision.io.sinks import PartWriter
from batchvision.io.sources import InputItem, items_to_batch, read_batch
from batchvision.io.storage import StorageOptions
from batchvision.memory import HeapTrimmer
from batchvision.orphans import die_with_parent
from batchvision.stages.device_decode import decode_batch_device
from batchvision.stages.device_route import CPU, DEVICE, route_batch
from batchvision.stages.predict import PredictOptions, Predictor
from batchvision.stages.preprocess import decode_batch
from batchvision.stages.readback import Readback
from batchvision.tasks import get_task

logger = logging.getLogger(__name__)

# Batches each worker may hold ready ahead of inference; bounds memory.
PREFETCH_PER_WORKER = 2
# Where worker processes share tensors with this one (torch's shared-memory tensors).
SHM = "/dev/shm"
# Batches inferred but not yet written that the model's thread may run ahead by.
FINISH_DEPTH = 2


class DecodeDataset(Dataset[dict[str, Any]]):
    """Maps a chunk of inputs to its decoded batch: read, then decode and preprocess.

    With ``decode=False`` it only reads (the bytes are decoded in the main process); with
    ``device_route`` too, it leaves to the device decoder only the JPEGs it takes, with
    their headers, and decodes the others here (``route_batch``), so the main process
    parses and decodes nothing on the CPU (``decode_batch_device`` takes both). Files over
    ``max_file_bytes``, images over ``max_pixels`` or whose resize exceeds
    ``max_input_pixels`` are error rows.
    """

    def __init__(
        self,
        preprocess: PreprocessConfig,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft: bool = False,
        storage_options: StorageOptions | None = None,
        decode: bool = True,
        *,
        max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        device_route: bool = False,
    ) -> None:
        self.preprocess = preprocess
        self.device_route = device_route and not decode
        self.max_pixels = max_pixels
        self.max_input_pixels = max_input_pixels
        self.max_file_bytes = max_file_bytes
        self.draft = draft
        self.storage_options = storage_options or StorageOptions()
        self.decode = decode
        self.trim = HeapTrimmer()  # one per worker process (the dataset is copied into each)

    def __getitem__(self, chunk: list[InputItem] | ShardChunk) -> dict[str, Any]:
        if isinstance(chunk, ShardChunk):  # samples read from a shard: bytes already here
            batch = shards.samples_batch(chunk.samples, chunk.keep_columns)
            tag = {"_unit": (chunk.unit, chunk.seq, chunk.last), "_keep": batch.pop("_keep")}
            return {**self._decoded(batch, 0.0), **tag}
        self.trim(len(chunk))
        t0 = time.perf_counter()
        try:
            batch = read_batch(items_to_batch(chunk), self.storage_options, self.max_file_bytes)
        except StorageAuthError as e:
            # Raised in a worker, the DataLoader would re-raise it with the worker's
            # traceback as its message; handed back, the main process raises it as it is.
            return {"_fatal": e}
        return self._decoded(batch, time.perf_counter() - t0)

    def _decoded(self, batch: dict[str, Any], read_seconds: float) -> dict[str, Any]:
        t1 = time.perf_counter()
        if self.device_route:  # for the device decoder: route, decode what it cannot take
            routed = route_batch(
                batch,
                self.preprocess,
                max_pixels=self.max_pixels,
                draft=self.draft,
                max_input_pixels=self.max_input_pixels,
            )
            # Shared memory back to the main process (and pinned there, for nvJPEG's copy).
            routed[DEVICE]["data"] = torch.from_numpy(routed[DEVICE]["data"])
            routed[CPU]["image"] = torch.from_numpy(routed[CPU]["image"])
            seconds = {"read": read_seconds, "decode": time.perf_counter() - t1}
            return {**routed, "_seconds": seconds}
        if not self.decode:
            return {**batch, "_seconds": {"read": read_seconds}}
        out: dict[str, Any] = decode_batch(
            batch,
            self.preprocess,
            max_pixels=self.max_pixels,
            draft=self.draft,
            max_input_pixels=self.max_input_pixels,
        )
        t2 = time.perf_counter()
        out["image"] = torch.from_numpy(out["image"])  # shared memory back to the main process
        out["_seconds"] = {"read": read_seconds, "decode": t2 - t1}
        return out

    def __len__(self) -> int:  # the stream of chunks has no length known ahead
        raise TypeError("DecodeDataset is indexed by input chunks and has no length")


def chunked(items: Iterable[InputItem], size: int) -> Iterator[list[InputItem]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


@dataclass(frozen=True)
class ShardChunk:
    """A batch of samples read from a shard (unit ``unit``): its ``seq``-th, ``last`` or not."""

    unit: units.Unit
    seq: int
    last: bool
    samples: list[shards.Sample]
    keep_columns: tuple[str, ...] = ()


def shard_chunks(job: Job, size: int) -> Iterator[ShardChunk]:
    """The run's shards not committed yet, streamed ``size`` samples at a time (the
    last chunk of a shard is marked, so its unit is committed whole)."""
    cfg = job.config
    committed = job.committed or units.Committed()
    planned = units.plan_shard_units(cfg.inputs, cfg.storage, cfg.shards, cfg.manifest)
    for unit in planned:
        if committed.check(unit):
            continue
        unit = dataclasses.replace(unit, replaces=committed.stale(unit))
        samples = units.unit_samples(unit, cfg.shards, cfg.storage, cfg.max_file_bytes)
        chunk = list(itertools.islice(samples, size))
        seq = 0
        while chunk:
            after = list(itertools.islice(samples, size))
            yield ShardChunk(unit, seq, not after, chunk, cfg.keep_columns)
            chunk, seq = after, seq + 1


def prefetched(it: Iterator[Any], depth: int = 4) -> Iterator[Any]:
    """``it``'s items produced on a thread, ``depth`` ahead: a shard read from S3 must not
    stall the model's loop. Its exceptions are raised here."""
    q: queue.Queue[tuple[bool, Any]] = queue.Queue(depth)
    done = threading.Event()

    def run() -> None:
        try:
            for item in it:
                while not done.is_set():
                    try:
                        q.put((True, item), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if done.is_set():
                    return
            q.put((False, None))
        except BaseException as e:  # handed to the consumer
            q.put((False, e))

    thread = threading.Thread(target=run, name="shard-reader", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = q.get()
            if not ok:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        done.set()


class UnitParts:
    """The local engine's shard units in flight: their tables until the last one arrives,
    then one part each (``PartWriter.commit_unit``)."""

    def __init__(self, writer: PartWriter, types: Callable[[units.Unit], dict[str, Any]]):
        self.writer = writer
        self.types = types
        self.open: dict[str, tuple[dict[int, pa.Table], int | None]] = {}
        self._types: dict[str, dict[str, Any]] = {}  # per open unit: read once

    def add(self, tag: tuple[units.Unit, int, bool], table: pa.Table, kept: dict) -> None:
        unit, seq, last = tag
        tables, final = self.open.get(unit.key, ({}, None))
        if unit.key not in self._types:
            self._types[unit.key] = self.types(unit)
        tables[seq] = shards.add_kept(table, kept, self._types[unit.key])
        final = seq if last else final
        if final is not None and len(tables) == final + 1:
            self.open.pop(unit.key, None)
            self._types.pop(unit.key, None)
            self.writer.commit_unit(unit, pa.concat_tables(tables[i] for i in range(final + 1)))
        else:
            self.open[unit.key] = (tables, final)


def _tags_kept(
    decode: Callable[[dict[str, Any]], dict[str, Any]],
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``decode`` for a read batch that keeps the engine's own keys (a worker's fatal
    error, stage times, a shard batch's unit and kept columns) and adds its own time."""

    def run(batch: dict[str, Any]) -> dict[str, Any]:
        if "_fatal" in batch:
            return batch
        own: dict[str, Any] = {
            k: batch.pop(k) for k in ("_seconds", "_unit", "_keep") if k in batch
        }
        t0 = time.perf_counter()
        out = decode(batch)
        seconds = dict(own.get("_seconds", {}))
        seconds["decode"] = seconds.get("decode", 0.0) + time.perf_counter() - t0
        return {**out, **own, "_seconds": seconds}

    return run


def _identity(x: Any) -> Any:
    return x


def _worker_init(parent: int, worker_id: int) -> None:
    """A decode worker ends with the run's process, however that ends (even ``kill -9``).

    SIGTERM is left to that process: it stops the run and then ends the workers itself.
    """
    die_with_parent(parent)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _end_workers(batches: Iterator[Any] | None) -> None:
    """End the decode workers now, not when the loader's iterator is collected.

    A run that stops on an error keeps that iterator alive in the error's traceback until the
    process exits, and there the workers (which ignore SIGTERM, see :func:`_worker_init`)
    would never answer multiprocessing's terminate: the process would hang at exit. torch's
    own ``__del__`` calls the same method.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


@dataclass(frozen=True)
class DecodePlan:
    """Where the run decodes its images (read always happens in the worker processes).

    - ``workers``: in the DataLoader's worker processes, with the read (a model on CUDA:
      decoding overlaps the GPU's work);
    - ``threads``: on ``threads`` threads of this process, between model batches (a model on
      the CPU: inference never shares the cores with decoders);
    - ``device``: batched on ``device``, the model's GPU, with a per-image CPU fallback.
    """

    where: Literal["workers", "threads", "device"]
    threads: int = 0
    device: torch.device | None = None

    @classmethod
    def choose(
        cls, cfg: RunConfig, model_device: torch.device, in_flight_bytes: int = 0
    ) -> DecodePlan:
        """``--decode-device`` and ``--decode-threads`` for a model on ``model_device``.

        Decoded batches come back from worker processes through shared memory
        (``/dev/shm``), ``in_flight_bytes`` of it at most. A container's is often 64 MB,
        where the workers would die with a bus error or "No space left on device": when
        it has less free, the run decodes on threads here instead, and says so once.
        """
        on_device = decode_target(cfg.decode_device, model_device)
        if on_device is not None:
            return cls("device", device=on_device)
        threads = cfg.num_decode_threads(model_device.type)
        if threads:
            return cls("threads", threads=threads)
        free = shm_free_bytes()
        if cfg.num_workers(model_device.type) and free is not None and in_flight_bytes > free:
            threads = usable_cores()
            logger.warning(
                "%s has %d MB free, and decoded batches in flight from the decode workers "
                "need about %d MB: decoding on %d thread(s) in this process instead (in a "
                "container, give it more: docker run --shm-size=%dg)",
                *(SHM, free >> 20, in_flight_bytes >> 20, threads),
                max(1, -(-2 * in_flight_bytes // 2**30)),
            )
            return cls("threads", threads=threads)
        return cls("workers")

    def decoder(
        self, cfg: RunConfig, preprocess: PreprocessConfig, pool: ThreadPoolExecutor | None
    ) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """The batch function that decodes read batches in this process, or ``None`` when
        they arrive decoded (``workers``)."""
        if self.device is not None:  # where == "device"
            return functools.partial(
                decode_batch_device,
                preprocess=preprocess,
                device=self.device,
                max_pixels=cfg.max_pixels,
                draft=cfg.draft,
                max_input_pixels=cfg.max_input_pixels,
            )
        if self.where == "threads":
            return functools.partial(
                decode_batch,
                preprocess=preprocess,
                max_pixels=cfg.max_pixels,
                draft=cfg.draft,
                pool=pool,
                max_input_pixels=cfg.max_input_pixels,
            )
        return None


def shm_free_bytes() -> int | None:
    """Free bytes of the shared memory that worker processes hand tensors back through;
    ``None`` where there is no such mount to measure."""
    try:
        return shutil.disk_usage(SHM).free
    except OSError:
        return None


def in_flight_bytes(workers: int, batch_size: int, input_size: tuple[int, int]) -> int:
    """Shared memory the decode workers' batches can hold at once: each worker's prefetched
    batches, plus the two this process holds (the one in the model and the next)."""
    h, w = input_size
    return (workers * PREFETCH_PER_WORKER + 2) * batch_size * h * w * 3


def decode_target(setting: DecodeDevice, model_device: torch.device) -> torch.device | None:
    """The device JPEGs are decoded on, or ``None`` for the CPU worker processes."""
    if setting == "cpu" or (setting == "auto" and model_device.type != "cuda"):
        return None
    if model_device.type != "cuda":
        raise ConfigError(
            f"--decode-device {setting!r} needs the model on CUDA, but it runs on "
            f"{model_device}; choose cpu or auto"
        )
    return model_device


def resolve_batch_size(cfg: RunConfig, predictor: Predictor, result: EngineResult) -> int:
    """``--batch-size`` (or its default for the device), or for ``auto`` the size the
    predictor measures (kept in ``result``)."""
    size = cfg.batch_size_for(predictor.device.type)
    if size != "auto":
        return int(size)
    search = predictor.find_batch_size()
    result.batch_search = search.as_record()
    return search.size


class LocalEngine(Engine):
    """Everything on this machine: ``--workers`` reader/decoder processes and one model."""

    name = "local"

    def run(self, job: Job) -> EngineResult:
        cfg = job.config
        stats = RunStats(job)
        seconds = dict.fromkeys(("read", "decode", "wait", "inference", "write"), 0.0)
        predictor = Predictor(job.spec, PredictOptions.from_config(cfg), job.state_dict)
        task = get_task(job.spec.task)
        result = stats.result
        batch_size = resolve_batch_size(cfg, predictor, result)
        workers = cfg.num_workers(predictor.device.type)
        shared = in_flight_bytes(workers, batch_size, predictor.input_size())
        plan = DecodePlan.choose(cfg, predictor.device, shared)
        pool = (
            ThreadPoolExecutor(plan.threads, thread_name_prefix="decode")
            if plan.where == "threads"
            else None
        )
        loader = DataLoader(
            DecodeDataset(
                job.spec.preprocess,
                cfg.max_pixels,
                cfg.draft,
                cfg.storage,
                decode=plan.where == "workers",
                device_route=plan.where == "device",
                max_input_pixels=cfg.max_input_pixels,
                max_file_bytes=cfg.max_file_bytes,
            ),
            batch_size=None,
            sampler=itertools.chain(
                chunked(job.items, batch_size), prefetched(shard_chunks(job, batch_size))
            ),
            num_workers=workers,
            prefetch_factor=PREFETCH_PER_WORKER if workers else None,
            pin_memory=predictor.device.type == "cuda",
            collate_fn=_identity,
            in_order=False,
            worker_init_fn=functools.partial(_worker_init, os.getpid()),
        )
        result.device, result.precision, result.workers = (
            str(predictor.device),
            predictor.precision,
            workers,
        )
        result.decode_device = "cpu" if plan.device is None else str(plan.device)
        result.decode_threads = plan.threads
        decode_here = plan.decoder(cfg, job.spec.preprocess, pool)
        trim = HeapTrimmer()  # keeps this process's memory flat however many images
        shard_parts = UnitParts(
            job.writer,
            functools.partial(units.keep_types, shard_opts=cfg.shards, options=cfg.storage),
        )
        workers_iter: Iterator[dict[str, Any]] | None = None
        it: Iterator[dict[str, Any]] | None = None

        def finish(item: tuple[Readback, Any, dict[str, Any]]) -> None:
            """On the finishing thread: a batch's columns to rows written and counted."""
            readback, tag, kept = item
            t0 = time.perf_counter()
            labelled = task.postprocess(readback.wait(), job.spec)
            table = task.to_table(labelled)
            if tag is None:
                job.writer.add(table)
            else:  # a shard's batch: its part is committed once the shard is whole
                shard_parts.add(tag, table, kept)
            seconds["write"] += time.perf_counter() - t0
            stats.observe(labelled)

        finisher = Finisher(finish, depth=FINISH_DEPTH)
        try:
            with warnings.catch_warnings():
                # The workers fork here. A resumed --format lance run has read its parts with
                # Lance already, which then warns at every fork; the workers never call it.
                warnings.filterwarnings("ignore", "lance is not fork-safe", UserWarning)
                batches: Iterator[dict[str, Any]] = iter(loader)
            workers_iter = batches
            if predictor.device.type == "cuda" and plan.device is None:
                batches = prefetch_to_device(batches, predictor.device)  # copy overlaps compute
            if plan.device is not None and decode_here is not None:
                # The GPU decoder holds its thread for a whole call: decode batch k+1 on a
                # thread (and stream) of its own while the model runs batch k.
                batches = decode_ahead(batches, _tags_kept(decode_here), plan.device)
                decode_here = None
            it = batches
            while True:
                t0 = time.perf_counter()
                batch = next(it, None)
                t1 = time.perf_counter()
                if batch is None:
                    break
                if "_fatal" in batch:
                    raise batch["_fatal"]
                for stage, s in batch.pop("_seconds").items():
                    seconds[stage] += s
                tag, kept = batch.pop("_unit", None), batch.pop("_keep", {})
                t_infer = t1
                if decode_here is not None:
                    batch = decode_here(batch)
                    t_infer = time.perf_counter()
                    seconds["decode"] += t_infer - t1
                n = len(batch["id"])
                # Queued on the device, not waited for: the finishing thread reads it back,
                # postprocesses and writes it while this thread queues the next batch.
                readback = predictor.launch(batch)
                del batch
                t2 = time.perf_counter()
                seconds["wait"] += t1 - t0
                seconds["inference"] += t2 - t_infer
                finisher.submit((readback, tag, kept))
                seconds["wait"] += time.perf_counter() - t2  # the finishing thread was behind
                trim(n)
        except KeyboardInterrupt:
            result.interrupted = True
            logger.warning("interrupted: writing the rows completed so far")
        finally:
            if pool is not None:
                pool.shutdown()
            _end_workers(workers_iter)
            if isinstance(it, Generator):  # stops a decode-ahead thread now, not at exit
                it.close()
            result.batch_size = predictor.batch_size_used(batch_size)
            t = time.perf_counter()
            try:
                with defer_interrupts():  # every batch submitted is written and counted
                    finisher.close()
            except KeyboardInterrupt:  # arrived while they were: they are written anyway
                result.interrupted = True
            finally:
                job.writer.close()
            seconds["write"] += time.perf_counter() - t
            stats.report(force=True)
        result.stage_seconds = seconds
        return result
