"""The report's I/O edge: an output folder's manifest and part files, and image bytes.

Everything here reads; nothing decides what the report shows. Part files are read column
by column (only the columns asked for), and rows are fetched by index, so a million-row
output costs a few light columns plus the handful of sampled rows.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from batchvision.errors import OutputDirError
from batchvision.io import lance_parts, outdir, sinks, storage
from batchvision.io.storage import StorageOptions

logger = logging.getLogger(__name__)

# CSV carries no types: these are the string columns whose empty cells must stay strings
# (an all-empty `error` column would otherwise be typed null), and the nested columns that
# the CSV writer stores as JSON text.
_CSV_STRINGS = ("id", "path", "status", "error", "label", "mask_path")
_CSV_FLOATS = ("score",)
JSON_TEXT_COLUMNS = ("topk_ids", "topk_labels", "topk_scores", "classes", "embedding")


@dataclass(frozen=True)
class Part:
    """One committed part file: its rows, row-group sizes and stored bytes per column.

    A text part is one row group (it is read whole); its ``column_bytes`` is empty.
    """

    path: str
    fmt: str
    num_rows: int
    row_groups: tuple[int, ...] = ()
    column_bytes: dict[str, int] = field(default_factory=dict)


@dataclass
class OutputFolder:
    """A batchvision output folder opened for reading (local path or ``s3://`` URI)."""

    uri: str
    fs: pafs.FileSystem
    root: str
    manifest: dict[str, Any]
    parts: list[Part]
    columns: list[str]
    #: How to reach an ``s3://`` folder (a ``--format lance`` dataset is opened with it).
    storage: StorageOptions = field(default_factory=StorageOptions)

    @property
    def num_rows(self) -> int:
        return sum(p.num_rows for p in self.parts)

    def row_group_starts(self) -> np.ndarray:
        """Global index of the first row of every row group, in order."""
        sizes = [size for p in self.parts for size in (p.row_groups or (p.num_rows,))]
        return np.cumsum([0, *sizes])[:-1]

    def bytes_per_row(self, columns: list[str]) -> float:
        """Stored (compressed) bytes per row of ``columns`` (parquet metadata; 0 if unknown)."""
        total = sum(p.column_bytes.get(c, 0) for p in self.parts for c in columns)
        return total / self.num_rows if self.num_rows else 0.0

    def resolve(self, path: str) -> str:
        """A path stored in the output (e.g. ``mask_path``), made absolute against the folder."""
        if "://" in path or os.path.isabs(path):
            return path
        if self.uri.startswith("s3://"):
            return f"{self.uri.rstrip('/')}/{path}"
        return os.path.join(self.root, path)


def open_output(uri: str, options: StorageOptions | None = None) -> OutputFolder:
    """Open ``uri`` (a folder written by ``batchvision run``) for reading.

    ``options`` say how to reach an ``s3://`` folder (endpoint, retries), as for a run.

    Raises:
        OutputDirError: the folder does not exist, or holds neither a manifest nor parts.
    """
    try:
        if storage.is_uri(uri):
            fs, loc = storage.filesystem(uri, options or StorageOptions())
            root = loc.path.rstrip("/")
        elif "://" in uri:
            fs, root = pafs.FileSystem.from_uri(uri)
        else:
            fs, root = pafs.LocalFileSystem(), os.path.abspath(uri)
        info = fs.get_file_info(root)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise OutputDirError(f"cannot open output folder {uri!r}: {e}") from e
    if info.type != pafs.FileType.Directory:
        what = "does not exist" if info.type == pafs.FileType.NotFound else "is not a folder"
        raise OutputDirError(f"output folder {uri!r} {what}")
    entries = fs.get_file_info(pafs.FileSelector(root))
    exts = {v: k for k, v in sinks.EXTENSIONS.items()}
    files = sorted(
        e.path
        for e in entries
        if e.type == pafs.FileType.File
        and os.path.splitext(e.base_name)[1] in exts
        and not e.base_name.startswith(("_", "."))
    )
    manifest = _read_manifest(fs, f"{root}/{outdir.MANIFEST_NAME}")
    if manifest is not None and manifest.get("format") == "lance":
        options = options or StorageOptions()
        parts, columns = _lance_parts(uri, options)
        return OutputFolder(uri, fs, root, manifest, parts, columns, options)
    if manifest is None and not files:
        raise OutputDirError(
            f"{uri!r} is not a batchvision output folder: it has no {outdir.MANIFEST_NAME} "
            "and no part files"
        )
    parts, columns = [], []
    for path in files:
        part, names = _part(fs, path, exts[os.path.splitext(path)[1]])
        parts.append(part)
        columns += [c for c in names if c not in columns]
    return OutputFolder(uri, fs, root, manifest or {}, parts, columns)


def _lance_parts(uri: str, options: StorageOptions) -> tuple[list[Part], list[str]]:
    """A ``--format lance`` output's committed dataset version, as one part (none before
    its first commit: its rows are not readable yet)."""
    ds = _lance_dataset(uri, options, missing_ok=True)
    if ds is None:
        return [], []
    return [Part(lance_parts.dataset_uri(uri), "lance", ds.count_rows())], list(ds.schema.names)


def _lance_dataset(uri: str, options: StorageOptions, missing_ok: bool = False) -> Any:
    lance = lance_parts.require()
    try:
        return lance.dataset(
            lance_parts.dataset_uri(uri),
            storage_options=lance_parts.lance_storage_options(uri, options),
        )
    except (OSError, ValueError) as e:
        if missing_ok:
            logger.warning("%s holds no committed Lance dataset yet (%s)", uri, e)
            return None
        raise OutputDirError(f"cannot open the Lance dataset of {uri!r}: {e}") from e


def _read_manifest(fs: pafs.FileSystem, path: str) -> dict[str, Any] | None:
    try:
        with fs.open_input_stream(path) as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise OutputDirError(f"cannot read {path!r}: {e}") from e
    return data if isinstance(data, dict) else None


def _part(fs: pafs.FileSystem, path: str, fmt: str) -> tuple[Part, list[str]]:
    if fmt == "parquet":
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            meta, names = pf.metadata, list(pf.schema_arrow.names)
        sizes: list[int] = []
        column_bytes: dict[str, int] = {}
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            sizes.append(group.num_rows)
            for j in range(group.num_columns):
                chunk = group.column(j)
                top = chunk.path_in_schema.split(".")[0]  # nested leaves count for their column
                column_bytes[top] = column_bytes.get(top, 0) + chunk.total_compressed_size
        return Part(path, fmt, meta.num_rows, tuple(sizes), column_bytes), names
    table = _read_text_part(fs, path, fmt, None)
    return Part(path, fmt, table.num_rows), table.column_names


def _read_text_part(
    fs: pafs.FileSystem, path: str, fmt: str, columns: list[str] | None
) -> pa.Table:
    with fs.open_input_stream(path) as f:
        if fmt == "csv":
            types = {c: pa.string() for c in _CSV_STRINGS}
            types.update({c: pa.float32() for c in _CSV_FLOATS})
            opts = pacsv.ConvertOptions(column_types=types, include_columns=columns)
            return pacsv.read_csv(f, convert_options=opts)
        table = pajson.read_json(f)
    if columns is not None:
        table = table.select([c for c in columns if c in table.column_names])
    return table


def read_columns(out: OutputFolder, columns: list[str]) -> pa.Table:
    """``columns`` of every row, parts in order (missing columns come back as nulls)."""
    wanted = [c for c in columns if c in out.columns]
    tables = [_normalise(_read_part(out, p, wanted), wanted) for p in out.parts]
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in wanted})
    return pa.concat_tables(tables, promote_options="permissive")


