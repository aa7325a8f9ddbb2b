"""The local engine: decode in worker processes, infer in this one, overlapped.

Decoding runs in a torch ``DataLoader``'s worker processes. The "sampler" is the lazy
stream of input chunks, so the listing feeds workers while it is still walking, and the
loader's bounded prefetch keeps memory flat for any number of images. Decoded batches
come back through shared memory as uint8 tensors; inference and writing run here.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from batchvision.config import DEFAULT_MAX_PIXELS, PreprocessConfig
from batchvision.engines.base import Engine, EngineResult, Job, RunStats, defer_sigint
from batchvision.errors import StorageAuthError
from batchvision.io.sinks import batch_to_table
from batchvision.io.sources import InputItem, items_to_batch, read_batch
from batchvision.io.storage import StorageOptions
from batchvision.stages.postprocess import postprocess_batch
from batchvision.stages.predict import PredictOptions, Predictor
from batchvision.stages.preprocess import decode_batch

logger = logging.getLogger(__name__)

# Batches each worker may hold ready ahead of inference; bounds memory.
PREFETCH_PER_WORKER = 2


class DecodeDataset(Dataset[dict[str, Any]]):
    """Maps a chunk of inputs to its decoded batch: read, then decode and preprocess."""

    def __init__(
        self,
        preprocess: PreprocessConfig,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft: bool = True,
        storage_options: StorageOptions | None = None,
    ) -> None:
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.draft = draft
        self.storage_options = storage_options or StorageOptions()

    def __getitem__(self, chunk: list[InputItem]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            batch = read_batch(items_to_batch(chunk), self.storage_options)
        except StorageAuthError as e:
            # Raised in a worker, the DataLoader would re-raise it with the worker's
            # traceback as its message; handed back, the main process raises it as it is.
            return {"_fatal": e}
        t1 = time.perf_counter()
        out: dict[str, Any] = decode_batch(
            batch, self.preprocess, max_pixels=self.max_pixels, draft=self.draft
        )
        t2 = time.perf_counter()
        out["image"] = torch.from_numpy(out["image"])  # shared memory back to the main process
        out["_seconds"] = {"read": t1 - t0, "decode": t2 - t1}
        return out

    def __len__(self) -> int:  # the stream of chunks has no length known ahead
        raise TypeError("DecodeDataset is indexed by input chunks and has no length")


def chunked(items: Iterable[InputItem], size: int) -> Iterator[list[InputItem]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _identity(x: Any) -> Any:
    return x


class LocalEngine(Engine):
    """Everything on this machine: ``--workers`` decode processes and one model."""

    name = "local"

    def run(self, job: Job) -> EngineResult:
        cfg = job.config
        stats = RunStats(job)
        seconds = dict.fromkeys(("read", "decode", "wait", "inference", "write"), 0.0)
        predictor = Predictor(job.spec, PredictOptions.from_config(cfg), job.state_dict)
        workers = cfg.num_workers
        loader = DataLoader(
            DecodeDataset(job.spec.preprocess, cfg.max_pixels, cfg.draft, cfg.storage),
            batch_size=None,
            sampler=chunked(job.items, cfg.batch_size),
            num_workers=workers,
            prefetch_factor=PREFETCH_PER_WORKER if workers else None,
            pin_memory=predictor.device.type == "cuda",
            collate_fn=_identity,
            in_order=False,
        )
        result = stats.result
        result.device, result.precision, result.workers = (
            str(predictor.device),
            predictor.precision,
            workers,
        )
        try:
            it = iter(loader)
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
                labelled = postprocess_batch(predictor(batch), job.spec)
                t2 = time.perf_counter()
                with defer_sigint():  # a batch is written and counted, or neither
                    job.writer.add(batch_to_table(labelled))
                    t3 = time.perf_counter()
                    seconds["wait"] += t1 - t0
                    seconds["inference"] += t2 - t1
                    seconds["write"] += t3 - t2
                    stats.observe(labelled)
        except KeyboardInterrupt:
            result.interrupted = True
            logger.warning("interrupted: writing the rows completed so far")
        finally:
            t = time.perf_counter()
            job.writer.close()
            seconds["write"] += time.perf_counter() - t
            stats.report(force=True)
        result.stage_seconds = seconds
        return result
