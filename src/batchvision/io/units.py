"""Work units: a run's inputs cut into deterministic pieces, each committed as one part.

A unit is ``--part-rows`` inputs: consecutive lines of a ``.txt``/``.csv`` manifest (a byte
range), consecutive rows of a Parquet manifest, or consecutive items of a listed folder or
glob. Its key (``III-UUUUUUUU``: input number, unit number) depends only on the inputs and
``--part-rows``, so a run, a retried unit and a resumed run all cut the inputs the same way.

A unit's rows are written as one part, named after the unit::

    part-u000-00000042-fFFFFFFFF-nROWS-eERRORS-cCRC32.parquet

committed at once (temporary name then rename; on S3 one PUT). ``f`` is a CRC-32 of the
unit's inputs (its manifest bytes, or its ids), so a resume of inputs that changed since is
refused rather than skipping the wrong inputs. Resuming lists the part names and nothing
else: O(units), never O(rows). A unit retried after its part was committed (an actor lost
between the rename and its reply) may leave a second part of the same unit, with the same
ids: :func:`read_committed` keeps one and deletes the others.

Planning reads what a manifest holds in a single pass (O(1) memory, no row kept) and never
opens an image; only a listed folder or glob carries its items in its units.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import logging
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from batchvision.errors import ConfigError, OutputDirError
from batchvision.io import shards, sources, storage
from batchvision.io.shards import ShardOptions
from batchvision.io.sources import InputItem, ListingStats
from batchvision.io.storage import StorageOptions

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

UnitKind = Literal["listed", "text", "parquet", "tar", "parquet_images"]

#: A committed unit's part (see the module docstring).
UNIT_PART_RE = re.compile(
    r"^part-u(?P<key>\d{3,}-\d{8,})-f(?P<fp>[0-9a-f]{8})-n(?P<rows>\d+)-e(?P<errors>\d+)(?P<damaged>d?)"
    r"-c(?P<crc>[0-9a-f]{8})(?P<ext>\.parquet|\.csv|\.jsonl|\.lance\.json)$"
)
BOM = b"\xef\xbb\xbf"
# Manifest bytes read at a time while planning.
_PLAN_READ = 8 << 20


@dataclass(frozen=True)
class Unit:
    """One unit of work: what to read (not the inputs themselves, except for listings)."""

    key: str
    kind: UnitKind
    #: The input (manifest, folder or glob) as given.
    source: str
    rows: int
    #: CRC-32 of the unit's manifest bytes or ``id``s: what it holds, in 32 bits.
    fingerprint: int
    #: ``text``: byte range; ``parquet``: row range.
    start: int = 0
    stop: int = 0
    #: ``text``: rows of the manifest before this unit (for ``MANIFEST#row=N`` ids).
    rows_before: int = 0
    #: ``text`` CSV: the header line.
    header: str = ""
    #: ``listed``: ``(id, path)`` of each input.
    items: tuple[tuple[str, str], ...] = ()
    #: ``tar``, ``parquet_images``: the shard's id (its samples' ids start with it).
    shard: str = ""
    #: A part of this unit an earlier run left (a damaged shard's): deleted once this
    #: unit's new part is committed.
    replaces: str = ""

    @property
    def is_shard(self) -> bool:
        """A shard's samples, read from the shard itself (``rows`` unknown until read)."""
        return self.kind in ("tar", "parquet_images")

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Unit:
        d = json.loads(text)
        d["items"] = tuple(tuple(p) for p in d["items"])
        return cls(**d)


def unit_key(input_index: int, unit_index: int) -> str:
    return f"{input_index:03d}-{unit_index:08d}"


def plan_units(
    inputs: Sequence[str],
    rows_per_unit: int,
    stats: ListingStats | None = None,
    storage_options: StorageOptions | None = None,
    shard_opts: ShardOptions | None = None,
    manifest: bool = False,
) -> Iterator[Unit]:
    """The units of ``inputs``, lazily, in order; ``stats`` counts listed inputs as
    :func:`sources.iter_inputs` does (``done`` once the last input is planned). A shard
    input has a unit per shard."""
    stats = stats if stats is not None else ListingStats()
    options = storage_options or StorageOptions()
    for index, spec in enumerate(inputs):
        found = sources.shard_input(spec, options, shard_opts, manifest)
        if found is not None:
            yield from _plan_shards(index, spec, found)
            continue
        kind = sources.input_kind(spec, options)
        ext = os.path.splitext(spec)[1].lower()
        if kind == "manifest" and ext == ".parquet":
            planned = _plan_parquet(index, spec, rows_per_unit, options)
        elif kind == "manifest":
            planned = _plan_text(index, spec, rows_per_unit, options)
        else:
            planned = _plan_listed(index, spec, kind, rows_per_unit, stats, options)
        for unit in planned:
            if unit.kind != "listed":
                stats.listed += unit.rows
            yield unit
    stats.done = True