def _read_part(out: OutputFolder, part: Part, columns: list[str]) -> pa.Table:
    if part.fmt == "lance":
        return _lance_dataset(out.uri, out.storage).to_table(columns=columns)
    if part.fmt == "parquet":
        with out.fs.open_input_file(part.path) as f:
            return pq.ParquetFile(f).read(columns=columns)
    return _read_text_part(out.fs, part.path, part.fmt, columns)


def _normalise(table: pa.Table, columns: list[str]) -> pa.Table:
    # A part may lack a column another part has (e.g. an all-null JSON field): add it.
    for c in columns:
        if c not in table.column_names:
            table = table.append_column(c, pa.nulls(table.num_rows, pa.string()))
    return table.select(columns)


def take_rows(out: OutputFolder, indices: np.ndarray, columns: list[str]) -> list[dict[str, Any]]:
    """The rows at global ``indices`` (in that order) as dicts of ``columns``.

    Parquet parts read only the row groups holding a wanted row; CSV/JSONL parts are read
    whole (they have no row groups). Nested columns stored as JSON text are parsed.
    """
    wanted = [c for c in columns if c in out.columns]
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(indices, kind="stable")
    rows: list[dict[str, Any] | None] = [None] * len(indices)
    starts = np.cumsum([0] + [p.num_rows for p in out.parts])
    for k, part in enumerate(out.parts):
        lo, hi = np.searchsorted(indices[order], [starts[k], starts[k + 1]])
        if lo == hi:
            continue
        positions = order[lo:hi]
        local = indices[positions] - starts[k]
        for pos, row in zip(positions, _take_from_part(out, part, local, wanted), strict=True):
            rows[int(pos)] = {c: _parse_json_text(c, row.get(c)) for c in wanted}
    return [r if r is not None else {} for r in rows]


