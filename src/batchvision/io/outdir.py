"""The output folder and its run record: one module owns both.

What lives here: preparing the output folder (and ``--mask-dir``) for a new, resumed or
replaced run; the run manifest (``_manifest.json``: what was run, with which settings,
and each run's outcome) and the checks that decide whether ``--resume`` may add rows to
it; and reading back which ids earlier runs committed. Part files themselves are encoded
and committed by ``sinks.PartWriter``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import os
import platform
import re
import shutil
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchvision import __version__
from batchvision.config import PreprocessConfig, RunConfig
from batchvision.errors import OutputDirError, OutputWriteError
from batchvision.io import lance_parts, storage, units
from batchvision.io.outlock import LOCK_NAME
from batchvision.io.sinks import (
    MASK_SUFFIX,
    OLD_REPORT_NAME,
    PART_PREFIX,
    REPORT_NAME,
    PartWriter,
    part_format,
    write_atomic,
)
from batchvision.io.storage import StorageOptions

if TYPE_CHECKING:
    from batchvision.api import Summary
    from batchvision.engines.base import EngineResult
    from batchvision.models.spec import ModelSpec

logger = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.json"


def prepare_mask_dir(
    mask_dir: str,
    out_dir: str,
    *,
    resume: bool,
    overwrite: bool,
    previous: str | None,
    check_only: bool = False,
) -> None:
    """Create ``--mask-dir``; refuse a non-empty one unless it is the resumed/replaced run's.

    ``previous`` is the mask folder the output's manifest records. ``--overwrite`` deletes
    only mask PNGs and temporaries there, and refuses a folder holding anything else.
    ``check_only`` refuses without deleting, so a run can check every folder first.
    """
    root = Path(mask_dir).resolve()
    if root == Path(out_dir).resolve():
        raise OutputDirError("--mask-dir must not be the --output folder itself; use a subfolder")
    if root.exists() and not root.is_dir():
        raise OutputDirError(f"--mask-dir {mask_dir!r} exists and is not a folder")
    files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    ours = previous is not None and Path(previous).resolve() == root
    if files and not (resume or overwrite):
        raise OutputDirError(
            f"--mask-dir {mask_dir!r} is not empty ({len(files)} files); pass --resume or "
            "--overwrite for the run that wrote it, or choose an empty folder"
        )
    if files and not ours:
        raise OutputDirError(
            f"--mask-dir {mask_dir!r} holds files but the earlier run in the output folder "
            f"wrote its masks to {previous!r}; choose an empty folder or the same one"
        )
    stale = [p for p in files if p.name.startswith(".") and p.name.endswith(".tmp")]
    if overwrite:
        # Everything is checked before anything is deleted.
        foreign = [p.name for p in files if p.suffix != MASK_SUFFIX and p not in stale]
        if foreign:
            raise OutputDirError(
                f"--overwrite refused: --mask-dir {mask_dir!r} holds files batchvision did "
                f"not write ({', '.join(foreign[:5])}); choose an empty folder"
            )
    if check_only:
        return
    for p in files if overwrite else stale:
        p.unlink()  # with --resume only the masks being written when the last run died
    # The folder itself is made by the PartWriter's first mask: made here, inside the
    # output folder, it would make that folder look non-empty to prepare_output_dir.


# --- the output folder -------------------------------------------------------------------

#: A part this tool wrote: ``part-RUN-NNNNN-nROWS-cCRC32.EXT``. Earlier versions wrote
#: ``part-RUN-NNNNN.EXT`` (no row count or checksum); those are still read and resumed.
PART_RE = re.compile(
    r"^part-(?P<run>[0-9A-Za-z]+)-(?P<seq>\d{5,})(?:-n(?P<rows>\d+)-c(?P<crc>[0-9a-f]{8}))?"
    r"(?P<ext>\.parquet|\.csv|\.jsonl|\.lance\.json)$"
)
#: A damaged part set aside by ``--resume`` (readers skip names starting with ``_``).
DAMAGED_PREFIX = "_damaged-"


def _is_data_name(name: str) -> bool:
    return "/" not in name and part_format(name) is not None and not name.startswith(("_", "."))


def data_files(out_dir: str, storage_options: StorageOptions | None = None) -> list[str]:
    """Part files in ``out_dir``, as paths or URIs (names starting ``_`` or ``.`` are not data)."""
    if storage.is_uri(out_dir):
        loc = storage.parse_uri(out_dir)
        names = _list_s3_output(out_dir, storage_options or StorageOptions())
        return [loc.child(n) for n in names if _is_data_name(n)]
    root = Path(out_dir)
    if not root.is_dir():
        return []
    return sorted(str(p) for p in root.iterdir() if p.is_file() and _is_data_name(p.name))


def _list_s3_output(out_dir: str, options: StorageOptions) -> list[str]:
    """Every key under the output prefix, relative to it (sub-prefixes included).

    The output lock is not listed: it is the run's own, and not part of the output.
    """
    try:
        return [rel for rel, _ in storage.list_files(out_dir, options) if rel != LOCK_NAME]
    except OSError as e:
        raise OutputDirError(f"--output {out_dir!r} cannot be listed: {storage.describe(e)}") from e


def _entries(out_dir: str, options: StorageOptions) -> list[str]:
    if storage.is_uri(out_dir):
        return _list_s3_output(out_dir, options)
    root = Path(out_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name != LOCK_NAME)


def read_previous(
    out_dir: str, storage_options: StorageOptions | None = None
) -> dict[str, Any] | None:
    """The manifest of the run(s) that wrote ``out_dir``, with ``run_ids`` always present.

    A manifest written before run ids were recorded gets the run ids of the
    ``part-RUN-NNNNN`` names in the folder now: the parts of that version are recognised
    by their names alone, as they were then.
    """
    options = storage_options or StorageOptions()
    manifest = read_manifest(out_dir, options)
    if manifest is not None and not isinstance(manifest.get("run_ids"), list):
        found = {m["run"] for n in _entries(out_dir, options) if (m := PART_RE.match(n))}
        manifest["run_ids"] = sorted(found)
    return manifest


def prepare_output_dir(
    out_dir: str,
    *,
    resume: bool,
    overwrite: bool,
    storage_options: StorageOptions | None = None,
    mask_dir: str | None = None,
    previous: dict[str, Any] | None = None,
) -> None:
    """Create ``out_dir``; refuse a non-empty one unless resuming or overwriting.

    ``--overwrite`` deletes only what batchvision wrote: the parts of the runs that
    ``previous`` (the folder's manifest as ``read_previous`` gives it; read here when not
    given) records, temporaries and the manifest. It refuses a folder holding anything
    else, so a mistyped path cannot wipe user files, even one named like a part. An S3
    prefix is "non-empty" when any key lies under it. The run
    holds the output's lock (``outlock``) by now, so nothing else writes here meanwhile.
    """
    if storage.is_uri(out_dir):
        _prepare_s3_output(
            out_dir, resume, overwrite, storage_options or StorageOptions(), previous
        )
        return
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise OutputDirError(f"--output {out_dir!r} exists and is not a folder")
    entries = _entries(out_dir, StorageOptions())
    _check_reusable(out_dir, entries, resume, overwrite, MANIFEST_NAME in entries)
    if entries and overwrite:
        ours = _ours(entries, previous or read_previous(out_dir))
        # A --mask-dir inside the output folder is cleared by prepare_mask_dir.
        keep = Path(mask_dir).resolve() if mask_dir else None
        _refuse_foreign(
            out_dir, [e for e in entries if e not in ours and (root / e).resolve() != keep]
        )
        for name in ours:
            path = root / name
            if path.is_dir() and not path.is_symlink():  # the Lance dataset
                shutil.rmtree(path)
            else:
                path.unlink()
    if resume:
        for name in entries:
            if _is_temp(name):
                (root / name).unlink()  # being written when the last run died
    root.mkdir(parents=True, exist_ok=True)


def _prepare_s3_output(
    out_dir: str,
    resume: bool,
    overwrite: bool,
    options: StorageOptions,
    previous: dict[str, Any] | None,
) -> None:
    loc = storage.parse_uri(out_dir)
    bucket = storage.S3Location(loc.scheme, loc.anonymous, loc.bucket, "").uri
    try:
        bucket_kind = storage.file_type(bucket, options)
        out_kind = storage.file_type(out_dir, options) if loc.key else "folder"
    except OSError as e:
        raise OutputDirError(f"--output {out_dir!r}: {storage.describe(e)}") from e
    if bucket_kind == "missing":
        raise OutputDirError(f"--output {out_dir!r}: bucket {loc.bucket!r} does not exist")
    if out_kind == "file":
        raise OutputDirError(f"--output {out_dir!r} is an object, not a prefix")
    entries = _list_s3_output(out_dir, options)
    _check_reusable(out_dir, entries, resume, overwrite, MANIFEST_NAME in entries)
    if entries and overwrite:
        manifest = previous or read_previous(out_dir, options)
        ours = _ours(entries, manifest)
        _refuse_foreign(out_dir, [e for e in entries if e not in ours])
        dataset = [name for name in ours if _is_lance_dataset(name, manifest)]
        for name in ours:
            if name not in dataset:
                storage.delete_object(loc.child(name), options)
        if dataset:  # as one prefix: its "folder" markers go too
            storage.delete_prefix(loc.child(lance_parts.DATASET_NAME), options)
    # Nothing to create: a prefix exists once a key is written under it.


def _check_reusable(
    out_dir: str, entries: list[str], resume: bool, overwrite: bool, has_manifest: bool
) -> None:
    if entries and not (resume or overwrite):
        raise OutputDirError(
            f"--output {out_dir!r} is not empty ({len(entries)} entries); pass --resume to "
            "finish that run, --overwrite to replace it, or choose an empty folder"
        )
    if entries and resume and not has_manifest:
        raise OutputDirError(
            f"cannot --resume in {out_dir!r}: it has no {MANIFEST_NAME}, so it is not a "
            "batchvision output folder"
        )


def _refuse_foreign(out_dir: str, foreign: list[str]) -> None:
    if foreign:
        raise OutputDirError(
            f"--overwrite refused: {out_dir!r} holds files batchvision did not write "
            f"({', '.join(foreign[:5])}); choose an empty folder"
        )


def _is_temp(name: str) -> bool:
    """A writer's hidden temporary for a part or the manifest (``sinks.temp_name``)."""
    return (
        "/" not in name
        and name.endswith(".tmp")
        and name.startswith((f".{PART_PREFIX}", f".{MANIFEST_NAME}."))
    )


