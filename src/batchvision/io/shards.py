"""Images packed in shards: WebDataset ``.tar`` files and Parquet files with image bytes.

A shard is read as a stream, one sample at a time, so memory stays flat whatever its size
(on S3: one streamed GET per tar shard; Parquet is read a row group at a time). Every sample
becomes one input with its bytes already read: ``id``, ``path``, ``bytes``, ``error``, and
the ``--keep-columns`` values.

WebDataset (as ``webdataset`` and img2dataset write it): the members that share a key (the
member path up to the first dot of its file name) are one sample; its image is the member
whose extension comes first in ``--image-key``; a sample without one is an error row
(``no_image``). The tar stream is parsed here (ustar, PAX and GNU long names), so that a
shard cut short or corrupt is noticed wherever it is cut (Python's ``tarfile`` ends quietly
when a stream stops at a member boundary): the samples read before the damage are rows, and
one more row, id ``SHARD``, says ``shard_truncated``.

Parquet: ``--image-column`` holds the bytes (binary, or a struct with a ``bytes`` field as
Hugging Face ``datasets`` writes images); a null cell is an error row (``empty``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchvision.errors import ConfigError
from batchvision.io import names, storage
from batchvision.io.storage import StorageOptions

if TYPE_CHECKING:
    import pyarrow as pa

#: ``--image-key`` default: member extensions that hold the image, in order of preference.
DEFAULT_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
SHARD_TRUNCATED = "shard_truncated"
#: A shard without what the run asks for (e.g. no ``--image-column`` in this file).
BAD_SHARD = "bad_shard"
_BLOCK = 512
_SKIP_CHUNK = 1 << 20


@dataclass(frozen=True)
class ShardOptions:
    """How samples are found in shards; picklable, it travels to Ray workers."""

    image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS
    #: Parquet: the column holding the image bytes (``None``: the one plausible column).
    image_column: str | None = None
    #: Parquet: the column holding the row id (``None``: ``FILE#ROW``).
    id_column: str | None = None
    #: Input columns (Parquet) or member extensions (tar) copied into the output rows.
    keep_columns: tuple[str, ...] = ()


@dataclass
class Sample:
    """One input read from a shard."""

    id: str
    path: str
    data: bytes | None = None
    error: str | None = None
    keep: dict[str, Any] = field(default_factory=dict)


class ShardDamaged(Exception):
    """The shard cannot be read on from here (its samples so far are good)."""


def _read_exact(f: Any, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = f.read(min(n - got, 8 << 20))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _octal(field_: bytes) -> int:
    if field_ and field_[0] & 0x80:  # base-256 (GNU) for sizes over 8 GiB
        return int.from_bytes(field_[1:], "big")
    text = field_.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    stored = _octal(header[148:156])
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = sum((b - 256 if b > 127 else b) for b in header[:148] + header[156:]) + 256
    return stored in (unsigned, signed)


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a PAX extended header, if it has one."""
    pos, path = 0, None
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos += length
    return path