def plan_shard_units(
    inputs: Sequence[str],
    storage_options: StorageOptions | None = None,
    shard_opts: ShardOptions | None = None,
    manifest: bool = False,
) -> Iterator[Unit]:
    """The units of the shard inputs among ``inputs`` (keys as :func:`plan_units` gives)."""
    options = storage_options or StorageOptions()
    for index, spec in enumerate(inputs):
        found = sources.shard_input(spec, options, shard_opts, manifest)
        if found is not None:
            yield from _plan_shards(index, spec, found)


def _plan_shards(index: int, spec: str, found: sources.ShardInput) -> Iterator[Unit]:
    kind: UnitKind = "tar" if found.kind == "tar" else "parquet_images"
    for number, (path, shard) in enumerate(found.shards):
        fingerprint = zlib.crc32(f"{shard}\0{path}".encode("utf-8", "surrogateescape"))
        yield Unit(unit_key(index, number), kind, path, 0, fingerprint, shard=shard)


def _plan_listed(
    index: int,
    spec: str,
    kind: str,
    rows_per_unit: int,
    stats: ListingStats,
    options: StorageOptions,
) -> Iterator[Unit]:
    chunk: list[InputItem] = []
    number = 0
    for item in sources.listed(spec, kind, stats, options):
        stats.listed += 1
        chunk.append(item)
        if len(chunk) == rows_per_unit:
            yield _listed_unit(index, number, spec, chunk)
            chunk, number = [], number + 1
    if chunk:
        yield _listed_unit(index, number, spec, chunk)


def _listed_unit(index: int, number: int, spec: str, chunk: list[InputItem]) -> Unit:
    ids = "\n".join(i.id for i in chunk).encode("utf-8", "surrogateescape")
    return Unit(
        key=unit_key(index, number),
        kind="listed",
        source=spec,
        rows=len(chunk),
        fingerprint=zlib.crc32(ids),
        items=tuple((i.id, i.path) for i in chunk),
    )


def _lines(f: Any) -> Iterator[bytes]:
    """The lines of a binary stream, line ends kept, read ``_PLAN_READ`` bytes at a time."""
    rest = b""
    while chunk := f.read(_PLAN_READ):
        lines = (rest + chunk).splitlines(keepends=True)
        rest = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        yield from lines
    if rest:
        yield rest


def _is_text_row(line: bytes, csv_file: bool) -> bool:
    """Whether a manifest line is a row, as :func:`sources.manifest_paths` reads them: a
    ``.txt`` line that is not blank nor a ``#`` comment; a CSV line that is not empty."""
    if csv_file:
        return line not in (b"\n", b"\r\n", b"\r", b"")
    text = line.strip()
    return bool(text) and not text.startswith(b"#")


def _plan_text(
    index: int, spec: str, rows_per_unit: int, options: StorageOptions
) -> Iterator[Unit]:
    """Units of ``rows_per_unit`` rows of a ``.txt`` or ``.csv`` manifest, in one pass.

    Only line ends and offsets are kept: a unit is the byte range of its lines (the blank
    and comment lines among them included), so a worker reads exactly those bytes.
    """
    csv_file = spec.lower().endswith(".csv")
    try:
        with storage.open_stream(spec, options) as f:
            lines = _lines(f)
            header = next(lines, b"") if csv_file else b""
            start = offset = len(header)
            number = rows = rows_before = crc = 0
            for line in lines:
                crc = zlib.crc32(line, crc)
                rows += _is_text_row(line if offset else line.removeprefix(BOM), csv_file)
                offset += len(line)
                if rows == rows_per_unit:
                    yield Unit(
                        unit_key(index, number), "text", spec, rows, crc, start, offset,
                        rows_before, header.decode("utf-8-sig"),
                    )  # fmt: skip
                    number, rows_before, start = number + 1, rows_before + rows, offset
                    rows = crc = 0
            if rows:
                yield Unit(
                    unit_key(index, number), "text", spec, rows, crc, start, offset,
                    rows_before, header.decode("utf-8-sig"),
                )  # fmt: skip
    except OSError as e:
        raise ConfigError(f"manifest {spec!r} cannot be read: {storage.describe(e)}") from e