def _is_our_part(name: str, run_ids: set[str]) -> bool:
    """A part of the runs ``run_ids``: named with one of them, or a unit's part (named after
    its unit, not its run) in a folder whose manifest records runs."""
    m = PART_RE.match(name)
    if m is not None:
        return m["run"] in run_ids
    return bool(run_ids) and units.UNIT_PART_RE.match(name) is not None


def _recorded(name: str) -> tuple[int, int] | None:
    """The row count and CRC-32 a part's name records, if it records them."""
    m = PART_RE.match(name) or units.UNIT_PART_RE.match(name)
    if m is None or m["crc"] is None:
        return None
    return int(m["rows"]), int(m["crc"], 16)


def _ours(entries: list[str], manifest: dict[str, Any] | None) -> list[str]:
    """The names among ``entries`` (top-level names in the output) that batchvision wrote.

    A part is ours when its name carries the id of a run the manifest records; without a
    manifest no part is.
    """
    run_ids = set((manifest or {}).get("run_ids") or [])
    ours = []
    for name in entries:
        part = _is_our_part(name.removeprefix(DAMAGED_PREFIX), run_ids)
        own = part or (name in (REPORT_NAME, OLD_REPORT_NAME) and manifest is not None)
        own = own or _is_lance_dataset(name, manifest)
        if own or _is_temp(name) or name == MANIFEST_NAME:
            ours.append(name)
    return ours


