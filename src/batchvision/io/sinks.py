"""Where results go: plain-Arrow part files written atomically, and the run manifest.

The output is a local folder or an ``s3://bucket/prefix``. Locally, a part file is written
under a hidden temporary name, fsynced and renamed when complete; on S3 it is encoded in
memory and uploaded to its final key in one PUT (or multipart upload), and S3 shows a key
only once its upload completes. Either way a reader (or ``--resume``) never sees half a
part, whatever moment the process dies at.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchvision.errors import OutputWriteError
from batchvision.io import shards, storage, units
from batchvision.io.storage import StorageOptions

logger = logging.getLogger(__name__)

#: Where ``batchvision report`` writes by default; ``--overwrite`` may delete it. The
#: leading ``_`` makes pyarrow (and pandas through it) skip it when reading the folder.
REPORT_NAME = "_report.html"
#: The default report name of earlier versions: still ours to delete with ``--overwrite``.
OLD_REPORT_NAME = "report.html"
PART_PREFIX = "part-"
#: A part's name ends with its format's extension. A ``lance`` part is the JSON record of
#: its fragments (``io.lance_parts``); the rows are in the output's Lance dataset.
EXTENSIONS = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl", "lance": ".lance.json"}
MASK_SUFFIX = ".png"

COMMON_FIELDS = (
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
)


def is_list_type(t: pa.DataType) -> bool:
    """Any Arrow list type: variable, large or fixed-size."""
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def list_array(values: np.ndarray, valid: np.ndarray, type_: pa.DataType) -> pa.Array:
    """Rows of a 2-D array as an Arrow list column; null where ``valid`` is False."""
    n, k = values.shape[0], values.shape[1] if values.ndim == 2 else 0
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    flat = pa.array(
        values.reshape(-1).tolist() if values.dtype == object else values.reshape(-1), type=type_
    )
    return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~valid))


def common_columns(batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, pa.Array]:
    """The columns every task writes first; a task adds its own (``tasks.Task.to_table``)."""
    err = ~ok
    return {
        "id": pa.array(batch["id"].tolist(), pa.string()),
        "path": pa.array(batch["path"].tolist(), pa.string()),
        "status": pa.array(batch["status"].tolist(), pa.string()),
        "error": pa.array(batch["error"].tolist(), pa.string()),
        "width": pa.array(batch["width"], pa.int32(), mask=err),
        "height": pa.array(batch["height"], pa.int32(), mask=err),
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
    return table.set_column(i, pa.field("mask_path", pa.string()), pa.array(paths, pa.string()))


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
        for i, fld in enumerate(table.schema):
            if not is_list_type(fld.type):
                continue
            as_json = [None if v is None else json.dumps(v) for v in table.column(i).to_pylist()]
            table = table.set_column(i, fld.name, pa.array(as_json, pa.string()))
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink)
        return bytes(sink.getvalue())
    lines = (
        json.dumps(row, ensure_ascii=False, allow_nan=False, default=str) + "\n"
        for row in table.to_pylist()
    )
    return "".join(lines).encode("utf-8")


def part_format(name: str) -> str | None:
    """The format of the part file named ``name`` (by its extension), if it is one."""
    return next((fmt for fmt, ext in EXTENSIONS.items() if name.endswith(ext)), None)


def encode_part(table: pa.Table, fmt: str, out_dir: str, options: StorageOptions) -> bytes:
    """The bytes of ``table``'s part file in ``fmt``, to commit with :func:`write_atomic`.

    For ``lance`` the rows are written here, as fragment files no dataset version names
    yet, and the part file is their record (``io.lance_parts``).
    """
    if fmt == "lance":
        from batchvision.io import lance_parts

        return lance_parts.write_part(table, out_dir, options)
    return encode_table(table, fmt)


def write_atomic(out_dir: str, name: str, data: bytes, options: StorageOptions) -> None:
    """Make ``out_dir/name`` hold ``data``, all or nothing.

    Raises:
        OutputWriteError: the write failed (disk full, storage refusing it); nothing of
            ``name`` is left behind.
    """
    if storage.is_uri(out_dir):
        uri = storage.parse_uri(out_dir).child(name)
        try:
            storage.write_object(uri, data, options)
        except OSError as e:  # still failing after the SDK's retries: the run cannot go on
            raise OutputWriteError(f"cannot write {uri}: {storage.describe(e)}") from e
        return
    _replace_file(os.path.join(out_dir, name), data)


def temp_name(name: str) -> str:
    """A hidden temporary name for ``name``, unique to this writer (``.NAME.TOKEN.tmp``)."""
    return f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def _replace_file(final: str, data: bytes) -> None:
    """Write ``final`` all or nothing: a hidden temporary beside it, fsynced, renamed.

    The temporary's name is unique to this writer, so two processes writing the same file
    never write into one temporary. On failure the temporary is removed.
    """
    folder, name = os.path.split(final)
    tmp = os.path.join(folder, temp_name(name))
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            _fault_hook("part_write", name, tmp)
            f.write(data[half:])
            f.flush()
            # The rename must not expose a file whose bytes are still in the page cache only.
            os.fsync(f.fileno())
        _fault_hook("part_rename", name, tmp)
        os.replace(tmp, final)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputWriteError(_write_failure(final, e)) from e


def _write_failure(final: str, e: OSError) -> str:
    what = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = f"{what} (the disk or quota is full)"
    return (
        f"cannot write {final}: {what}; the parts written before are complete - fix this "
        "(e.g. free space), then run the same command with --resume"
    )


#: Test hook (the variable the Ray engine reads too): ``part_write_hang:MARKER`` or
#: ``part_rename_hang:MARKER`` makes the writer stop inside the third part's write (half
#: its bytes in the temporary) or between its fsync and rename: it writes the temporary's
#: path to the file MARKER and sleeps, so a test can kill it at that very moment.
FAULT_INJECT_ENV = "BATCHVISION_FAULT_INJECT"
_HANG_AFTER_PARTS = 2
_parts_seen = [0]


def _fault_hook(point: str, name: str, tmp: str) -> None:
    spec = os.environ.get(FAULT_INJECT_ENV)
    if not spec or not name.startswith(PART_PREFIX):
        return
    if point == "part_write":
        _parts_seen[0] += 1
    kind, _, marker = spec.partition(":")
    if kind != f"{point}_hang" or _parts_seen[0] <= _HANG_AFTER_PARTS:
        return
    logger.warning("%s: holding the writer inside %s (test hook)", FAULT_INJECT_ENV, point)
    Path(marker).write_text(tmp, encoding="utf-8")
    time.sleep(3600)


def part_name(run_id: str, seq: int, rows: int, data: bytes, fmt: str) -> str:
    """A part's file name: the run that wrote it, its number, its row count and CRC-32.

    The name is committed with the bytes (one rename, one PUT), so ``--resume`` can tell a
    damaged part (truncated, overwritten in the middle) from a complete one without any
    other record, and ``--overwrite`` can tell this tool's parts from a user's files.
    """
    crc = zlib.crc32(data)
    return f"{PART_PREFIX}{run_id}-{seq:05d}-n{rows}-c{crc:08x}{EXTENSIONS[fmt]}"


class PartWriter:
    """Buffers result tables and commits them as part files, atomically.

    A part is committed when ``part_rows`` rows are buffered or ``flush_seconds`` have
    passed since the last commit, and on ``close()``. A crash loses at most the rows
    buffered since the last commit; ``--resume`` redoes exactly those. After a failed
    commit (``OutputWriteError``: disk full, ...) the writer drops its buffer and writes
    nothing more, so ``close()`` in an engine's ``finally`` cannot fail a second time.
    ``guard`` is called before each commit (the output lock checks it is still held).
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
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.storage_options = storage_options or StorageOptions()
        self.mask_dir = None if mask_dir is None else os.path.abspath(mask_dir)
        self.fmt = fmt
        self.part_rows = part_rows
        self.flush_seconds = flush_seconds
        self.run_id = run_id or new_run_id()
        self.guard = guard
        self.parts_written = 0
        self.rows_written = 0
        self.write_seconds = 0.0
        self.failed = False
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._last_flush = time.monotonic()

    def add(self, table: pa.Table) -> None:
        """Buffer ``table``; commits a part when the buffer is due.

        With ``mask_dir``, a segment table's mask PNGs are written there first (each file
        complete before the part that names it is committed).
        """
        if self.failed:
            return
        if self.mask_dir is not None and "mask" in table.column_names:
            table = self._failing_safely(masks_to_files, table, self.mask_dir)
        if table.num_rows:
            self._buffer.append(table)
            self._buffered += table.num_rows
        due = time.monotonic() - self._last_flush >= self.flush_seconds
        if self._buffered >= self.part_rows or (due and self._buffered):
            self.flush()

    def flush(self) -> None:
        """Commit everything buffered as one part file (no-op when empty)."""
        self._last_flush = time.monotonic()
        if not self._buffered or self.failed:
            return
        t0 = time.perf_counter()
        if self.guard is not None:
            self._failing_safely(self.guard)
        table = pa.concat_tables(self._buffer)
        data = self._failing_safely(self._encode, table)
        name = part_name(self.run_id, self.parts_written, table.num_rows, data, self.fmt)
        self._failing_safely(write_atomic, self.out_dir, name, data, self.storage_options)
        self.parts_written += 1
        self.rows_written += table.num_rows
        self._buffer, self._buffered = [], 0
        self.write_seconds += time.perf_counter() - t0

    def commit_unit(self, unit: units.Unit, table: pa.Table) -> None:
        """Commit a whole unit (a shard's samples) as one part named after it, at once;
        the part of it an earlier run left damaged (``unit.replaces``) is deleted after."""
        if self.failed:
            return
        t0 = time.perf_counter()
        if self.guard is not None:
            self._failing_safely(self.guard)
        if self.mask_dir is not None and "mask" in table.column_names:
            table = self._failing_safely(masks_to_files, table, self.mask_dir)
        data = self._failing_safely(self._encode, table)
        name = unit_part_name(unit, table, data, self.fmt)
        self._failing_safely(write_atomic, self.out_dir, name, data, self.storage_options)
        if unit.replaces and unit.replaces != name:
            units.delete_part(self.out_dir, unit.replaces, self.storage_options)
        self.parts_written += 1
        self.rows_written += table.num_rows
        self.write_seconds += time.perf_counter() - t0

    def _encode(self, table: pa.Table) -> bytes:
        return encode_part(table, self.fmt, self.out_dir, self.storage_options)

    def _failing_safely(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            # The buffered rows are not committed: --resume redoes them. (Ctrl-C is not a
            # failure: the engine's close() still commits them.)
            self.failed = True
            self._buffer, self._buffered = [], 0
            raise

    def close(self) -> None:
        """Commit what is left."""
        self.flush()


def unit_part_name(unit: units.Unit, table: pa.Table, data: bytes, fmt: str) -> str:
    """The name of ``unit``'s part holding ``table`` encoded as ``data`` (see
    ``units.unit_part_name``): its rows, errors, and whether a shard's damage is among them."""
    statuses = table.column("status").to_pylist()
    errors = len(statuses) - statuses.count("ok")
    damaged = any(shards.is_damage(e) for e in table.column("error").to_pylist())
    return units.unit_part_name(unit, table.num_rows, errors, data, EXTENSIONS[fmt], damaged)


def new_run_id() -> str:
    """A short id for one run; its part names carry it."""
    return uuid.uuid4().hex[:8]
