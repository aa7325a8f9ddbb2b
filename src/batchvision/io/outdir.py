"""The output folder and its run record: one module owns both.

What lives here: preparing the output folder (and ``--mask-dir``) for a new, resumed or
replaced run; the run manifest (``_manifest.json``: what was run, with which settings,
and each run's outcome) and the checks that decide whether ``--resume`` may add rows to
it; and reading back which ids earlier runs committed. Part files themselves are encoded
and committed by ``sinks.PartWriter``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchvision import __version__
from batchvision.config import PreprocessConfig, RunConfig
from batchvision.errors import OutputDirError
from batchvision.io import storage
from batchvision.io.sinks import (
    EXTENSIONS,
    MASK_SUFFIX,
    PART_PREFIX,
    REPORT_NAME,
    PartWriter,
    _write_atomic,
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


def _is_data_name(name: str) -> bool:
    return (
        "/" not in name
        and os.path.splitext(name)[1] in EXTENSIONS.values()
        and not name.startswith(("_", "."))
    )


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
    """Every key under the output prefix, relative to it (sub-prefixes included)."""
    try:
        return [rel for rel, _ in storage.list_files(out_dir, options)]
    except OSError as e:
        raise OutputDirError(f"--output {out_dir!r} cannot be listed: {storage.describe(e)}") from e


def prepare_output_dir(
    out_dir: str,
    *,
    resume: bool,
    overwrite: bool,
    storage_options: StorageOptions | None = None,
    mask_dir: str | None = None,
) -> None:
    """Create ``out_dir``; refuse a non-empty one unless resuming or overwriting.

    ``--overwrite`` deletes only what batchvision wrote (parts, temporaries, manifest) and
    refuses a folder holding anything else, so a mistyped path cannot wipe user files. An
    S3 prefix is "non-empty" when any key lies under it.
    """
    if storage.is_uri(out_dir):
        _prepare_s3_output(out_dir, resume, overwrite, storage_options or StorageOptions())
        return
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise OutputDirError(f"--output {out_dir!r} exists and is not a folder")
    entries = sorted(p.name for p in root.iterdir()) if root.exists() else []
    _check_reusable(out_dir, entries, resume, overwrite, MANIFEST_NAME in entries)
    if entries and overwrite:
        ours = _ours(entries)
        # A --mask-dir inside the output folder is cleared by prepare_mask_dir.
        keep = Path(mask_dir).resolve() if mask_dir else None
        _refuse_foreign(
            out_dir, [e for e in entries if e not in ours and (root / e).resolve() != keep]
        )
        for name in ours:
            (root / name).unlink()
    if resume:
        for p in root.glob(f".{PART_PREFIX}*.tmp"):
            p.unlink()  # a part that was being written when the last run died
    root.mkdir(parents=True, exist_ok=True)


def _prepare_s3_output(
    out_dir: str, resume: bool, overwrite: bool, options: StorageOptions
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
        ours = _ours(entries)
        _refuse_foreign(out_dir, [e for e in entries if e not in ours])
        for name in ours:
            storage.delete_object(loc.child(name), options)
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


def _ours(entries: list[str]) -> list[str]:
    """The names among ``entries`` (top-level names in the output) that batchvision wrote."""
    has_manifest = MANIFEST_NAME in entries
    ours = []
    for name in entries:
        part = name.startswith(PART_PREFIX) and _is_data_name(name)
        tmp = name.startswith(f".{PART_PREFIX}") and name.endswith(".tmp") and "/" not in name
        own = (part or name == REPORT_NAME) and has_manifest
        if own or tmp or name in (MANIFEST_NAME, f".{MANIFEST_NAME}.tmp"):
            ours.append(name)
    return ours


@dataclass
class Written:
    """What earlier runs left in an output folder: their ids and row counts by status."""

    ids: set[str] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)


def read_written(out_dir: str, storage_options: StorageOptions | None = None) -> Written:
    """Every id and status already committed to ``out_dir``'s part files."""
    options = storage_options or StorageOptions()
    written = Written()
    for path in data_files(out_dir, options):
        ids, statuses = _read_ids_statuses(path, options)
        written.ids.update(ids)
        written.statuses.update(statuses)
    return written


def _read_ids_statuses(path: str, options: StorageOptions) -> tuple[list[str], list[str]]:
    source: Any = path
    if storage.is_uri(path):
        source = pa.BufferReader(storage.read_object(path, options))
    if path.endswith(".parquet"):
        table = pq.read_table(source, columns=["id", "status"])
    elif path.endswith(".csv"):
        opts = pacsv.ConvertOptions(
            include_columns=["id", "status"],
            column_types={"id": pa.string(), "status": pa.string()},
        )
        table = pacsv.read_csv(source, convert_options=opts)
    else:
        text = (
            source.read().decode("utf-8")
            if storage.is_uri(path)
            else Path(path).read_text(encoding="utf-8")
        )
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [r["id"] for r in rows], [r["status"] for r in rows]
    return table.column("id").to_pylist(), table.column("status").to_pylist()


def read_manifest(
    out_dir: str, storage_options: StorageOptions | None = None
) -> dict[str, Any] | None:
    """The run manifest, or ``None`` when there is none."""
    if storage.is_uri(out_dir):
        uri = storage.parse_uri(out_dir).child(MANIFEST_NAME)
        options = storage_options or StorageOptions()
        try:
            text = storage.read_object(uri, options).decode("utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            storage.check_auth(e, uri, options)
            raise OutputDirError(f"{uri} cannot be read: {storage.describe(e)}") from e
        data: dict[str, Any] = json.loads(text)
        return data
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data


def write_manifest(
    out_dir: str, manifest: dict[str, Any], storage_options: StorageOptions | None = None
) -> None:
    """Write ``_manifest.json`` atomically."""
    text = json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n"
    _write_atomic(out_dir, MANIFEST_NAME, text.encode("utf-8"), storage_options or StorageOptions())


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
)


def new_manifest(
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


def check_resumable(previous: dict[str, Any], current: dict[str, Any]) -> None:
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