def _is_lance_dataset(name: str, manifest: dict[str, Any] | None) -> bool:
    """The Lance dataset of a ``--format lance`` output (its folder; on S3 its keys)."""
    if manifest is None or manifest.get("format") != "lance":
        return False
    return name == lance_parts.DATASET_NAME or name.startswith(f"{lance_parts.DATASET_NAME}/")


@dataclass
class Written:
    """What earlier runs left in an output folder: their ids and row counts by status."""

    ids: set[str] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)
    #: The units among the parts (shards, and the Ray engine's units), from their names.
    committed: units.Committed = field(default_factory=lambda: units.Committed())
    #: Damaged parts set aside (their new names); their rows are written again.
    set_aside: list[str] = field(default_factory=list)

    @classmethod
    def of_units(cls, committed: units.Committed | None) -> Written:
        """What committed units hold, from their part names (no ids: skipped by unit)."""
        if committed is None:
            return cls()
        return cls(
            statuses=committed.statuses, set_aside=list(committed.removed), committed=committed
        )


class _Damaged(Exception):
    pass


def read_earlier(
    config: RunConfig, previous: dict[str, Any] | None, *, by_unit: bool
) -> tuple[Written, units.Committed | None]:
    """What earlier runs wrote to the output that ``config`` resumes (nothing otherwise):
    by id (every part read, checked and its ids kept), or ``by_unit`` (the part names
    listed, no part read; the committed units are returned too)."""
    if not config.resume:
        return Written(), None
    if by_unit:
        committed = read_units(config.output, config.storage, previous)
        return Written.of_units(committed), committed
    return read_written(config.output, config.storage, previous), None