def _take_from_part(
    out: OutputFolder, part: Part, local: np.ndarray, columns: list[str]
) -> list[dict[str, Any]]:
    if part.fmt == "lance":
        return _lance_dataset(out.uri, out.storage).take(local, columns=columns).to_pylist()
    if part.fmt != "parquet":
        table = _normalise(_read_text_part(out.fs, part.path, part.fmt, columns), columns)
        return table.take(pa.array(local)).to_pylist()
    with out.fs.open_input_file(part.path) as f:
        pf = pq.ParquetFile(f)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        group_starts = np.cumsum([0, *sizes])
        groups = np.searchsorted(group_starts, local, side="right") - 1
        result: dict[int, dict[str, Any]] = {}
        for g in np.unique(groups):
            table = pf.read_row_group(int(g), columns=columns)
            mine = np.flatnonzero(groups == g)
            picked = table.take(pa.array(local[mine] - group_starts[g])).to_pylist()
            result.update(zip(mine.tolist(), picked, strict=True))
    return [result[i] for i in range(len(local))]


def _parse_json_text(column: str, value: Any) -> Any:
    if column in JSON_TEXT_COLUMNS and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def read_image_bytes(path: str, options: StorageOptions | None = None) -> bytes:
    """An image's bytes through ``io.sources.read_bytes`` (local paths and ``s3://`` URIs),
    or from its shard for a sample of one (``SHARD.tar#KEY``, ``FILE.parquet#ROW``).

    Relative image paths are taken as the run stored them (relative to where it ran).

    Raises:
        RowError: (``ReadError``) when it cannot be read; callers show a placeholder.
    """
    from batchvision.io import shards
    from batchvision.io.sources import DEFAULT_MAX_FILE_BYTES, ReadError, read_bytes

    location = shards.sample_location(path)
    if location is None or os.path.exists(path):
        return read_bytes(path, options)
    # A sample of a WebDataset or Parquet shard: read from the shard itself.
    try:
        data = shards.read_sample(
            path, shards.ShardOptions(), options or StorageOptions(), DEFAULT_MAX_FILE_BYTES
        )
    except (OSError, ValueError) as e:
        raise ReadError("unreadable", f"{e}: {path}") from e
    if data is None:
        raise ReadError("not_found", f"no such sample in its shard: {path}")
    return data


def read_mask_bytes(
    out: OutputFolder, mask_path: str, options: StorageOptions | None = None
) -> bytes:
    """A ``mask_path`` PNG's bytes; a relative path is relative to the output folder."""
    return read_image_bytes(out.resolve(mask_path), options)
