"""The Ray engine: the same stages on Ray Data, from a laptop to a cluster.

The driver lists the inputs (the same streaming listing as the local engine, which skips
ids a resumed run already wrote) into a dataset of ``(id, path)`` rows in Arrow blocks: the
manifest as a dataset. Reading is then part of the decode stage, so a missing or corrupt
file costs one error row, never a failed read task. Decode and preprocess run as CPU tasks,
the model on an actor pool (restarted on failure, its batches retried: Ray Data's
defaults), and the rows stream back to this process, where the same writer as the local
engine's commits them as atomic part files. Nothing relies on order.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import math
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from batchvision.config import DEFAULT_RAY_CONNECT_TIMEOUT, RunConfig
from batchvision.engines.base import Engine, EngineResult, Job, RunStats
from batchvision.errors import ConfigError
from batchvision.interrupts import defer_interrupts, keep_sigterm_handler
from batchvision.io.sources import InputItem
from batchvision.orphans import Reaper
from batchvision.stages.predict import PredictOptions, resolve_precision

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'batchvision[ray]'"
# Decoded batches the driver's iterator may hold ahead of writing.
PREFETCH_BATCHES = 2
# Memory one image's decoding may take (a 24-megapixel RGB image is 72 MB).
DECODE_WORKING_SET = 128 * 2**20


def import_ray() -> Any:
    """``ray`` and ``ray.data``, or a usage error with the install command."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ConfigError(
            f"--engine ray needs Ray Data, which is not installed: {INSTALL_HINT}"
        ) from e
    return ray


def manifest_blocks(items: Iterator[InputItem], rows_per_block: int) -> Iterator[Any]:
    """The listing as Arrow tables of ``id``/``path`` rows, ``rows_per_block`` at a time."""
    import pyarrow as pa

    it = iter(items)
    while chunk := list(itertools.islice(it, rows_per_block)):
        yield pa.table(
            {
                "id": pa.array([i.id for i in chunk], pa.string()),
                "path": pa.array([i.path for i in chunk], pa.string()),
            }
        )


def _log_cluster(ray: Any) -> dict[str, float]:
    resources: dict[str, float] = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    logger.info(
        "ray cluster: %d node(s), %g CPU, %g GPU, %.1f GiB memory, %.1f GiB object store",
        len(nodes),
        resources.get("CPU", 0),
        resources.get("GPU", 0),
        resources.get("memory", 0) / 2**30,
        resources.get("object_store_memory", 0) / 2**30,
    )
    return resources


def actor_resources(cfg: RunConfig, resources: dict[str, float]) -> tuple[float, float]:
    """``(num_gpus, num_cpus)`` per predictor actor: one GPU each where the cluster has GPUs."""
    num_gpus = cfg.num_gpus if cfg.num_gpus is not None else (1.0 if resources.get("GPU") else 0.0)
    if num_gpus > resources.get("GPU", 0):
        raise ConfigError(
            f"--num-gpus {num_gpus:g} per actor, but the cluster has "
            f"{resources.get('GPU', 0):g} GPU(s); use --num-gpus 0 for CPU actors"
        )
    num_cpus = cfg.num_cpus if cfg.num_cpus is not None else 1.0
    return num_gpus, num_cpus