def read_units(
    out_dir: str,
    storage_options: StorageOptions | None = None,
    previous: dict[str, Any] | None = None,
) -> units.Committed:
    """The units committed to ``out_dir``, from one listing of its names (no part is read).

    A data file that is not a unit's part is refused: parts of the local engine (or of
    earlier versions) are resumed by id, which that engine does.
    """
    options = storage_options or StorageOptions()
    names = [n for n in _entries(out_dir, options) if _is_data_name(n)]
    run_ids = set((previous or {}).get("run_ids") or [])
    for name in names:
        if units.UNIT_PART_RE.match(name) is not None:
            continue
        if previous is not None and _is_our_part(name, run_ids):
            raise OutputDirError(
                f"cannot --resume {out_dir!r} with --engine ray: {name} was written by the "
                "local engine (or an earlier version), whose parts are resumed by id; run the "
                "same command with --engine local, or --overwrite"
            )
        raise OutputDirError(
            f"cannot --resume in {out_dir!r}: {name} is not a part batchvision wrote "
            "there; move it out of the output folder, then run the command again"
        )
    return units.read_committed(out_dir, names, options)


def read_written(
    out_dir: str,
    storage_options: StorageOptions | None = None,
    previous: dict[str, Any] | None = None,
) -> Written:
    """Every id and status already committed to ``out_dir``'s part files.

    Each part is checked whole: its bytes against the CRC-32 and its rows against the
    count its name records (parts of earlier versions record neither: they must parse).
    A damaged part is renamed ``_damaged-NAME`` (readers skip it) and its rows are not
    counted as written, so this run writes them again. A data file that is not a part of
    the runs ``previous`` records is refused: its rows would mix with this run's.
    """
    options = storage_options or StorageOptions()
    run_ids = set((previous or {}).get("run_ids") or [])
    written = Written()
    paths = data_files(out_dir, options)
    names = [path.replace("\\", "/").rsplit("/", 1)[-1] for path in paths]
    for name in names:  # refused before any part is read
        if previous is not None and not _is_our_part(name, run_ids):
            raise OutputDirError(
                f"cannot --resume in {out_dir!r}: {name} is not a part batchvision wrote "
                "there; move it out of the output folder, then run the command again"
            )
    written.committed = units.read_committed(out_dir, names, options)
    # A damaged shard's part is read again whole, and replaced: its rows do not count.
    damaged = {p.name for p in written.committed.units.values() if p.damaged}
    removed = set(written.committed.removed)
    paths = [p for p, n in zip(paths, names, strict=True) if n not in damaged | removed]
    names = [n for n in names if n not in damaged | removed]
    # Parts are read whole (for their CRC): several at once, as S3 reads wait on the
    # network; one part's bytes per thread are held at a time.
    threads = options.read_concurrency if storage.is_uri(out_dir) else LOCAL_CHECK_THREADS
    with ThreadPoolExecutor(max(1, min(threads, len(paths))), "part-check") as pool:
        checked = pool.map(functools.partial(_check_part, options=options), paths)
        for name, outcome in zip(names, checked, strict=True):
            if isinstance(outcome, _Damaged):
                written.set_aside.append(_set_aside(out_dir, name, str(outcome), options))
                continue
            ids, statuses = outcome
            written.ids.update(ids)
            written.statuses.update(statuses)
    return written


