"""The engine interface: an engine decides where stages run, and nothing else."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from batchvision.config import RunConfig
from batchvision.io.sinks import PartWriter
from batchvision.io.sources import InputItem, ListingStats
from batchvision.io.units import Committed
from batchvision.models.spec import ModelSpec
from batchvision.runtimes.export import Exported


@dataclass(frozen=True)
class ProgressUpdate:
    """What a progress display needs; ``total`` is ``None`` while the listing runs."""

    done: int
    errors: int
    total: int | None
    elapsed: float


ProgressCallback = Callable[[ProgressUpdate], None]


@dataclass
class Job:
    """One run, ready for an engine: inputs to do, the model, and where rows go."""

    config: RunConfig
    spec: ModelSpec
    #: The weights, or the model exported for ``--runtime onnxruntime``/``openvino``.
    state_dict: dict[str, torch.Tensor] | Exported | None
    items: Iterator[InputItem]
    writer: PartWriter
    listing: ListingStats
    already_done: int = 0
    known_total: int | None = None
    progress: ProgressCallback | None = None
    #: Engines that run by unit (``Engine.by_unit``): the units earlier runs committed.
    committed: Committed | None = None
    #: The inputs include shards, whose samples are only counted as they are read.
    total_unknown: bool = False


@dataclass
class EngineResult:
    """Counts and timings an engine reports back."""

    ok: int = 0
    error: int = 0
    error_codes: Counter[str] = field(default_factory=Counter)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    device: str = ""
    precision: str = ""
    #: fp32 model calls on CUDA let matmuls and convolutions use TF32 (``uses_tf32``).
    tf32: bool = False
    workers: int = 0
    #: Batch size the model finally ran at (after ``auto`` and any out-of-memory halving).
    batch_size: int = 0
    #: ``--batch-size auto``'s measurements (``BatchSearch.as_record``), else ``None``.
    batch_search: dict[str, Any] | None = None
    #: Where images were decoded: ``cpu`` or the model's CUDA device.
    decode_device: str = "cpu"
    #: CPU decode threads in the model's process (0: decoded in worker processes or tasks).
    decode_threads: int = 0
    #: Inputs skipped as committed by earlier runs (engines that run by unit).
    already_done: int = 0


class RunStats:
    """Counts rows as they are produced and throttles progress callbacks."""

    def __init__(self, job: Job, interval: float = 0.25) -> None:
        self.job = job
        self.result = EngineResult()
        self.start = time.perf_counter()
        self.interval = interval
        self._last = 0.0

    def observe(self, batch: dict[str, np.ndarray]) -> None:
        """Count a labelled batch and report progress."""
        ok = int(np.count_nonzero(batch["status"] == "ok"))
        codes = Counter(str(e).split(":", 1)[0] for e in batch["error"] if e is not None)
        self.observe_counts(ok, len(batch["status"]) - ok, codes)

    def observe_counts(self, ok: int, error: int, codes: dict[str, int]) -> None:
        """Count ``ok`` and ``error`` rows (``codes``: errors by code) and report progress."""
        self.result.ok += ok
        self.result.error += error
        self.result.error_codes.update(codes)
        self.report()

    def report(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.job.progress is None or (not force and now - self._last < self.interval):
            return
        self._last = now
        total = self.job.known_total
        if total is None and self.job.listing.done:
            total = self.job.listing.listed - self.job.already_done
        if self.job.total_unknown:  # shards: their samples are counted as read
            total = None
        done = self.result.ok + self.result.error
        self.job.progress(
            ProgressUpdate(
                done=done,
                errors=self.result.error,
                total=total,
                elapsed=now - self.start,
            )
        )


class Engine(ABC):
    """Runs a Job's stages somewhere: this process and its workers, or a cluster."""

    name: str
    #: Runs the inputs as units (``io.units``) and resumes by unit: the job's ``items`` are
    #: not used, ``committed`` says what to skip.
    by_unit: bool = False

    def connect(self, config: RunConfig) -> None:  # noqa: B027 - optional: most need none
        """Reach where the stages will run (e.g. a cluster), before the output is touched.

        Raises:
            BatchvisionError: when it cannot be reached, so the run stops with one line.
        """

    def close(self) -> None:  # noqa: B027 - optional, as connect
        """Let go of what :meth:`connect` started."""

    @abstractmethod
    def run(self, job: Job) -> EngineResult:
        """Process every item of ``job`` and write its rows through ``job.writer``."""


def get_engine(name: str) -> Engine:
    """The engine called ``name``; an unknown name is an error, never a silent fallback."""
    if name == "local":
        from batchvision.engines.local import LocalEngine

        return LocalEngine()
    if name == "ray":
        from batchvision.engines.ray import RayEngine

        return RayEngine()
    from batchvision.config import ENGINES
    from batchvision.errors import ConfigError

    raise ConfigError(f"--engine {name!r} is not valid; choose one of: {', '.join(ENGINES)}")
