"""Where results go: plain-Arrow part files written atomically, and the run manifest.

The output is a local folder or an ``s3://bucket/prefix``. Locally, a part file is written
under a hidden temporary name, fsynced and renamed when complete; on S3 it is encoded in
memory and uploaded to its final key in one PUT (or multipart upload), and S3 shows a key
only once its upload completes. Either way a reader (or ``--resume``) never sees half a
part, whatever moment the process dies at.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchvision.errors import OutputDirError
from batchvision.io import storage
from batchvision.io.storage import StorageOptions

logger = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.json"
#: Where ``batchvision report`` writes by default; ``--overwrite`` may delete it. The
#: leading ``_`` makes pyarrow (and pandas through it) skip it when reading the folder.
REPORT_NAME = "_report.html"
#: The default report name of earlier versions: still ours to delete with ``--overwrite``.
OLD_REPORT_NAME = "report.html"
PART_PREFIX = "part-"
EXTENSIONS = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
LIST_COLUMNS = ("topk_ids", "topk_labels", "topk_scores", "embedding", "classes")
MASK_SUFFIX = ".png"

_COMMON_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
]
CLASS_STRUCT = pa.struct(
    [pa.field("id", pa.int32()), pa.field("label", pa.string()), pa.field("fraction", pa.float32())]
)
SEGMENT_FIELDS = [
    pa.field("mask_width", pa.int32()),
    pa.field("mask_height", pa.int32()),
    pa.field("classes", pa.list_(CLASS_STRUCT)),
]
#: segment rows carry the PNG in ``mask``; with ``--mask-dir`` a ``mask_path`` instead.
SEGMENT_SCHEMA = pa.schema([*_COMMON_FIELDS, pa.field("mask", pa.binary()), *SEGMENT_FIELDS])
SEGMENT_FILES_SCHEMA = pa.schema(
    [*_COMMON_FIELDS, pa.field("mask_path", pa.string()), *SEGMENT_FIELDS]
)
EMBED_SCHEMA = pa.schema([*_COMMON_FIELDS, pa.field("embedding", pa.list_(pa.float32()))])

CLASSIFY_SCHEMA = pa.schema(
    [
        *_COMMON_FIELDS,
        pa.field("label", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("topk_ids", pa.list_(pa.int32())),
        pa.field("topk_labels", pa.list_(pa.string())),
        pa.field("topk_scores", pa.list_(pa.float32())),
    ]
)


def _list_array(values: np.ndarray, valid: np.ndarray, type_: pa.DataType) -> pa.Array:
    n, k = values.shape[0], values.shape[1] if values.ndim == 2 else 0
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    flat = pa.array(
        values.reshape(-1).tolist() if values.dtype == object else values.reshape(-1), type=type_
    )
    return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~valid))


def batch_to_table(batch: dict[str, np.ndarray]) -> pa.Table:
    """A postprocessed batch to the output table: plain Arrow types, nulls on error rows.

    The task is told by the columns: ``mask`` (segment), ``embedding`` (embed) or
    ``label`` (classify).
    """
    ok = np.asarray(batch["status"] == "ok")
    err = ~ok
    common = {
        "id": pa.array(batch["id"].tolist(), pa.string()),
        "path": pa.array(batch["path"].tolist(), pa.string()),
        "status": pa.array(batch["status"].tolist(), pa.string()),
        "error": pa.array(batch["error"].tolist(), pa.string()),
        "width": pa.array(batch["width"], pa.int32(), mask=err),
        "height": pa.array(batch["height"], pa.int32(), mask=err),
    }
    if "mask" in batch:
        return pa.table({**common, **_segment_columns(batch, err)}, schema=SEGMENT_SCHEMA)
    if "embedding" in batch:
        emb = np.asarray(batch["embedding"], dtype=np.float32)
        common["embedding"] = _list_array(emb, ok, pa.float32())
        return pa.table(common, schema=EMBED_SCHEMA)
    columns = {
        **common,
        "label": pa.array(batch["label"].tolist(), pa.string()),
        "score": pa.array(batch["score"], pa.float32(), mask=err),
        "topk_ids": _list_array(batch["topk_ids"], ok, pa.int32()),
        "topk_labels": _list_array(batch["topk_labels"], ok, pa.string()),
        "topk_scores": _list_array(batch["topk_scores"], ok, pa.float32()),
    }
    return pa.table(columns, schema=CLASSIFY_SCHEMA)


def _segment_columns(batch: dict[str, np.ndarray], err: np.ndarray) -> dict[str, pa.Array]:
    return {
        "mask": pa.array(batch["mask"].tolist(), pa.binary()),
        "mask_width": pa.array(batch["mask_width"], pa.int32(), mask=err),
        "mask_height": pa.array(batch["mask_height"], pa.int32(), mask=err),
        "classes": pa.array(batch["classes"].tolist(), pa.list_(CLASS_STRUCT)),
    }


# --- mask files ----------------------------------------------------------------------------

_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.+=,@ "
_MAX_NAME = 200


def mask_file_name(item_id: str) -> str:
    """A relative file name for ``item_id``'s mask: distinct ids give distinct names.

    Every character outside a safe set is percent-encoded (``%`` included), so the mapping
    is one-to-one; ``/`` keeps subfolders. Components that would be empty, ``.``, ``..`` or
    hidden get their leading dot (or an empty marker) encoded too, so nothing escapes the
    mask folder or hides. Over-long components are shortened with a hash of the full id.
    """
    import hashlib

    parts = []
    for comp in item_id.split("/"):
        enc = urllib.parse.quote(comp, safe=_SAFE)
        if not enc:
            enc = "%"  # never produced by quote, so it cannot collide
        elif enc.startswith("."):
            enc = "%2E" + enc[1:]
        if len(enc.encode()) > _MAX_NAME:
            digest = hashlib.sha256(item_id.encode()).hexdigest()[:16]
            enc = f"{enc[: _MAX_NAME - 20]}~{digest}"
        parts.append(enc)
    parts[-1] += MASK_SUFFIX
    return "/".join(parts)


def write_mask_file(mask_dir: str, item_id: str, data: bytes) -> str:
    """Write one mask PNG atomically (hidden temporary, fsync, rename); returns its path."""
    final = os.path.join(mask_dir, *mask_file_name(item_id).split("/"))
    os.makedirs(os.path.dirname(final), exist_ok=True)
    _replace_file(final, data)
    return final


def masks_to_files(table: pa.Table, mask_dir: str) -> pa.Table:
    """Write a segment table's ``mask`` PNGs under ``mask_dir``; ``mask_path`` replaces it."""
    paths = [
        None if data is None else write_mask_file(mask_dir, item_id, data)
        for item_id, data in zip(
            table.column("id").to_pylist(), table.column("mask").to_pylist(), strict=True
        )
    ]
    i = table.schema.get_field_index("mask")
    table = table.set_column(i, "mask_path", pa.array(paths, pa.string()))
    return table.cast(SEGMENT_FILES_SCHEMA)


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