#: Local parts checked at once by ``--resume`` (reads from a disk gain little from more).
LOCAL_CHECK_THREADS = 2


def _check_part(path: str, options: StorageOptions) -> tuple[list[str], list[str]] | _Damaged:
    """A part's ids and statuses, or why it is damaged (returned, so the caller sets it
    aside in order)."""
    try:
        return _read_part(path, options)
    except _Damaged as e:
        return e


def _read_part(path: str, options: StorageOptions) -> tuple[list[str], list[str]]:
    if storage.is_uri(path):
        try:
            data = storage.read_object(path, options)
        except OSError as e:
            storage.check_auth(e, path, options)
            raise OutputDirError(f"{path} cannot be read: {storage.describe(e)}") from e
    else:
        data = Path(path).read_bytes()
    recorded = _recorded(path.replace("\\", "/").rsplit("/", 1)[-1])
    if recorded is not None and zlib.crc32(data) != recorded[1]:
        raise _Damaged(
            f"its {len(data)} bytes do not match the CRC-32 in its name: truncated or changed"
        )
    try:
        if part_format(path) == "lance":  # the rows are in the fragment files it records
            folder = path.replace("\\", "/").rsplit("/", 1)[0]
            ids, statuses = lance_parts.read_ids_statuses(data, folder, options)
        else:
            ids, statuses = _decode_ids_statuses(data, os.path.splitext(path)[1])
    except (ValueError, KeyError, TypeError, OSError, pa.ArrowException) as e:
        raise _Damaged(f"unreadable: {' '.join(str(e).split())[:200]}") from e
    if recorded is not None and len(ids) != recorded[0]:
        raise _Damaged(f"it has {len(ids)} rows, its name records {recorded[0]}")
    return ids, statuses


def _read_ids_statuses(path: str, options: StorageOptions) -> tuple[list[str], list[str]]:
    """The ``id`` and ``status`` columns of one part (checked as ``read_written`` does)."""
    return _read_part(path, options)


def _decode_ids_statuses(data: bytes, ext: str) -> tuple[list[str], list[str]]:
    if ext == ".parquet":
        table = pq.read_table(pa.BufferReader(data), columns=["id", "status"])
    elif ext == ".csv":
        opts = pacsv.ConvertOptions(
            include_columns=["id", "status"],
            column_types={"id": pa.string(), "status": pa.string()},
        )
        table = pacsv.read_csv(pa.BufferReader(data), convert_options=opts)
    else:
        rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        return [r["id"] for r in rows], [r["status"] for r in rows]
    return table.column("id").to_pylist(), table.column("status").to_pylist()