def pool_size(cfg: RunConfig, resources: dict[str, float], num_gpus: float) -> tuple[int, int]:
    """Predictor actors ``(min, max)``: ``--concurrency``, else one per GPU (autoscaling),
    else one per four CPUs, which leaves the other cores to decoding."""
    if cfg.concurrency is not None:
        return cfg.concurrency
    if num_gpus > 0:
        return 1, max(1, int(resources.get("GPU", 0) // num_gpus))
    return 1, max(1, int(resources.get("CPU", 1) // 4))


def warn_if_no_cpu_left(actors: int, num_cpus: float, resources: dict[str, float]) -> None:
    """Warn when the predictor pool alone may take every CPU of the cluster."""
    cpus = resources.get("CPU", 0)
    if actors * num_cpus >= cpus:
        logger.warning(
            "ray: %d predictor actor(s) x %g CPU could take all %g CPUs, leaving none to "
            "decode (and after a lost node, restarted actors could wait forever for their "
            "inputs to be decoded again); use a smaller --concurrency or --num-cpus",
            *(actors, num_cpus, cpus),
        )


def actor_threads(
    num_cpus: float, num_gpus: float, actors: int, resources: dict[str, float], node_cpus: float
) -> int:
    """Torch threads per predictor actor.

    A GPU actor needs few: its CPU share. A CPU actor gets the cores the pool would leave
    to decoding, as far as one node has them: decoding costs a fraction of inference (on 2
    cores, resnet18: 2.5 ms vs 10 ms an image), and a second thread there cut inference
    time by 40% while slowing decoding by 20% (bench_engines.py, 256 images).
    """
    own = max(1, int(num_cpus))
    if num_gpus > 0:
        return own
    share = int(resources.get("CPU", 0) // max(1, actors))
    return max(own, min(share, int(node_cpus)))


def _max_node_cpus(ray: Any) -> float:
    return max(
        (n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0
    )


def decode_memory(batch_size: int, crop_size: tuple[int, int]) -> int:
    """Bytes a decode task reserves: its uint8 output batch and a large decoded image."""
    return batch_size * crop_size[0] * crop_size[1] * 3 + DECODE_WORKING_SET


def check_client_installed(address: str) -> None:
    """Refuse a ``ray://`` address, with the install command, when Ray Client is missing."""
    if address.startswith("ray://"):
        try:
            import grpc  # noqa: F401 - what ray[client] adds to Ray
        except ImportError as e:
            raise ConfigError(
                f"--ray-address {address!r} needs Ray Client, which is not installed: "
                "pip install 'ray[client]'"
            ) from e


def check_reachable(address: str, timeout: float) -> None:
    """Fail within ``timeout`` seconds, with one line, when nothing answers at ``address``.

    ``ray.init`` would retry an unreachable GCS for minutes, printing its retries whatever
    the logging level; a TCP connection first bounds that. ``auto`` is resolved by Ray
    from this machine's running instance, and fails at once when there is none.
    """
    client = address.startswith("ray://")
    hostport = address.removeprefix("ray://")
    if not client and hostport in ("auto", "local"):
        return
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        if not client:
            raise ConfigError(
                f"--ray-address {address!r} is not valid; give auto, HOST:PORT or ray://HOST[:PORT]"
            )
        host, port = hostport, "10001"  # Ray Client's default port
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError(
            f"--ray-address {address!r}: no Ray cluster answers at {host}:{port} within "
            f"{timeout:g} s ({reason}); check the address, start one (`ray start --head`), "
            "allow longer with --ray-connect-timeout, or leave --ray-address and RAY_ADDRESS "
            "unset for a local instance"
        ) from e


@contextlib.contextmanager
def bounded_connect(timeout: float) -> Iterator[None]:
    """Within the block, Ray's settings make ``ray.init(address=...)`` give up after about
    ``timeout`` + 7 seconds when what answers is not a Ray cluster: one try (by default 20,
    of about 41 s each). Settings a user exported are kept.

    Ray's C++ side reads two of them once, when ``ray`` is imported: import it within the
    block too. In a process that imported Ray before, the bound is one try of ~41 s.
    """
    seconds = max(1, math.ceil(timeout))
    values = {
        "RAY_gcs_server_port_wait_time_s": "1",
        "RAY_gcs_rpc_server_connect_timeout_s": str(min(3, seconds)),
        "RAY_py_gcs_connect_timeout_s": str(seconds),
    }
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _stderr_aside(aside: bool) -> Iterator[None]:
    """With ``aside``, file descriptor 2 goes to a temporary file for the block: Ray's C++
    side prints a warning there for each failed try, and a failed connection is said in one
    line. What was printed comes back to stderr unless the block failed to connect."""
    if not aside:
        yield
        return
    with tempfile.TemporaryFile() as file:
        saved = os.dup(2)
        replay = True
        try:
            os.dup2(file.fileno(), 2)
            yield
        except (ConnectionError, RuntimeError) as e:
            replay = not _failed_to_connect(e)  # the caller's one line says that
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if replay:
                file.seek(0)
                sys.stderr.flush()
                os.write(2, file.read())


def _failed_to_connect(e: Exception) -> bool:
    """Whether ``ray.init`` raised ``e`` because nothing it could attach to answered."""
    return isinstance(e, ConnectionError) or "connect to GCS" in str(e)


def _psutil_path(ray: Any) -> str:
    """The folder of the psutil that Ray ships (and imports itself), for the reaper."""
    return os.path.join(os.path.dirname(ray.__file__), "thirdparty_files")


class RayEngine(Engine):
    """Ray Data: decode as CPU tasks, the model on an actor pool, rows written here."""

    name = "ray"

    def __init__(self) -> None:
        # Ray is imported when connecting: its C++ side reads the connect bound
        # (bounded_connect) once, at import. Missing, it is a usage error here, first.
        self._ray: Any = None
        if "ray" in sys.modules or importlib.util.find_spec("ray") is None:
            self._ray = import_ray()
        self._connected = False
        self._started = False  # this engine called ray.init, so it must call ray.shutdown
        self._reaper = Reaper()

    @property
    def ray(self) -> Any:
        if self._ray is None:
            self._ray = import_ray()
        return self._ray

    def connect(self, config: RunConfig) -> None:
        """Attach to the cluster, or start a local instance, before the output is touched."""
        if not self._connected:
            self._started = self._connect(config)
            self._connected = True

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False
        self._reaper.stop()
        self._connected = False

    def run(self, job: Job) -> EngineResult:
        own = not self._connected  # called without connect(): connect and close here
        self.connect(job.config)
        try:
            with _ray_data_output(job.config.verbose):
                return self._run(job)
        finally:
            if own:
                self.close()

    def _connect(self, cfg: RunConfig) -> bool:
        """Attach to ``--ray-address`` (or RAY_ADDRESS), else start a local instance.

        Returns whether this call started the connection (and so must end it).
        """
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
        if address is not None:
            check_client_installed(address)  # a wrong setup fails alike in every process
        timeout = cfg.ray_connect_timeout or DEFAULT_RAY_CONNECT_TIMEOUT
        # Ray is imported within the bound (its C++ side reads it then), unless it was before;
        # a local instance starts its own GCS, which the bound must not hurry.
        with contextlib.nullcontext() if address is None else bounded_connect(timeout):
            ray = self.ray
            if ray.is_initialized():
                logger.info("ray: already connected in this process: using that cluster")
                return False
            if address is None:
                # Ray ends its GCS and raylet with a killed driver, but not their agents.
                self._reaper.start(_psutil_path(ray))
                self._init(cfg, None)
                logger.info("ray: started a local instance")
                return True
            check_reachable(address, timeout)
            try:
                with _stderr_aside(not cfg.verbose):
                    self._init(cfg, address)
            except (ConnectionError, RuntimeError) as e:
                if not _failed_to_connect(e):
                    raise
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(
                    f"--ray-address {address!r}: cannot attach to a Ray cluster ({first}); "
                    "give the head node's GCS address (port 6379 unless changed), start one "
                    "(`ray start --head`), or leave --ray-address and RAY_ADDRESS unset for "
                    "a local instance"
                ) from e
        logger.info("ray: attached to %s", address)
        return True

    def _init(self, cfg: RunConfig, address: str | None) -> None:
        # ray.init's own SIGTERM handler exits, losing the rows: the one before is kept.
        with keep_sigterm_handler():
            self.ray.init(
                address=address,
                include_dashboard=False if address is None else None,
                log_to_driver=cfg.verbose,
                # Ray's start-up notices (e.g. that token auth is on) only with --verbose.
                logging_level=logging.INFO if cfg.verbose else logging.ERROR,
                configure_logging=True,
            )

    def _run(self, job: Job) -> EngineResult:
        ray = self.ray
        cfg = job.config
        resources = _log_cluster(ray)
        num_gpus, num_cpus = actor_resources(cfg, resources)
        lo, hi = pool_size(cfg, resources, num_gpus)
        logger.info(
            "ray: predictor pool %d..%d actor(s), %g GPU and %g CPU each",
            *(lo, hi, num_gpus, num_cpus),
        )

        warn_if_no_cpu_left(hi, num_cpus, resources)
        stats = RunStats(job)
        result = stats.result
        seconds = dict.fromkeys(("read", "decode", "inference", "write"), 0.0)
        result.device = ("cuda" if num_gpus > 0 else "cpu") if cfg.device == "auto" else cfg.device
        # Actors resolve "auto" on their own device; the driver can only tell for CPUs.
        result.precision = (
            resolve_precision(cfg.precision, torch.device("cpu"))
            if result.device == "cpu"
            else cfg.precision
        )
        result.workers = hi
        threads = actor_threads(num_cpus, num_gpus, hi, resources, _max_node_cpus(ray))
        try:
            # The weights travel once, through the object store; actors never download.
            weights_ref = ray.put(job.state_dict) if job.state_dict is not None else None
            batch_size = self._batch_size(job, weights_ref, num_gpus, num_cpus, threads, result)
            result.batch_size = batch_size
            refs = [ray.put(t) for t in manifest_blocks(job.items, batch_size)]
            stats.report(force=True)
            if refs:
                pool = (lo, hi, num_gpus, num_cpus, threads, batch_size)
                self._stream(job, refs, weights_ref, stats, seconds, pool)
        except KeyboardInterrupt:
            result.interrupted = True
            logger.warning("interrupted: writing the rows completed so far")
        finally:
            job.writer.close()
            seconds["write"] += job.writer.write_seconds
            stats.report(force=True)
        result.stage_seconds = seconds
        return result

    def _batch_size(
        self,
        job: Job,
        weights_ref: Any,
        num_gpus: float,
        num_cpus: float,
        threads: int,
        result: EngineResult,
    ) -> int:
        """``--batch-size``, or ``auto`` resolved once, in a task shaped like a predictor actor."""
        cfg = job.config
        if cfg.batch_size != "auto":
            return int(cfg.batch_size)
        from batchvision.ray import find_batch_size

        task = self.ray.remote(num_gpus=num_gpus, num_cpus=num_cpus)(find_batch_size)
        opts = PredictOptions.from_config(cfg)
        search = self.ray.get(task.remote(job.spec, weights_ref, opts, threads))
        logger.info("ray: --batch-size auto chose %d", search.size)
        result.batch_search = search.as_record()
        return int(search.size)

    def _stream(
        self,
        job: Job,
        refs: list[Any],
        weights_ref: Any,
        stats: RunStats,
        seconds: dict[str, float],
        pool: tuple[int, int, float, float, int, int],
    ) -> None:
        """Build the dataset over the manifest blocks and write its rows as they arrive."""
        ray = self.ray
        from ray.data import ActorPoolStrategy

        from batchvision.ray import (
            BATCH_LIMIT_COLUMN,
            FAULT_INJECT_ENV,
            TIMING_COLUMNS,
            DecodeOptions,
            Decoder,
            Predictor,
            fatal_error,
        )

        cfg = job.config
        opts = PredictOptions.from_config(cfg)
        lo, hi, num_gpus, num_cpus, threads, batch_size = pool
        logger.info("ray: %d torch thread(s) per predictor actor", threads)
        ds = ray.data.from_arrow_refs(refs)
        ds = ds.map_batches(
            Decoder(
                options=DecodeOptions(
                    job.spec.preprocess,
                    cfg.max_pixels,
                    cfg.draft,
                    timings=True,
                    storage=cfg.storage,
                    max_input_pixels=cfg.max_input_pixels,
                    max_file_bytes=cfg.max_file_bytes,
                )
            ),
            batch_size=batch_size,
            batch_format="numpy",
            zero_copy_batch=True,
            num_cpus=1,
            # A decode task's peak: its output batch plus one large image being decoded.
            # Asking for it also keeps Ray Data from fusing decoding into the predictor
            # actors (it fuses only equal resource requests): decoding then overlaps
            # inference in its own tasks instead of running inside the model's process.
            memory=decode_memory(batch_size, job.spec.preprocess.crop_size),
        )
        ds = ds.map_batches(
            Predictor,
            fn_constructor_kwargs={
                "spec": job.spec,
                "state_dict": weights_ref,
                "device": opts.device,
                "precision": opts.precision,
                "top_k": opts.top_k,
                "channels_last": opts.channels_last,
                "normalize": opts.normalize,
                "table": True,
                "threads": threads,
                "timings": True,
                "fault_inject": os.environ.get(FAULT_INJECT_ENV),
                "compile": opts.compile,
                "fuse": opts.fuse,
                "inject_oom_above": opts.inject_oom_above,
            },
            compute=ActorPoolStrategy(min_size=lo, max_size=hi),
            batch_size=batch_size,
            batch_format="numpy",
            zero_copy_batch=True,
            num_gpus=num_gpus,
            num_cpus=num_cpus,
        )
        seen: set[str] = set()
        for table in ds.iter_batches(
            batch_size=None, batch_format="pyarrow", prefetch_batches=PREFETCH_BATCHES
        ):
            for col, stage in zip(TIMING_COLUMNS, ("read", "decode", "inference"), strict=True):
                seconds[stage] += float(pc.sum(table.column(col)).as_py() or 0.0)
            limits = [v for v in table.column(BATCH_LIMIT_COLUMN).to_pylist() if v]
            if limits:  # an actor ran out of memory and halved its batches
                stats.result.batch_size = min(stats.result.batch_size, *limits)
            dropped = [*TIMING_COLUMNS, BATCH_LIMIT_COLUMN]
            table = _drop_repeats(table.drop_columns(dropped), seen)
            errors = table.column("error").to_pylist()
            fatal = fatal_error(errors)
            if fatal is not None:
                raise fatal
            counts = {
                "status": np.asarray(table.column("status").to_pylist(), dtype=object),
                "error": np.asarray(errors, dtype=object),
            }
            with defer_interrupts():  # a batch is written and counted, or neither
                job.writer.add(table)
                stats.observe(counts)
                seen.update(table.column("id").to_pylist())


@contextlib.contextmanager
def _ray_data_output(verbose: bool) -> Iterator[None]:
    """Ray Data's progress bars and logs only with ``--verbose``; restored afterwards, as the
    DataContext and loggers belong to the user's process when batchvision runs inside it."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    log = logging.getLogger("ray.data")
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start, log.level)
    ctx.enable_progress_bars = ctx.print_on_execution_start = verbose
    log.setLevel(logging.INFO if verbose else logging.ERROR)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start, level = saved
        log.setLevel(level)


def _drop_repeats(table: pa.Table, seen: set[str]) -> pa.Table:
    """Defence in depth: a row whose id this run already wrote is logged and dropped.

    Ray retries a lost batch rather than repeat a finished one, so this should never fire;
    if it does, writing the row twice would break "every id exactly once".
    """
    ids = table.column("id").to_pylist()
    drop = np.zeros(len(ids), dtype=bool)
    here: set[str] = set()
    for i, item in enumerate(ids):
        drop[i] = item in seen or item in here
        here.add(item)
    if not drop.any():
        return table
    logger.error(
        "ray returned %d row(s) this run already has (e.g. id %r); not writing them twice",
        int(drop.sum()),
        ids[int(np.flatnonzero(drop)[0])],
    )
    return table.filter(pa.array(~drop))