def encode_table(table: pa.Table, fmt: str) -> bytes:
    """A whole part file's bytes in ``fmt``."""
    if fmt == "parquet":
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return bytes(sink.getvalue())
    # CSV and JSON have no bytes type: binary columns (mask PNGs) are written as base64.
    for i, fld in enumerate(table.schema):
        if pa.types.is_binary(fld.type):
            text = [
                None if v is None else base64.b64encode(v).decode()
                for v in table.column(i).to_pylist()
            ]
            table = table.set_column(i, fld.name, pa.array(text, pa.string()))
    if fmt == "csv":
        # CSV has no list type: list columns are written as JSON arrays.
        for name in LIST_COLUMNS:
            i = table.schema.get_field_index(name)
            if i < 0:
                continue
            as_json = [None if v is None else json.dumps(v) for v in table.column(i).to_pylist()]
            table = table.set_column(i, name, pa.array(as_json, pa.string()))
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink)
        return bytes(sink.getvalue())
    lines = (
        json.dumps(row, ensure_ascii=False, allow_nan=False, default=str) + "\n"
        for row in table.to_pylist()
    )
    return "".join(lines).encode("utf-8")


def _write_atomic(out_dir: str, name: str, data: bytes, options: StorageOptions) -> None:
    """Make ``out_dir/name`` hold ``data``, all or nothing."""
    if storage.is_uri(out_dir):
        uri = storage.parse_uri(out_dir).child(name)
        try:
            storage.write_object(uri, data, options)
        except OSError as e:  # still failing after the SDK's retries: the run cannot go on
            raise OutputDirError(f"cannot write {uri}: {storage.describe(e)}") from e
        return
    _replace_file(os.path.join(out_dir, name), data)


def _replace_file(final: str, data: bytes) -> None:
    """Write ``final`` all or nothing: a hidden ``.NAME.tmp`` beside it, fsynced, renamed."""
    folder, name = os.path.split(final)
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        # The rename below must not expose a file whose bytes are still in the page cache only.
        os.fsync(f.fileno())
    os.replace(tmp, final)


class PartWriter:
    """Buffers result tables and commits them as part files, atomically.

    A part is committed when ``part_rows`` rows are buffered or ``flush_seconds`` have
    passed since the last commit, and on ``close()``. A crash loses at most the rows
    buffered since the last commit; ``--resume`` redoes exactly those.
    """

    def __init__(
        self,
        out_dir: str,
        fmt: str,
        *,
        part_rows: int = 10_000,
        flush_seconds: float = 30.0,
        run_id: str | None = None,
        storage_options: StorageOptions | None = None,
        mask_dir: str | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.storage_options = storage_options or StorageOptions()
        self.mask_dir = None if mask_dir is None else os.path.abspath(mask_dir)
        self.fmt = fmt
        self.part_rows = part_rows
        self.flush_seconds = flush_seconds
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.parts_written = 0
        self.rows_written = 0
        self.write_seconds = 0.0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._last_flush = time.monotonic()

    def add(self, table: pa.Table) -> None:
        """Buffer ``table``; commits a part when the buffer is due.

        With ``mask_dir``, a segment table's mask PNGs are written there first (each file
        complete before the part that names it is committed).
        """
        if self.mask_dir is not None and "mask" in table.column_names:
            table = masks_to_files(table, self.mask_dir)
        if table.num_rows:
            self._buffer.append(table)
            self._buffered += table.num_rows
        due = time.monotonic() - self._last_flush >= self.flush_seconds
        if self._buffered >= self.part_rows or (due and self._buffered):
            self.flush()

    def flush(self) -> None:
        """Commit everything buffered as one part file (no-op when empty)."""
        self._last_flush = time.monotonic()
        if not self._buffered:
            return
        t0 = time.perf_counter()
        table = pa.concat_tables(self._buffer)
        name = f"{PART_PREFIX}{self.run_id}-{self.parts_written:05d}{EXTENSIONS[self.fmt]}"
        _write_atomic(self.out_dir, name, encode_table(table, self.fmt), self.storage_options)
        self.parts_written += 1
        self.rows_written += table.num_rows
        self._buffer, self._buffered = [], 0
        self.write_seconds += time.perf_counter() - t0

    def close(self) -> None:
        """Commit what is left."""
        self.flush()


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
        own = (part or name in (REPORT_NAME, OLD_REPORT_NAME)) and has_manifest
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