def commit_lance(out_dir: str, storage_options: StorageOptions | None = None) -> int | None:
    """Commit the output's Lance dataset version holding exactly its committed parts'
    fragments (``lance_parts.commit``); returns the version. Every part record is read
    (O(parts)); a unit committed twice keeps one part, as ``units.read_committed`` does."""
    options = storage_options or StorageOptions()
    paths = data_files(out_dir, options)
    names = [p.replace("\\", "/").rsplit("/", 1)[-1] for p in paths]
    committed = units.read_committed(out_dir, names, options)
    kept = set(committed.removed)
    records = []
    for path, name in zip(paths, names, strict=True):
        if name in kept or part_format(name) != "lance":
            continue
        try:
            data = storage.read_object(path, options) if storage.is_uri(path) else None
            data = Path(path).read_bytes() if data is None else data
        except OSError as e:
            raise OutputDirError(f"{path} cannot be read: {storage.describe(e)}") from e
        recorded = _recorded(name)
        if recorded is not None and zlib.crc32(data) != recorded[1]:
            raise OutputDirError(
                f"part {name} does not match the CRC-32 in its name: truncated or changed; "
                "run the same command with --resume --engine local to set it aside"
            )
        records.append((name, data))
    return lance_parts.commit(out_dir, records, options)


def _set_aside(out_dir: str, name: str, why: str, options: StorageOptions) -> str:
    new = DAMAGED_PREFIX + name
    if storage.is_uri(out_dir):
        fs, loc = storage.filesystem(out_dir, options)
        fs.copy_file(f"{loc.path}/{name}", f"{loc.path}/{new}")
        fs.delete_file(f"{loc.path}/{name}")
    else:
        os.replace(os.path.join(out_dir, name), os.path.join(out_dir, new))
    logger.warning(
        "part %s is damaged (%s): set aside as %s, and this run writes its rows again; "
        "delete %s once you no longer need it",
        name,
        why,
        new,
        new,
    )
    return new


def read_manifest(
    out_dir: str, storage_options: StorageOptions | None = None
) -> dict[str, Any] | None:
    """The run manifest, or ``None`` when there is none."""
    if storage.is_uri(out_dir):
        uri = storage.parse_uri(out_dir).child(MANIFEST_NAME)
        options = storage_options or StorageOptions()
        try:
            data = storage.read_object(uri, options)
        except FileNotFoundError:
            return None
        except OSError as e:
            storage.check_auth(e, uri, options)
            raise OutputDirError(f"{uri} cannot be read: {storage.describe(e)}") from e
    else:
        uri = os.path.join(out_dir, MANIFEST_NAME)
        try:
            data = Path(uri).read_bytes()
        except FileNotFoundError:
            return None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OutputDirError(
            f"{uri} is damaged ({e}); this folder cannot be resumed - use --overwrite or "
            "another folder"
        ) from e
    if not isinstance(manifest, dict):
        raise OutputDirError(f"{uri} is not a batchvision manifest (not a JSON object)")
    return manifest


def write_manifest(
    out_dir: str,
    manifest: dict[str, Any],
    storage_options: StorageOptions | None = None,
    *,
    on_full: Callable[[], None] | None = None,
) -> None:
    """Write ``_manifest.json`` atomically.

    ``on_full`` frees space kept for this write (``OutputLock.free_reserve``): when the
    write fails, it is called and the write tried once more.
    """
    text = json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n"
    data = text.encode("utf-8")
    options = storage_options or StorageOptions()
    try:
        write_atomic(out_dir, MANIFEST_NAME, data, options)
    except OutputWriteError:
        if on_full is None:
            raise
        on_full()
        write_atomic(out_dir, MANIFEST_NAME, data, options)