def tar_members(f: Any, max_bytes: int) -> Iterator[tuple[str, bytes | None, int]]:
    """``(name, data, size)`` of every regular file in a tar stream, in order; ``data`` is
    ``None`` for a member over ``max_bytes`` (its bytes are skipped, never held).

    Raises:
        ShardDamaged: the stream ends before the end-of-archive block, or a header is
            corrupt; the members yielded before were complete.
    """
    offset = 0
    long_name: str | None = None
    while True:
        header = _read_exact(f, _BLOCK)
        if len(header) < _BLOCK:
            raise ShardDamaged(f"cut short at byte {offset + len(header)}: no end-of-archive block")
        offset += _BLOCK
        if header == bytes(_BLOCK):
            return  # the end-of-archive block
        if not _checksum_ok(header):
            raise ShardDamaged(f"corrupt tar header at byte {offset - _BLOCK}")
        size = _octal(header[124:136])
        kind = header[156:157]
        padded = -(-size // _BLOCK) * _BLOCK
        if kind in (b"x", b"L"):  # the next member's name
            data = _read_exact(f, padded)
            if len(data) < padded:
                raise ShardDamaged(f"cut short at byte {offset + len(data)}")
            offset += padded
            long_name = _pax_path(data[:size]) if kind == b"x" else _cstr(data[:size])
            continue
        name = long_name or _header_name(header)
        long_name = None
        regular = kind in (b"0", b"\0", b"7")
        keep = regular and size <= max_bytes
        member = _read_exact(f, size) if keep else None
        if member is not None and len(member) < size:
            raise ShardDamaged(f"cut short at byte {offset + len(member)}, inside {name!r}")
        skip = padded - (size if keep else 0)
        while skip:
            got = len(f.read(min(skip, _SKIP_CHUNK)))
            if not got:
                raise ShardDamaged(f"cut short inside {name!r}")
            skip -= got
        offset += padded
        if regular:
            yield name, member, size


def _cstr(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _header_name(header: bytes) -> str:
    name = _cstr(header[0:100])
    if header[257:262] == b"ustar":
        prefix = _cstr(header[345:500])
        if prefix:
            name = f"{prefix}/{name}"
    return name


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's ``(key, extension)`` of a member: ``a/b.seg.png`` -> ``(a/b, seg.png)``."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def tar_samples(
    path: str, shard_id: str, opts: ShardOptions, options: StorageOptions, max_bytes: int
) -> Iterator[Sample]:
    """The samples of one WebDataset shard, then a ``shard_truncated`` row if it is damaged."""
    current: list[tuple[str, bytes | None, int]] = []
    key = None
    try:
        with storage.open_stream(path, options) as f:
            for name, data, size in tar_members(f, max_bytes):
                member_key, ext = split_key(name)
                if key is not None and member_key != key:
                    yield _sample(path, shard_id, key, current, opts, max_bytes)
                    current = []
                key = member_key
                current.append((ext, data, size))
            if key is not None:
                yield _sample(path, shard_id, key, current, opts, max_bytes)
            return
    except ShardDamaged as e:
        # The sample being read when the damage came may be incomplete: it is lost with
        # the rest of the shard, and --resume reads the whole shard again.
        message = str(e)
    except OSError as e:
        message = f"cannot be read: {storage.describe(e) if storage.is_uri(path) else e}"
    yield Sample(shard_id, path, error=f"{SHARD_TRUNCATED}: {message}: {path}")


def _sample(
    path: str,
    shard_id: str,
    key: str,
    members: list[tuple[str, bytes | None, int]],
    opts: ShardOptions,
    max_bytes: int,
) -> Sample:
    by_ext = {ext: (data, size) for ext, data, size in reversed(members)}  # first one wins
    key = names.to_text(key)  # a member name that is not UTF-8: its file: form
    sample = Sample(f"{shard_id}/{key}", f"{path}#{key}")
    for col in opts.keep_columns:
        if col in by_ext and by_ext[col][0] is not None:
            sample.keep[col] = by_ext[col][0].decode("utf-8", "replace")  # type: ignore[union-attr]
        else:
            sample.keep[col] = None
    image = next((ext for ext in opts.image_keys if ext in by_ext), None)
    if image is None:
        found = ", ".join(sorted(e for e in by_ext if e)) or "none"
        sample.error = (
            f"no_image: no member with an image extension ({', '.join(opts.image_keys)}; "
            f"this sample has {found}); choose with --image-key"
        )
        return sample
    data, size = by_ext[image]
    if data is None:
        sample.error = f"too_large: member is {size} bytes, more than --max-file-bytes {max_bytes}"
    else:
        sample.data = data
    return sample


# --- Parquet with image bytes -----------------------------------------------------------------


def image_column(schema: pa.Schema, requested: str | None, where: str) -> str | None:
    """The column holding image bytes: ``requested`` (checked), else the one plausible
    column, else ``None``; several plausible ones are refused, listing them."""
    # A manifest's ``path`` column holds paths, whatever its type, unless asked for.
    candidates = [f.name for f in schema if _holds_bytes(f.type) and f.name != "path"]
    if requested is not None:
        if requested not in schema.names:
            raise ConfigError(
                f"--image-column {requested!r}: {where} has no such column "
                f"(columns: {', '.join(schema.names)})"
            )
        if not _holds_bytes(schema.field(requested).type):
            raise ConfigError(
                f"--image-column {requested!r} in {where} holds "
                f"{schema.field(requested).type}, not image bytes (binary, or a struct with "
                "a binary 'bytes' field)"
            )
        return requested
    if len(candidates) > 1:
        raise ConfigError(
            f"{where} has several columns that could hold images ({', '.join(candidates)}); "
            "choose one with --image-column"
        )
    return candidates[0] if candidates else None


def _holds_bytes(kind: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    if pa.types.is_struct(kind):
        idx = kind.get_field_index("bytes")
        return idx >= 0 and _holds_bytes(kind.field(idx).type)
    return False


def parquet_samples(
    path: str, file_id: str, opts: ShardOptions, options: StorageOptions, max_bytes: int
) -> Iterator[Sample]:
    """The rows of one Parquet file with image bytes, a row group at a time; a file that
    cannot be read on gives one ``shard_truncated`` row after the rows read before."""
    try:
        pf = storage.parquet_file(path, options)
        column = image_column(pf.schema_arrow, opts.image_column, repr(path))
        if column is None:
            raise ConfigError(f"{path!r} has no column of image bytes; give --image-column")
        names = pf.schema_arrow.names
        if opts.id_column is not None and opts.id_column not in names:
            raise ConfigError(f"--id-column {opts.id_column!r}: {path!r} has no such column")
        # A kept column this file lacks is null in its rows, as a tar member it lacks.
        kept = [c for c in opts.keep_columns if c in names]
        columns = [column, *kept, *([opts.id_column] if opts.id_column else [])]
        row = 0
        for batch in pf.iter_batches(batch_size=256, columns=list(dict.fromkeys(columns))):
            cells = batch.column(column).to_pylist()
            ids = batch.column(opts.id_column).to_pylist() if opts.id_column else None
            keeps = {c: batch.column(c).to_pylist() for c in kept}
            keeps.update({c: [None] * len(cells) for c in opts.keep_columns if c not in names})
            for i, cell in enumerate(cells):
                sample = Sample(
                    f"{file_id}#{row}" if ids is None or ids[i] is None else str(ids[i]),
                    f"{path}#{row}",
                    keep={c: v[i] for c, v in keeps.items()},
                )
                data = cell.get("bytes") if isinstance(cell, dict) else cell
                if data is None:
                    sample.error = "empty: the image cell is null"
                elif len(data) > max_bytes:
                    sample.error = (
                        f"too_large: cell is {len(data)} bytes, more than --max-file-bytes "
                        f"{max_bytes}"
                    )
                else:
                    sample.data = data
                yield sample
                row += 1
    except ConfigError as e:  # this file lacks what the run asks for
        yield Sample(file_id, path, error=f"{BAD_SHARD}: {e}")
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these
        what = " ".join(str(e).split())[:200]
        yield Sample(file_id, path, error=f"{SHARD_TRUNCATED}: cannot be read on: {what}: {path}")


def keep_types(path: str, opts: ShardOptions, options: StorageOptions) -> dict[str, Any]:
    """The Arrow types of ``--keep-columns`` in a Parquet shard (tar members are text)."""
    import pyarrow as pa

    if not opts.keep_columns:
        return {}
    with contextlib.suppress(OSError, ValueError, pa.ArrowException):
        schema = storage.parquet_file(path, options).schema_arrow
        return {c: schema.field(c).type for c in opts.keep_columns if c in schema.names}
    return {}


def expand_braces(spec: str) -> list[str]:
    """``shards/{00000..00003}.tar`` (and ``{a,b}``) as webdataset expands them, in order."""
    start = spec.find("{")
    if start < 0:
        return [spec]
    end = spec.find("}", start)
    if end < 0:
        raise ConfigError(f"input {spec!r}: '{{' without a closing '}}'")
    body, head, tail = spec[start + 1 : end], spec[:start], spec[end + 1 :]
    if ".." in body:
        lo, _, hi = body.partition("..")
        if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
            raise ConfigError(f"input {spec!r}: {{{body}}} is not a range like {{000..999}}")
        width = len(lo)
        options_ = [f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    else:
        options_ = body.split(",")
    return [x for opt in options_ for x in expand_braces(head + opt + tail)]


def has_braces(spec: str) -> bool:
    return "{" in spec and "}" in spec


def shard_id(path: str, base: str) -> str:
    """A shard's id part: its path relative to the input's fixed folder ``base``."""
    if storage.is_uri(path):
        return path[len(base) :].lstrip("/") if base and path.startswith(base) else path
    return os.path.relpath(path, base).replace(os.sep, "/") if base else path


def samples_batch(samples: Sequence[Sample], keep_columns: Sequence[str]) -> dict[str, Any]:
    """A read batch (``id``, ``path``, ``bytes``, ``error``, as ``sources.read_batch`` gives)
    of shard samples; the kept values ride along in ``_keep``, outside the stages."""
    import numpy as np

    n = len(samples)
    out: dict[str, Any] = {k: np.empty(n, dtype=object) for k in ("id", "path", "bytes", "error")}
    for i, s in enumerate(samples):
        out["id"][i], out["path"][i], out["bytes"][i], out["error"][i] = (
            s.id, s.path, s.data, s.error
        )  # fmt: skip
    out["_keep"] = {c: [s.keep.get(c) for s in samples] for c in keep_columns}
    return out


def add_kept(table: pa.Table, kept: dict[str, list[Any]], types: dict[str, Any]) -> pa.Table:
    """``table`` with the kept input columns appended, as their Arrow types (text for tar
    members)."""
    import pyarrow as pa

    for name, values in kept.items():
        table = table.append_column(name, pa.array(values, types.get(name, pa.string())))
    return table


def is_damage(error: str | None) -> bool:
    return error is not None and error.startswith(f"{SHARD_TRUNCATED}:")


def sample_location(path: str) -> tuple[str, str] | None:
    """``(shard, key)`` of a shard sample's ``path`` (``SHARD.tar#KEY``,
    ``FILE.parquet#ROW``), else ``None``."""
    shard, sep, key = path.rpartition("#")
    if not sep or not key or shard_kind(shard) is None:
        return None
    return shard, key


def shard_kind(path: str) -> str | None:
    """``tar`` or ``parquet`` by a shard's name, else ``None``."""
    low = path.lower()
    return "tar" if low.endswith(".tar") else "parquet" if low.endswith(".parquet") else None


def read_sample(
    path: str, opts: ShardOptions, options: StorageOptions, max_bytes: int
) -> bytes | None:
    """The image bytes of the sample at ``path`` (see :func:`sample_location`), read from
    its shard (a tar shard is streamed up to the sample); ``None`` if it is not there."""
    loc = sample_location(path)
    if loc is None:
        return None
    shard, key = loc
    if shard_kind(shard) == "tar":
        for sample in tar_samples(shard, "", opts, options, max_bytes):
            if sample.path == path:
                return sample.data
        return None
    if not key.isdigit():
        return None
    pf = storage.parquet_file(shard, options)
    column = image_column(pf.schema_arrow, opts.image_column, repr(shard))
    row, start = int(key), 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if start <= row < start + n:
            cell = pf.read_row_group(g, columns=[column]).column(0)[row - start].as_py()
            return cell.get("bytes") if isinstance(cell, dict) else cell
        start += n
    return None
