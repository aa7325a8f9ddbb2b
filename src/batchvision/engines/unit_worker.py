"""Whole work units in one process: read, decode, infer and commit each unit's part.

The Ray engine's actors run this, so no row ever crosses to the driver: what comes back is
one small stats row per unit. Within a unit, the next batch is read on a thread while this
one is decoded and inferred (reads wait on the disk or the network, not the CPU). Decoding
runs on a pool of threads between model batches when the model is on the CPU, so
inference never shares the cores with decoders, as the local engine does; with the model on
a GPU it runs ahead on those threads, overlapping the GPU's work.

A bad input is that input's error row; what stops a unit instead (S3 refusing the
credentials, the output refusing a write, a manifest that can no longer be read) is
returned as the unit's ``fatal`` message, which stops the run on the driver.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from batchvision.config import PreprocessConfig
from batchvision.engines.finisher import Finisher
from batchvision.errors import OutputWriteError, StorageAuthError
from batchvision.io import shards, sinks, units
from batchvision.io.shards import ShardOptions
from batchvision.io.storage import StorageOptions
from batchvision.memory import HeapTrimmer
from batchvision.models.spec import ModelSpec
from batchvision.stages.predict import PredictOptions
from batchvision.stages.preprocess import decode_batch
from batchvision.stages.readback import Readback
from batchvision.tasks import get_task

logger = logging.getLogger(__name__)

#: Test hook, in the engine's environment: ``predictor_exit_once:MARKER`` makes the first
#: worker that sees it create the file MARKER and end its process (``os._exit(1)``) in the
#: middle of a unit, its first batch inferred and nothing committed, once per marker;
#: ``unit_exit_after_commit_once:MARKER`` does it just after a unit's part is committed,
#: before the worker can reply (Ray then runs that unit again).
FAULT_INJECT_ENV = "BATCHVISION_FAULT_INJECT"

#: Stats columns, one row per unit (``fatal``: what stopped the unit, else empty).
STATS_COLUMNS = (
    "key", "rows", "ok", "error", "error_codes", "part", "fatal", "fatal_kind",
    "t_read", "t_decode", "t_inference", "t_write", "batch_limit",
)  # fmt: skip


@dataclass(frozen=True)
class WorkerOptions:
    """What a unit worker needs besides the model: one picklable object."""

    output: str
    fmt: str
    batch_size: int
    preprocess: PreprocessConfig
    predict: PredictOptions
    storage: StorageOptions
    max_pixels: int
    max_input_pixels: int
    max_file_bytes: int
    draft: bool = False
    mask_dir: str | None = None
    #: torch threads, and decode threads, in this worker.
    threads: int = 1
    fault_inject: str | None = None
    #: How samples are found in shard inputs (``--image-key``, ``--keep-columns``, ...).
    shards: ShardOptions = field(default_factory=ShardOptions)
    #: The run's :class:`~batchvision.engines.commit_gate.CommitGate` actor, if any.
    gate: Any = None


class UnitWorker:
    """Loads the model once; then each call runs whole units (a batch of ``unit`` rows)."""

    def __init__(self, options: WorkerOptions, spec: ModelSpec, state_dict: Any) -> None:
        import torch

        from batchvision.stages.predict import Predictor

        torch.set_num_threads(max(1, options.threads))
        import ray

        if isinstance(state_dict, ray.ObjectRef):  # the weights, or the runtime's export
            state_dict = ray.get(state_dict)
        self.options = options
        self.spec = spec
        self.predictor = Predictor(spec, options.predict, state_dict)
        self.task = get_task(spec.task)
        self.on_gpu = self.predictor.device.type == "cuda"
        self.decoders = ThreadPoolExecutor(max(1, options.threads), "decode")
        self.reader = ThreadPoolExecutor(1, "read")
        self.trim = HeapTrimmer()
        self._faulted = False

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.run_unit(units.Unit.from_json(str(s))) for s in batch["unit"]]
        return {c: np.array([r[c] for r in rows], dtype=object) for c in STATS_COLUMNS}

    def run_unit(self, unit: units.Unit) -> dict[str, Any]:
        """Run ``unit`` and commit its part; returns its stats row."""
        opts = self.options
        stats: dict[str, Any] = {
            "key": unit.key, "rows": 0, "ok": 0, "error": 0, "error_codes": "{}", "part": "",
            "fatal": "", "fatal_kind": "", "t_read": 0.0, "t_decode": 0.0,
            "t_inference": 0.0, "t_write": 0.0, "batch_limit": 0,
        }  # fmt: skip
        try:
            types = units.keep_types(unit, opts.shards, opts.storage)
            tables = self._tables(self._reads(unit), stats, types)
            t0 = time.perf_counter()
            table = pa.concat_tables(tables) if tables else None
            if table is not None and opts.mask_dir is not None and "mask" in table.column_names:
                table = sinks.masks_to_files(table, opts.mask_dir)
            if table is None:  # a shard without samples: nothing to commit
                return stats
            data = sinks.encode_part(table, opts.fmt, opts.output, opts.storage)
            name = sinks.unit_part_name(unit, table, data, opts.fmt)
            if not self._commit(unit.key, name, data, unit.replaces):
                stats["fatal_kind"] = "stopped"  # the run stopped: nothing committed
                return stats
            stats["t_write"] += time.perf_counter() - t0
            stats["part"] = name
        except StorageAuthError as e:
            stats["fatal"], stats["fatal_kind"] = str(e), "storage_auth"
        except OutputWriteError as e:
            stats["fatal"], stats["fatal_kind"] = str(e), "output_write"
        except OSError as e:  # the unit's manifest can no longer be read
            stats["fatal"], stats["fatal_kind"] = (
                f"unit {unit.key} of {unit.source!r} cannot be read: {e}",
                "input",
            )
        stats["batch_limit"] = self.predictor.batch_limit or 0
        return stats

    def _commit(self, key: str, name: str, data: bytes, replaces: str = "") -> bool:
        """Commit the part through the run's gate; ``False`` once the run has stopped.
        ``replaces``: an earlier part of the unit (a damaged shard's), deleted after."""
        gate = self.options.gate
        if gate is not None:
            import ray

            try:
                if not ray.get(gate.begin.remote(key)):
                    return False
            except ray.exceptions.RayError:  # the gate went with its driver
                return False
        try:
            sinks.write_atomic(self.options.output, name, data, self.options.storage)
            self._maybe_fault("unit_exit_after_commit_once")
            if replaces and replaces != name:
                units.delete_part(self.options.output, replaces, self.options.storage)
        finally:
            if gate is not None:
                gate.end.remote(key)
        return True

    def _reads(self, unit: units.Unit) -> Iterator[dict[str, Any]]:
        """The unit's read batches, ``batch_size`` inputs each (:func:`units.read_batches`)."""
        opts = self.options
        return units.read_batches(
            unit, opts.shards, opts.storage, opts.max_file_bytes, opts.batch_size
        )

    def _tables(
        self, reads: Iterator[dict[str, Any]], stats: dict[str, Any], types: dict[str, Any]
    ) -> list[pa.Table]:
        """The unit's tables. Each batch is queued on the model and finished (read back,
        postprocessed, made a table) on a thread while the next one runs, as in the local
        engine: on a GPU the device never waits for the host's share of a batch."""
        tables: list[pa.Table] = []
        codes: Counter[str] = Counter()

        def finish(item: tuple[Readback, dict[str, list[Any]]]) -> None:
            readback, kept = item
            t0 = time.perf_counter()
            labelled = self.task.postprocess(readback.wait(), self.spec)
            ok = int(np.count_nonzero(labelled["status"] == "ok"))
            stats["ok"] += ok
            stats["error"] += len(labelled["status"]) - ok
            codes.update(str(e).split(":", 1)[0] for e in labelled["error"] if e is not None)
            tables.append(shards.add_kept(self.task.to_table(labelled), kept, types))
            stats["t_write"] += time.perf_counter() - t0

        finisher = Finisher(finish)
        try:
            for batch, kept in self._decoded(reads, stats):
                self.trim(len(batch["id"]))
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*not writable.*")
                    readback = self.predictor.launch(batch)
                del batch
                stats["t_inference"] += time.perf_counter() - t0
                self._maybe_fault("predictor_exit_once")
                finisher.submit((readback, kept))
        finally:
            finisher.close()
        stats["rows"] = stats["ok"] + stats["error"]
        stats["error_codes"] = json.dumps(dict(codes))
        return tables

    def _decoded(
        self, reads: Iterator[dict[str, Any]], stats: dict[str, Any]
    ) -> Iterator[tuple[dict[str, Any], dict[str, list[Any]]]]:
        """The unit's batches decoded (with their kept columns), the next one read (and on a
        GPU, decoded) ahead on the reader thread."""
        ahead = self.reader.submit(self._prepare, reads)
        while True:
            t0 = time.perf_counter()
            prepared = ahead.result()  # re-raises StorageAuthError
            waited = time.perf_counter() - t0
            if prepared is None:
                return
            ahead = self.reader.submit(self._prepare, reads)
            batch, kept = prepared
            if "image" not in batch:  # the model is on the CPU: decode between its batches
                t0 = time.perf_counter()
                batch = self._decode(batch)
                stats["t_decode"] += time.perf_counter() - t0
                stats["t_read"] += waited
            else:
                stats["t_decode"] += waited
            yield batch, kept

    def _prepare(
        self, reads: Iterator[dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, list[Any]]] | None:
        read = next(reads, None)
        if read is None:
            return None
        kept = read.pop("_keep", {})
        return (self._decode(read) if self.on_gpu else read), kept

    def _decode(self, read: dict[str, Any]) -> dict[str, Any]:
        opts = self.options
        return decode_batch(
            read,
            opts.preprocess,
            max_pixels=opts.max_pixels,
            draft=opts.draft,
            pool=self.decoders,
            max_input_pixels=opts.max_input_pixels,
        )

    def _maybe_fault(self, point: str) -> None:
        hook = self.options.fault_inject
        if self._faulted or not hook or not hook.startswith(f"{point}:"):
            return
        self._faulted = True
        marker = hook.split(":", 1)[1]
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        logger.warning("%s: ending this worker's process once (test hook)", FAULT_INJECT_ENV)
        os._exit(1)