# --- the run record ------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import numpy
    import PIL
    import pyarrow
    import torch
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
    "keep_columns",
    "shards",
)


def new_manifest(
    config: RunConfig,
    spec: ModelSpec,
    previous: dict[str, Any] | None,
    run_id: str,
    task_fields: dict[str, Any],
) -> dict[str, Any]:
    """This run's manifest: ``previous`` (when resuming) updated with this run's settings.

    ``task_fields`` are what the task records of itself (``Task.manifest_fields``).

    ``run_ids`` lists every run whose parts are in the folder, this one included, so that
    ``--overwrite`` and ``--resume`` know which files are batchvision's.
    """
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
            # The output's extra columns, and how samples were found in shards.
            "keep_columns": list(config.keep_columns),
            "shards": {
                "image_key": list(config.image_key),
                "image_column": config.image_column,
                "id_column": config.id_column,
                "manifest": config.manifest,
            },
            "inputs": list(config.inputs),
            # Where s3:// paths were read and written; credentials are never recorded.
            "s3_endpoint": config.s3_endpoint,
            "versions": _versions(),
        }
    )
    manifest.update(task_fields)
    manifest.setdefault("runs", [])
    manifest["run_ids"] = [*(previous or {}).get("run_ids", []), run_id]
    return manifest


_LATER_PREPROCESS_KEYS = (
    "resize_mode", "resize_hw", "crop_offset", "rescale_factor", "max_size", "size_multiple",
)  # fmt: skip


def check_resumable(
    previous: dict[str, Any], current: dict[str, Any], task_keys: tuple[str, ...] = ()
) -> None:
    """Refuse ``--resume`` when the run's settings differ from the earlier run's.

    ``task_keys`` (the task's ``resume_fields``) must be equal, and are different when the
    earlier manifest lacks them (an output of an earlier layout).
    """
    import json

    for key in task_keys:
        if previous.get(key) != current.get(key):
            raise OutputDirError(
                f"cannot --resume: {key} differs from the earlier run "
                f"({previous.get(key)!r} there, {current.get(key)!r} now): the rows would "
                "not agree; use the same settings, --overwrite, or a new --output"
            )
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


def record_run(
    manifest: dict[str, Any],
    config: RunConfig,
    summary: Summary,
    result: EngineResult,
    writer: PartWriter,
    earlier: Written,
) -> None:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest["runs"].append(
        {
            "run_id": writer.run_id,
            "finished_at": now,
            "status": "interrupted" if summary.interrupted else "complete",
            "config": asdict(config),
            "device": result.device,
            "precision": result.precision,
            "tf32": result.tf32,
            "runtime": manifest.get("runtime"),
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
            "parts_set_aside": earlier.set_aside,
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


def record_failure(
    manifest: dict[str, Any],
    config: RunConfig,
    writer: PartWriter,
    earlier: Written,
    message: str,
    storage_options: StorageOptions | None = None,
    on_full: Callable[[], None] | None = None,
) -> None:
    """Mark the run ``failed`` with ``message`` in the manifest, as far as it can be written.

    Called when writing the output failed mid-run (disk full, ...): the manifest is small
    and the failed part's temporary is gone, so it usually fits; if it does not, the
    manifest keeps saying ``running`` and ``--resume`` works the same.
    """
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest["runs"].append(
        {
            "run_id": writer.run_id,
            "finished_at": now,
            "status": "failed",
            "error_message": message,
            "config": asdict(config),
            "rows_written": writer.rows_written,
            "parts_written": writer.parts_written,
            "parts_set_aside": earlier.set_aside,
        }
    )
    manifest["status"] = "failed"
    try:
        write_manifest(config.output, manifest, storage_options, on_full=on_full)
    except OutputDirError as e:
        logger.error("the manifest could not be marked failed either: %s", e)
