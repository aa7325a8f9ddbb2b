"""The Ray engine: whole units of work on an actor pool, nothing per row on the driver.

The driver plans the inputs as units (``io.units``: ``--part-rows`` lines of a manifest,
read once for their line ends; items of a listed folder; one shard each), skips the units
a resumed run already committed, and hands the rest to Ray Data, a few units per block
(``TASK_ROWS`` inputs or more, so its per-task cost is spread thin). Each actor of the pool
loads the model once, then runs whole units: it reads, decodes, infers and commits each
unit's part itself (temporary name then rename; on S3 one PUT), named after the unit, and
returns one stats row per unit. Ray restarts a lost actor and retries its units; a unit
run again after its part was committed writes the same part again (or a second one of the
same ids, which the final listing deletes). A stopping run closes the commit gate
(``commit_gate``) first, so its record counts every part it committed. The driver's work
is O(units): the plan, one stats row per unit, and a listing of the part names at the end,
from which the run's counts are taken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from batchvision.config import DEFAULT_RAY_CONNECT_TIMEOUT, RunConfig
from batchvision.engines.base import Engine, EngineResult, Job, RunStats
from batchvision.engines.commit_gate import CommitGate
from batchvision.errors import ConfigError, OutputWriteError, StorageAuthError
from batchvision.interrupts import keep_sigterm_handler
from batchvision.io import units
from batchvision.orphans import Reaper
from batchvision.runtimes.export import Exported
from batchvision.stages.device import resolve_precision
from batchvision.stages.predict import PredictOptions

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'batchvision[ray]'"


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


def actor_resources(
    cfg: RunConfig, resources: dict[str, float], cpu_runtime: bool = False
) -> tuple[float, float]:
    """``(num_gpus, num_cpus)`` per worker actor: one GPU each where the cluster has GPUs,
    none for ``--device cpu`` or a runtime that runs on the CPU (``cpu_runtime``:
    onnxruntime, openvino).

    Ray hides every GPU from an actor that reserves none (``CUDA_VISIBLE_DEVICES`` empty),
    so ``--device cuda`` without GPUs to reserve is refused here, not in each actor.
    """
    on_cpu = cpu_runtime or cfg.device == "cpu"
    gpus = 1.0 if resources.get("GPU") and not on_cpu else 0.0
    num_gpus = cfg.num_gpus if cfg.num_gpus is not None else gpus
    if num_gpus > resources.get("GPU", 0):
        raise ConfigError(
            f"--num-gpus {num_gpus:g} per actor, but the cluster has "
            f"{resources.get('GPU', 0):g} GPU(s); use --num-gpus 0 for CPU actors"
        )
    if num_gpus == 0 and cfg.device.startswith("cuda") and not cpu_runtime:
        raise ConfigError(
            f"--device {cfg.device}: the worker actors would reserve no GPU ("
            + ("--num-gpus 0" if cfg.num_gpus is not None else "the cluster has none")
            + "), and Ray shows an actor only the GPUs it reserves; use --device auto or cpu"
        )
    num_cpus = cfg.num_cpus if cfg.num_cpus is not None else 1.0
    return num_gpus, num_cpus


def pool_size(cfg: RunConfig, resources: dict[str, float], num_gpus: float) -> tuple[int, int]:
    """Worker actors ``(min, max)``: ``--concurrency``, else one per GPU (autoscaling),
    else one per four CPUs (each decodes on its share of the cores, see actor_threads)."""
    if cfg.concurrency is not None:
        return cfg.concurrency
    if num_gpus > 0:
        return 1, max(1, int(resources.get("GPU", 0) // num_gpus))
    return 1, max(1, int(resources.get("CPU", 1) // 4))


def actor_threads(
    num_cpus: float, actors: int, resources: dict[str, float], node_cpus: float
) -> int:
    """Threads per worker actor, for torch and for decoding: its share of the cluster's
    CPUs, as far as one node has them, and at least the CPUs it reserves.

    A worker decodes and infers in turn on the CPU (so neither slows the other), and with a
    GPU decodes the next batch while the GPU runs this one: either way its cores serve it.
    """
    own = max(1, int(num_cpus))
    share = int(resources.get("CPU", 0) // max(1, actors))
    return max(own, min(share, int(node_cpus)))


def _max_node_cpus(ray: Any) -> float:
    return max(
        (n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0
    )


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
    """Ray Data: whole units on an actor pool, each unit's part written by its actor."""

    name = "ray"
    by_unit = True

    def __init__(self) -> None:
        # Ray is imported when connecting: its C++ side reads the connect bound
        # (bounded_connect) once, at import. Missing, it is a usage error here, first.
        self._ray: Any = None
        if "ray" in sys.modules or importlib.util.find_spec("ray") is None:
            self._ray = import_ray()
        self._connected = False
        self._started = False  # this engine called ray.init, so it must call ray.shutdown
        self._reaper = Reaper()
        self._gate: Any = None  # the running dataset's commit gate and stats iterator
        self._stats: Any = None

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
        num_gpus, num_cpus = actor_resources(
            cfg, resources, cpu_runtime=isinstance(job.state_dict, Exported)
        )
        lo, hi = pool_size(cfg, resources, num_gpus)
        threads = actor_threads(num_cpus, hi, resources, _max_node_cpus(ray))
        pool = Pool(lo, hi, num_gpus, num_cpus, threads)
        logger.info(
            "ray: unit worker pool %d..%d actor(s), %g GPU, %g CPU and %d thread(s) each",
            *(lo, hi, num_gpus, num_cpus, threads),
        )
        stats = RunStats(job)
        result = stats.result
        result.device = ("cuda" if num_gpus > 0 else "cpu") if cfg.device == "auto" else cfg.device
        # Actors resolve "auto" on their own device; the driver can only tell for CPUs.
        result.precision = (
            job.state_dict.precision  # the export's, for --runtime onnxruntime/openvino
            if isinstance(job.state_dict, Exported)
            else resolve_precision(cfg.precision, torch.device("cpu"))
            if result.device == "cpu"
            else cfg.precision
        )
        result.workers = hi
        result.decode_threads = threads  # in each actor, between (or ahead of) model batches
        seconds = dict.fromkeys(("read", "decode", "inference", "write"), 0.0)
        try:
            todo = self._plan(job, result)
            # The weights (or the export) travel once, through the object store; actors
            # never download or export.
            weights_ref = ray.put(job.state_dict) if job.state_dict is not None else None
            result.batch_size = self._batch_size(job, weights_ref, pool, result)
            stats.report(force=True)
            if todo:
                self._stream(job, todo, weights_ref, stats, seconds, pool)
        except KeyboardInterrupt:
            result.interrupted = True
            logger.warning("interrupted: the units committed so far are kept")
        finally:
            self._stop(job)
        self._count_committed(job, result)
        stats.report(force=True)
        result.stage_seconds = seconds
        return result

    def _plan(self, job: Job, result: EngineResult) -> list[str]:
        """The units still to run, as JSON, in order; committed ones are skipped whole.

        Planning keeps one unit at a time besides the list: a manifest is read once for
        its line ends (never parsed into rows here), a folder is listed into its units.
        """
        cfg = job.config
        committed = job.committed or units.Committed()
        todo: list[str] = []
        total: int | None = 0
        planned = units.plan_units(
            cfg.inputs, cfg.part_rows, job.listing, cfg.storage, cfg.shards, cfg.manifest
        )
        for unit in planned:
            if committed.check(unit):
                result.already_done += committed.units[unit.key].rows
                continue
            stale = committed.stale(unit)  # a damaged shard's part, read again whole
            todo.append(dataclasses.replace(unit, replaces=stale).to_json())
            total = None if total is None or unit.is_shard else total + unit.rows
        job.known_total = total  # a shard's samples are counted as it is read
        logger.info(
            "ray: %d unit(s) to run (--part-rows %d inputs each, or one shard)",
            *(len(todo), cfg.part_rows),
        )
        return todo

    def _batch_size(self, job: Job, weights_ref: Any, pool: Pool, result: EngineResult) -> int:
        """``--batch-size``, or ``auto`` resolved once, in a task shaped like a worker actor."""
        cfg = job.config
        size = cfg.batch_size_for("cuda" if pool.num_gpus else "cpu")
        if size != "auto":
            return int(size)
        from batchvision.ray import find_batch_size

        task = self.ray.remote(
            num_gpus=pool.num_gpus, num_cpus=pool.num_cpus, runtime_env=WORKER_ENV
        )(find_batch_size)
        opts = PredictOptions.from_config(cfg)
        search = self.ray.get(task.remote(job.spec, weights_ref, opts, pool.threads))
        logger.info("ray: --batch-size auto chose %d", search.size)
        result.batch_search = search.as_record()
        return int(search.size)

    def _stream(
        self,
        job: Job,
        todo: list[str],
        weights_ref: Any,
        stats: RunStats,
        seconds: dict[str, float],
        pool: Pool,
    ) -> None:
        """Run the units on the actor pool; only their stats rows come back here."""
        from ray.data import ActorPoolStrategy

        from batchvision.engines.unit_worker import FAULT_INJECT_ENV, UnitWorker, WorkerOptions

        cfg = job.config
        self._gate = self._start_gate()
        options = WorkerOptions(
            output=cfg.output,
            fmt=cfg.format,
            batch_size=stats.result.batch_size,
            preprocess=job.spec.preprocess,
            predict=PredictOptions.from_config(cfg),
            storage=cfg.storage,
            max_pixels=cfg.max_pixels,
            max_input_pixels=cfg.max_input_pixels,
            max_file_bytes=cfg.max_file_bytes,
            draft=cfg.draft,
            mask_dir=None if cfg.mask_dir is None else os.path.abspath(cfg.mask_dir),
            threads=pool.threads,
            fault_inject=os.environ.get(FAULT_INJECT_ENV),
            shards=cfg.shards,
            gate=self._gate,
        )
        # A block is one actor call: a few units (TASK_ROWS inputs or more), so that Ray
        # Data's few milliseconds of driver work per task are spread over many rows.
        per_task = units_per_task(cfg.part_rows)
        blocks = math.ceil(len(todo) / per_task)
        ds = self.ray.data.from_items([{"unit": u} for u in todo], override_num_blocks=blocks)
        ds = ds.map_batches(
            UnitWorker,
            fn_constructor_kwargs={"options": options, "spec": job.spec, "state_dict": weights_ref},
            compute=ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
            batch_size=per_task,
            batch_format="numpy",
            num_gpus=pool.num_gpus,
            num_cpus=pool.num_cpus,
            runtime_env=WORKER_ENV,
        )
        guard = job.writer.guard
        self._stats = ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1)
        for table in self._stats:
            for row in table.to_pylist():  # one row per unit
                _raise_fatal(row)
                if guard is not None:
                    guard()
                stats.observe_counts(row["ok"], row["error"], json.loads(row["error_codes"]))
                for stage in seconds:
                    seconds[stage] += row[f"t_{stage}"]
                if row["batch_limit"]:  # the model ran out of memory and halved its batches
                    stats.result.batch_size = min(stats.result.batch_size, row["batch_limit"])

    def _start_gate(self) -> Any:
        """The run's commit gate, on the driver's own node: a gate elsewhere would die with
        its node (found by the node-removal test) and stop every commit with it."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(
            node_id=self.ray.get_runtime_context().get_node_id(), soft=False
        )
        gate = self.ray.remote(num_cpus=0, scheduling_strategy=here, runtime_env=WORKER_ENV)
        return gate(CommitGate).remote()

    def _stop(self, job: Job) -> None:
        """Close the commit gate, wait (up to ``STOP_WAIT_S``) for the commits under way,
        and end the pool: then the output holds all this run will ever have written."""
        gate, stats = self._gate, self._stats
        self._gate = self._stats = None
        if gate is None:
            return
        ray = self.ray
        try:
            pending = ray.get(gate.close.remote())
            deadline = time.monotonic() + STOP_WAIT_S
            while pending and time.monotonic() < deadline:
                time.sleep(0.05)
                pending = ray.get(gate.pending.remote())
        except ray.exceptions.RayError as e:  # gone: no worker can commit through it either
            logger.warning("ray: the commit gate is gone (%s)", type(e).__name__)
            pending = 0
        if pending:  # a write that hangs: its part may still appear, and --resume sees it
            logger.warning("ray: %d unit commit(s) did not finish in time", pending)
        close = getattr(stats, "close", None)
        if close is not None:
            close()  # Ray Data ends the actor pool
        ray.kill(gate)

    def _count_committed(self, job: Job, result: EngineResult) -> None:
        """What this run committed, from the part names (exact whatever Ray retried); a
        unit committed twice keeps one part."""
        from batchvision.io import outdir

        cfg = job.config
        earlier = job.committed or units.Committed()
        now = outdir.read_units(cfg.output, cfg.storage)
        # New units, and damaged shards' parts replaced by whole ones.
        new = [
            p for k, p in now.units.items() if getattr(earlier.units.get(k), "name", "") != p.name
        ]
        # The run record's writer: what this run committed, though its workers wrote it.
        job.writer.rows_written = sum(p.rows for p in new)
        job.writer.parts_written = len(new)
        result.error = sum(p.errors for p in new)
        result.ok = job.writer.rows_written - result.error


#: Seconds a stopping run waits for the unit commits under way.
STOP_WAIT_S = 30.0

#: The run's own workers (model actors, the batch-size search, the commit gate) run at
#: the driver's scheduling priority. Ray starts workers at niceness 15, below everything
#: else on the node: on 2 cores the driver's and Ray's own daemons, a few percent of a
#: core, then preempted the model's threads, stalling its intra-op barrier (resnet50
#: at 0.69-0.75x the local engine; bench_engines.py, docs/benchmarks.md).
WORKER_ENV = {"env_vars": {"RAY_worker_niceness": "0"}}

#: Inputs an actor call runs at least (whole units): Ray Data costs its driver about 5 ms
#: of CPU per task (bench_driver.py), so tasks of 4,096 inputs keep it near 1 us a row.
TASK_ROWS = 4096


def units_per_task(part_rows: int) -> int:
    """Units an actor call runs: one unit of ``TASK_ROWS`` or more, else enough of them."""
    return max(1, math.ceil(TASK_ROWS / part_rows))


@dataclass(frozen=True)
class Pool:
    """The unit worker actors: how many (``min``..``max``, autoscaling), and each one's share."""

    min_actors: int
    max_actors: int
    num_gpus: float
    num_cpus: float
    threads: int


def _raise_fatal(row: dict[str, Any]) -> None:
    """Stop the run with what stopped a unit, as the local engine would raise it."""
    message, kind = row["fatal"], row["fatal_kind"]
    if kind == "stopped":  # refused by the gate while this run goes on: it was lost
        raise OutputWriteError(
            f"unit {row['key']} could not be committed: the run's commit gate is gone; the "
            "parts written before are complete - run the same command with --resume"
        )
    if not message:
        return
    if kind == "storage_auth":
        raise StorageAuthError(message)
    if kind == "output_write":
        raise OutputWriteError(message)
    raise ConfigError(message)


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