def _plan_parquet(
    index: int, spec: str, rows_per_unit: int, options: StorageOptions
) -> Iterator[Unit]:
    """Units of ``rows_per_unit`` rows of a Parquet manifest; the fingerprint is a CRC-32
    of the unit's ``path`` values (read column by column, never row by row)."""
    pf = storage.parquet_file(spec, options)
    total = pf.metadata.num_rows
    for number, start in enumerate(range(0, total, rows_per_unit)):
        stop = min(total, start + rows_per_unit)
        paths = _parquet_paths(pf, start, stop)
        crc = 0
        for chunk in paths.chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    crc = zlib.crc32(memoryview(buf), crc)
        yield Unit(unit_key(index, number), "parquet", spec, stop - start, crc, start, stop, start)


def _parquet_paths(pf: pq.ParquetFile, start: int, stop: int) -> pa.ChunkedArray:
    """The ``path`` column of rows ``[start, stop)``, reading only the row groups they span."""
    import pyarrow as pa

    meta = pf.metadata
    groups, first, seen = [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if seen + n > start and seen < stop:
            groups.append(g)
            first = seen if first is None else first
        seen += n
    if not groups:
        return pa.chunked_array([], pa.string())
    table = pf.read_row_groups(groups, columns=["path"])
    return table.column(0).slice(start - (first or 0), stop - start)


def unit_samples(
    unit: Unit, shard_opts: ShardOptions, options: StorageOptions, max_bytes: int
) -> Iterator[shards.Sample]:
    """A shard unit's samples, streamed (its last may be the shard's damage row)."""
    read = shards.tar_samples if unit.kind == "tar" else shards.parquet_samples
    return read(unit.source, unit.shard, shard_opts, options, max_bytes)


def read_batches(
    unit: Unit, shard_opts: ShardOptions, options: StorageOptions, max_bytes: int, size: int
) -> Iterator[dict[str, Any]]:
    """The unit's read batches (bytes, or read errors), lazily: its files read ``size`` at a
    time, or its shard streamed ``size`` samples at a time (kept columns in ``_keep``)."""
    if unit.is_shard:
        samples = unit_samples(unit, shard_opts, options, max_bytes)
        while batch := list(itertools.islice(samples, size)):
            yield shards.samples_batch(batch, shard_opts.keep_columns)
        return
    items = unit_items(unit, options)
    for i in range(0, len(items), size):
        chunk = sources.items_to_batch(items[i : i + size])
        yield sources.read_batch(chunk, options, max_bytes)


def keep_types(unit: Unit, shard_opts: ShardOptions, options: StorageOptions) -> dict[str, Any]:
    """The Arrow types of a unit's kept columns: a Parquet shard's own (read from its
    schema); text otherwise (tar members)."""
    if unit.kind != "parquet_images":
        return {}
    return shards.keep_types(unit.source, shard_opts, options)


def unit_items(unit: Unit, storage_options: StorageOptions | None = None) -> list[InputItem]:
    """The inputs of ``unit``, in order, as :func:`sources.iter_inputs` lists them.

    Raises:
        OSError: the manifest cannot be read (the unit fails and is retried).
    """
    options = storage_options or StorageOptions()
    if unit.kind == "listed":
        return [InputItem(i, p) for i, p in unit.items]
    if unit.kind == "parquet":
        column = _parquet_paths(storage.parquet_file(unit.source, options), unit.start, unit.stop)
        paths: list[str | None] = [p or None for p in column.to_pylist()]
    else:
        paths = list(_text_paths(unit, _read_range(unit.source, unit.start, unit.stop, options)))
    return list(sources.manifest_items(unit.source, paths, options, first_row=unit.rows_before + 1))


def _read_range(path: str, start: int, stop: int, options: StorageOptions) -> bytes:
    if not storage.is_uri(path):
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(stop - start)
    fs, loc = storage.filesystem(path, options)
    with fs.open_input_file(loc.path) as f:
        return bytes(f.read_at(stop - start, start))


def _text_paths(unit: Unit, data: bytes) -> Iterator[str | None]:
    text = data.decode("utf-8-sig" if unit.start == 0 else "utf-8")
    if unit.source.lower().endswith(".csv"):
        for row in csv.DictReader(io.StringIO(unit.header + text, newline="")):
            yield row.get("path") or None
        return
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


# --- committed units -------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitPart:
    """A committed unit, from its part's name alone."""

    name: str
    fingerprint: int
    rows: int
    errors: int
    #: A shard read only up to its damage (``shard_truncated``): ``--resume`` reads it again.
    damaged: bool = False


def unit_part_name(
    unit: Unit, rows: int, errors: int, data: bytes, ext: str, damaged: bool = False
) -> str:
    return (
        f"part-u{unit.key}-f{unit.fingerprint:08x}-n{rows}-e{errors}{'d' if damaged else ''}"
        f"-c{zlib.crc32(data):08x}{ext}"
    )


def parse_unit_part(name: str) -> tuple[str, UnitPart] | None:
    m = UNIT_PART_RE.match(name)
    if m is None:
        return None
    part = UnitPart(name, int(m["fp"], 16), int(m["rows"]), int(m["errors"]), bool(m["damaged"]))
    return m["key"], part


@dataclass
class Committed:
    """The units an output folder holds, by key; statuses summed from the part names."""

    units: dict[str, UnitPart] = field(default_factory=dict)
    #: Second parts of one unit, deleted (their rows are in the part kept).
    removed: list[str] = field(default_factory=list)

    @property
    def statuses(self) -> Counter[str]:
        """Rows by status in the committed units (not in damaged shards: read again)."""
        kept = [u for u in self.units.values() if not u.damaged]
        rows = sum(u.rows for u in kept)
        errors = sum(u.errors for u in kept)
        return Counter({"ok": rows - errors, "error": errors})

    def check(self, unit: Unit) -> bool:
        """Whether ``unit`` is committed (a damaged shard's part is not: it is read again,
        see :meth:`stale`); refuses one committed from different inputs."""
        part = self.units.get(unit.key)
        if part is None:
            return False
        rows_differ = part.rows != unit.rows and not unit.is_shard
        if part.fingerprint != unit.fingerprint or rows_differ:
            raise OutputDirError(
                f"cannot --resume: the inputs of unit {unit.key} of {unit.source!r} changed "
                f"since {part.name} was written ({part.rows} rows then, {unit.rows} now, or "
                "other ids); resume with the inputs as they were, or --overwrite"
            )
        return not part.damaged

    def stale(self, unit: Unit) -> str:
        """The part a new run of ``unit`` replaces (deleted once the new one is committed)."""
        part = self.units.get(unit.key)
        return part.name if part is not None else ""


def read_committed(out_dir: str, names: Sequence[str], options: StorageOptions) -> Committed:
    """The committed units among ``names`` (the output's entries); a unit's extra parts
    (same ids, from a retry) are deleted, keeping the first by name."""
    committed = Committed()
    parsed = [p for p in map(parse_unit_part, sorted(names)) if p is not None]
    # A complete part first: a shard read again whole replaces its damaged part.
    for key, part in sorted(parsed, key=lambda kp: (kp[0], kp[1].damaged, kp[1].name)):
        if key not in committed.units:
            committed.units[key] = part
            continue
        _delete(out_dir, part.name, options)
        committed.removed.append(part.name)
        logger.warning(
            "unit %s was committed twice (a retried unit): kept %s, deleted %s",
            *(key, committed.units[key].name, part.name),
        )
    return committed


def delete_part(out_dir: str, name: str, options: StorageOptions) -> None:
    """Delete the part ``name`` of ``out_dir`` (gone already is fine)."""
    with contextlib.suppress(FileNotFoundError):
        _delete(out_dir, name, options)


def _delete(out_dir: str, name: str, options: StorageOptions) -> None:
    if storage.is_uri(out_dir):
        storage.delete_object(storage.parse_uri(out_dir).child(name), options)
    else:
        os.unlink(os.path.join(out_dir, name))
