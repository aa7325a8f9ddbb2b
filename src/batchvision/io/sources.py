"""Where images come from: folders, globs, files and manifests; and reading their bytes.

Every input may be a local path or an ``s3://bucket/prefix`` URI (see ``io.storage``).
Listing is a generator, so prediction starts while a huge folder is still being walked
and memory does not grow with the number of files (an S3 prefix is walked the same way,
one delimited listing per "folder").
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import functools
import glob
import io
import itertools
import logging
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

import numpy as np

from batchvision.errors import ConfigError, RowError
from batchvision.io import names, shards, storage
from batchvision.io.shards import ShardOptions
from batchvision.io.storage import StorageOptions

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MANIFEST_EXTENSIONS = frozenset({".txt", ".csv", ".parquet"})
#: ``--max-file-bytes``: larger files are error rows, refused before they are read. Far
#: above any photo (a 100-megapixel JPEG is 20-60 MB, an uncompressed 8-bit RGB TIFF of
#: 178 megapixels 537 MB), and it bounds what one input can make a reader hold in memory.
DEFAULT_MAX_FILE_BYTES = 1 << 30


@dataclass(frozen=True)
class InputItem:
    """One image to process: its stable ``id`` and the ``path`` to read it from."""

    id: str
    path: str


@dataclass
class ListingStats:
    """Counters the listing updates as it goes; read by progress reporting."""

    listed: int = 0
    skipped_hidden: int = 0
    skipped_extension: int = 0
    done: bool = False
    skipped_examples: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.skipped_hidden + self.skipped_extension


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_hidden(name: str) -> bool:
    """Dot-files and dot-folders, including macOS ``._name`` AppleDouble files."""
    return name.startswith(".")


def input_kind(spec: str, options: StorageOptions | None = None) -> str:
    """``folder``, ``glob``, ``manifest`` or ``file``; raises when the input is missing."""
    if storage.is_uri(spec):
        return _s3_input_kind(spec, options or StorageOptions())
    if os.path.isdir(spec):
        return "folder"
    if glob.has_magic(spec):
        return "glob"
    if not os.path.exists(spec):
        raise ConfigError(
            f"input {spec!r} does not exist (expected a folder, glob, image or manifest)"
        )
    return _file_kind(spec)


def _file_kind(spec: str) -> str:
    if os.path.splitext(spec)[1].lower() in MANIFEST_EXTENSIONS:
        return "manifest"
    return "file"


def _s3_input_kind(spec: str, options: StorageOptions) -> str:
    loc = storage.parse_uri(spec)
    if glob.has_magic(loc.key):
        return "glob"
    try:
        kind = storage.file_type(spec, options)
    except OSError as e:
        raise ConfigError(f"input {spec!r} cannot be read: {storage.describe(e)}") from e
    if kind == "missing":
        raise ConfigError(
            f"input {spec!r} does not exist (expected a prefix with images under it, an "
            "object, a glob or a manifest)"
        )
    return "folder" if kind == "folder" else _file_kind(spec)


def check_inputs(
    inputs: Sequence[str],
    storage_options: StorageOptions | None = None,
    shard_opts: ShardOptions | None = None,
    manifest: bool = False,
) -> list[str]:
    """Validate every input up front, before any work; returns their kinds (``shards`` for
    WebDataset and Parquet image shards, see :func:`shard_input`).

    On S3 this also proves the credentials work: an authentication failure raises
    ``StorageAuthError`` here, before the output is touched.
    """
    options = storage_options or StorageOptions()
    kinds = [
        "shards" if shard_input(spec, options, shard_opts, manifest) else input_kind(spec, options)
        for spec in inputs
    ]
    for spec, kind in zip(inputs, kinds, strict=True):
        if kind in ("folder", "glob"):
            _check_lists_images(spec, kind, options)
        if kind == "manifest":
            _check_manifest(spec, options)
    return kinds


def _check_lists_images(spec: str, kind: str, options: StorageOptions) -> None:
    """A folder or glob that yields no image is refused, as an empty manifest is: most
    likely a wrong path, and a run of 0 images would look like success. The listing stops
    at the first image, so a large folder costs one step of its walk."""
    stats = ListingStats()
    if next(iter(listed(spec, kind, stats, options)), None) is not None:
        return
    what = f"glob {spec!r} matches" if kind == "glob" else f"folder {spec!r} holds"
    if stats.skipped == 0:
        raise ConfigError(f"{what} no files" + ("" if kind == "glob" else " (it is empty)"))
    examples = ", ".join(repr(p) for p in stats.skipped_examples[:3])
    raise ConfigError(
        f"{what} no images: {stats.skipped_hidden} hidden and {stats.skipped_extension} with "
        f"other extensions skipped (e.g. {examples}); images end in "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))}; a list of paths is a .txt, .csv or .parquet "
        "manifest"
    )


def listed(
    spec: str, kind: str, stats: ListingStats, options: StorageOptions
) -> Iterable[InputItem]:
    """The images of one input of the given kind, lazily."""
    if kind == "folder":
        return _walk_s3(spec, stats, options) if storage.is_uri(spec) else _walk(spec, stats)
    if kind == "glob":
        return _glob_any(spec, stats, options)
    if kind == "manifest":
        return _manifest(spec, options)
    if storage.is_uri(spec):
        return [InputItem(id=spec, path=spec)]
    return [_local_item(spec, spec)]


def iter_inputs(
    inputs: Sequence[str],
    stats: ListingStats | None = None,
    storage_options: StorageOptions | None = None,
    shard_opts: ShardOptions | None = None,
    manifest: bool = False,
) -> Iterator[InputItem]:
    """Every image file of every input, lazily, in a deterministic order (shard inputs are
    read by unit, ``io.units``, and skipped here)."""
    stats = stats if stats is not None else ListingStats()
    options = storage_options or StorageOptions()
    for spec in inputs:
        if shard_input(spec, options, shard_opts, manifest) is not None:
            continue
        for item in listed(spec, input_kind(spec, options), stats, options):
            stats.listed += 1
            yield item
    stats.done = True


def _local_item(item_id: str, path: str) -> InputItem:
    """A listed local file; names that are not valid UTF-8 in their ``file:`` form."""
    return InputItem(id=names.to_text(item_id), path=names.to_text(path))


def _skip(stats: ListingStats, path: str, hidden: bool) -> None:
    if hidden:
        stats.skipped_hidden += 1
    else:
        stats.skipped_extension += 1
    if len(stats.skipped_examples) < 5:
        stats.skipped_examples.append(path)


def _walk(root: str, stats: ListingStats) -> Iterator[InputItem]:
    """Walk ``root`` recursively, sorted, following links to folders once each."""
    seen_dirs: set[tuple[int, int]] = set()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            st = os.stat(abs_dir)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue  # a symlink loop or a second link to a walked folder
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            logger.warning("cannot list folder %s: %s", abs_dir, e.strerror or e)
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if is_hidden(entry.name):
                _skip(stats, entry.path, hidden=True)
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(rel)
            elif is_image_name(entry.name):
                yield _local_item(rel, entry.path)
            else:
                _skip(stats, entry.path, hidden=False)
        stack.extend(reversed(subdirs))


def _walk_s3(uri: str, stats: ListingStats, options: StorageOptions) -> Iterator[InputItem]:
    """An S3 prefix walked as ``_walk`` walks a folder: level by level, sorted, same ids.

    One delimited listing per "folder", so images stream out while the rest is listed and
    hidden folders are never listed at all; memory holds one folder's names at a time.
    """
    loc = storage.parse_uri(uri)
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        dir_uri = loc.child(rel_dir) if rel_dir else loc.uri
        try:
            entries = storage.list_dir(dir_uri, options)
        except OSError as e:
            raise ConfigError(f"cannot list {dir_uri!r}: {storage.describe(e)}") from e
        subdirs = []
        for name, is_dir in entries:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if is_hidden(name):
                _skip(stats, loc.child(rel), hidden=True)
            elif is_dir:
                subdirs.append(rel)
            elif is_image_name(name):
                yield InputItem(id=rel, path=loc.child(rel))
            else:
                _skip(stats, loc.child(rel), hidden=False)
        stack.extend(reversed(subdirs))


def _list_s3(uri: str, options: StorageOptions) -> list[str]:
    try:
        return [rel for rel, _ in storage.list_files(uri, options)]
    except OSError as e:
        raise ConfigError(f"cannot list {uri!r}: {storage.describe(e)}") from e


def _filter_keys(
    loc: storage.S3Location, rels: Iterable[str], stats: ListingStats
) -> Iterator[InputItem]:
    hidden_dirs: set[str] = set()
    for rel in rels:
        uri = loc.child(rel)
        parts = rel.split("/")
        hidden_at = next((k for k, part in enumerate(parts) if is_hidden(part)), None)
        if hidden_at is not None:
            # Counted as a local walk counts: a hidden folder once, not each key under it.
            hidden = "/".join(parts[: hidden_at + 1])
            if hidden not in hidden_dirs:
                hidden_dirs.add(hidden)
                _skip(stats, loc.child(hidden), hidden=True)
        elif is_image_name(rel):
            yield InputItem(id=rel, path=uri)
        else:
            _skip(stats, uri, hidden=False)


def _glob_any(spec: str, stats: ListingStats, options: StorageOptions) -> Iterator[InputItem]:
    return _glob_s3(spec, stats, options) if storage.is_uri(spec) else _glob(spec, stats)


def _glob_s3(pattern: str, stats: ListingStats, options: StorageOptions) -> Iterator[InputItem]:
    """An S3 glob: list the fixed prefix once, match keys by ``/``-separated segments."""
    base_uri, wanted = _s3_glob_parts(pattern)
    rels = (r for r in _list_s3(base_uri, options) if _segments_match(r.split("/"), wanted))
    yield from _filter_keys(storage.parse_uri(base_uri), rels, stats)


def _segments_match(parts: list[str], patterns: list[str]) -> bool:
    """``glob`` semantics on key segments: ``*`` stays in a segment, ``**`` spans many."""
    if not patterns:
        return not parts
    if patterns[0] == "**":
        return any(_segments_match(parts[i:], patterns[1:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], patterns[0])
        and _segments_match(parts[1:], patterns[1:])
    )


def _glob_base(pattern: str) -> str:
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed)


def _glob(pattern: str, stats: ListingStats) -> Iterator[InputItem]:
    base = _glob_base(pattern)
    for path in glob.iglob(pattern, recursive=True):
        rel = os.path.relpath(path, base) if base else path
        if any(is_hidden(p) for p in rel.split(os.sep)):
            _skip(stats, path, hidden=True)
        elif os.path.isdir(path):
            continue
        elif is_image_name(path):
            yield _local_item(rel.replace(os.sep, "/"), path)
        else:
            _skip(stats, path, hidden=False)


def _check_manifest(path: str, options: StorageOptions) -> None:
    try:
        _check_manifest_columns(path, options)
    except ConfigError:
        raise
    except (ValueError, csv.Error, OSError) as e:  # not UTF-8, not CSV/Parquet, unreadable
        if isinstance(e, OSError) and storage.is_uri(path):
            storage.check_auth(e, path, options)
            e = OSError(storage.describe(e))
        raise ConfigError(f"manifest {path!r} cannot be read: {e}") from e


@contextlib.contextmanager
def _open_text(path: str, options: StorageOptions) -> Iterator[IO[str]]:
    if not storage.is_uri(path):
        with open(path, newline="", encoding="utf-8-sig") as f:
            yield f
        return
    # A manifest is small next to the images it lists: read it whole, then parse.
    data = storage.read_object(path, options)
    yield io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")


def _check_manifest_columns(path: str, options: StorageOptions) -> None:
    """The manifest has a ``path`` column of text and at least one row, read up front."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        with _open_text(path, options) as f:
            reader = csv.reader(f)
            header = next(reader, [])
            if "path" not in header:
                raise ConfigError(f"manifest {path!r} has no 'path' column (columns: {header})")
            empty = next(reader, None) is None
    elif ext == ".parquet":
        pf = storage.parquet_file(path, options)
        schema = pf.schema_arrow
        if "path" not in schema.names:
            raise ConfigError(f"manifest {path!r} has no 'path' column (columns: {schema.names})")
        kind = schema.field("path").type
        if not _is_text(kind):
            raise ConfigError(
                f"manifest {path!r} has a 'path' column of {kind} values; it must hold "
                "text (string): file paths or s3:// URIs"
            )
        empty = pf.metadata.num_rows == 0
    else:
        empty = next(_manifest_paths(path, options), None) is None
    if empty:
        # An empty list is most likely a mistake upstream (a failed export, a wrong file).
        raise ConfigError(
            f"manifest {path!r} lists no images (no rows); give a manifest with at least one path"
        )


def _is_text(kind: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    )


def bad_row_id(manifest: str, row: int) -> str:
    """The id of a manifest row without a path: ``MANIFEST#row=N``, rows counted from 1
    (a CSV's header not counted), ``MANIFEST`` as given on the command line."""
    return f"{manifest}#row={row}"


def _manifest_paths(path: str, options: StorageOptions) -> Iterator[str | None]:
    """The ``path`` of every row; ``None`` for a CSV or Parquet row without one (empty or
    null), which must become an error row, not vanish. Blank and ``#`` lines of a .txt
    manifest are not rows."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".txt":
        with _open_text(path, options) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield line
    elif ext == ".csv":
        with _open_text(path, options) as f:
            for row in csv.DictReader(f):
                yield row.get("path") or None
    else:
        pf = storage.parquet_file(path, options)
        for rb in pf.iter_batches(columns=["path"], batch_size=65_536):
            yield from (p or None for p in rb.column(0).to_pylist())


def _manifest(path: str, options: StorageOptions) -> Iterator[InputItem]:
    """Rows of a manifest, as :func:`manifest_items` makes them."""
    try:
        yield from manifest_items(path, _manifest_paths(path, options), options)
    except (UnicodeDecodeError, csv.Error) as e:  # found past the header: a bad line
        raise ConfigError(f"manifest {path!r} cannot be read: {e}") from e


def manifest_items(
    path: str, paths: Iterable[str | None], options: StorageOptions, first_row: int = 1
) -> Iterator[InputItem]:
    """The inputs of manifest rows ``paths`` (row ``first_row`` first); relative paths are
    relative to the manifest's folder.

    Listed paths are taken as they are, whatever their extension: the user named them.
    A path in the ``file:`` form of a name that is not UTF-8 (``io.names``), as the output's
    ``id`` and ``path`` columns hold it, is read as that name, so an output's rows can be
    listed again (e.g. to redo its errors).
    A listed ``s3://`` URI is absolute; in a manifest stored on S3, a relative path is a
    key relative to the manifest's own prefix. A row without a path keeps its place as an
    error row (see read_bytes).
    """
    if storage.is_uri(path):
        base_loc = storage.parse_uri(path).parent()

        def resolve(p: str) -> str:
            return p if storage.is_uri(p) else base_loc.child(p)
    else:
        base = os.path.dirname(path)

        def resolve(p: str) -> str:
            name = names.to_os(p)  # a name in its file: form, as an output lists it
            if os.path.isabs(name) or (name == p and storage.is_uri(p)):
                return p
            return names.to_text(os.path.join(base, name))

    for row, p in enumerate(paths, start=first_row):
        yield InputItem(id=p, path=resolve(p)) if p else InputItem(bad_row_id(path, row), "")


def needs_duplicate_check(inputs: Sequence[str], kinds: Sequence[str]) -> bool:
    """One folder or glob has unique ids by construction; anything else must be checked."""
    return len(inputs) > 1 or any(k == "manifest" for k in kinds)


def _ids(
    inputs: Sequence[str], options: StorageOptions, shard_opts: ShardOptions | None, manifest: bool
) -> Iterator[str]:
    """The ids :func:`iter_inputs` gives, without resolving a manifest's paths; a shard
    input gives its shards' ids (its samples' ids are ``SHARD/KEY``)."""
    for spec in inputs:
        found = shard_input(spec, options, shard_opts, manifest)
        if found is not None:
            yield from (shard for _, shard in found.shards)
            continue
        kind = input_kind(spec, options)
        if kind != "manifest":
            yield from (item.id for item in listed(spec, kind, ListingStats(), options))
            continue
        for row, p in enumerate(_manifest_paths(spec, options), start=1):
            yield p if p else bad_row_id(spec, row)


def duplicate_ids(
    inputs: Sequence[str],
    limit: int = 5,
    storage_options: StorageOptions | None = None,
    shard_opts: ShardOptions | None = None,
    manifest: bool = False,
) -> tuple[int, list[str]]:
    """Count all items of ``inputs`` and name up to ``limit`` duplicate ids (two passes).

    The first pass keeps 8 bytes per id (Python's string hash: the same within this
    process, which is all it needs); the second names the ids whose hash repeats, compared
    as strings, so a hash collision is never reported as a duplicate.
    """
    options = storage_options or StorageOptions()
    chunks: list[np.ndarray] = []
    count = 0
    it = _ids(inputs, options, shard_opts, manifest)
    while len(chunk := np.fromiter(map(hash, itertools.islice(it, 65_536)), dtype=np.int64)):
        chunks.append(chunk)
        count += len(chunk)
    hashes = np.sort(np.concatenate(chunks)) if chunks else np.empty(0, np.int64)
    dup = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    if not dup:
        return count, []
    seen: set[str] = set()
    names: list[str] = []
    for item_id in _ids(inputs, options, shard_opts, manifest):
        if hash(item_id) not in dup:
            continue
        if item_id in seen and item_id not in names:
            names.append(item_id)
            if len(names) >= limit:
                break
        seen.add(item_id)
    return count, names


# --- reading bytes -----------------------------------------------------------------------


def read_bytes(
    path: str,
    storage_options: StorageOptions | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> bytes:
    """Read a whole regular file or object of at most ``max_bytes``; raises ``ReadError``.

    ``path`` is as listed: a name that is not valid UTF-8 in its ``file:`` form
    (``io.names``). Only regular files are opened (a symlink to one is fine): a FIFO would
    block the read forever, a device such as ``/dev/zero`` never ends. The size is checked
    before reading, and the read stops at ``max_bytes + 1`` bytes even if the file grows.

    Raises:
        ReadError: ``not_found``, ``unreadable``, ``not_a_file`` or ``too_large`` (an S3
            read that still failed after ``max_attempts`` tries is ``unreadable``, with
            the last error); ``bad_manifest_row`` for the empty path of a manifest row
            that has none.
        StorageAuthError: S3 refused the credentials; this stops the run.
    """
    if not path:
        raise ReadError("bad_manifest_row", "this manifest row has no path (empty or null)")
    os_path = names.to_os(path)
    if os_path == path and storage.is_uri(path):
        return _read_object(path, storage_options or StorageOptions(), max_bytes)
    try:
        return _read_file(os_path, path, max_bytes)
    except FileNotFoundError as e:
        raise ReadError("not_found", f"file not found (vanished or never existed): {path}") from e
    except PermissionError as e:
        raise ReadError("unreadable", f"permission denied: {path}") from e
    except OSError as e:
        raise ReadError("unreadable", f"{e.strerror or e}: {path}") from e


def _is_file_form(path: str) -> bool:
    return path.startswith(names.MARKER) and names.to_os(path) != path


#: Bytes read at a time once a file turns out longer than its size said (it is growing).
_READ_CHUNK = 1 << 20
# Opening never waits (a FIFO swapped in after the stat) and never takes a terminal.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)


def _read_file(os_path: str, path: str, max_bytes: int) -> bytes:
    _check_file(os.stat(os_path), path, max_bytes)  # before opening: a FIFO's open blocks
    fd = os.open(os_path, _OPEN_FLAGS | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", buffering=0, closefd=True) as f:
        st = os.fstat(fd)  # what was opened: it may have been replaced since the stat
        _check_file(st, path, max_bytes)
        data = f.read(st.st_size + 1)  # one read, and the +1 sees a file that grew
        if len(data) <= st.st_size:
            return data
        parts = [data]
        total = len(data)
        while total <= max_bytes and (chunk := f.read(min(_READ_CHUNK, max_bytes + 1 - total))):
            parts.append(chunk)
            total += len(chunk)
    if total > max_bytes:
        raise _too_large(f"file grew past --max-file-bytes {max_bytes} while read", path)
    return b"".join(parts)


def _check_file(st: os.stat_result, path: str, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ReadError(
            "not_a_file", f"is {_file_kind_name(st.st_mode)}, not a regular file: {path}"
        )
    if st.st_size > max_bytes:
        raise _too_large(
            f"file is {st.st_size} bytes, more than --max-file-bytes {max_bytes}", path
        )


def _too_large(message: str, path: str) -> ReadError:
    return ReadError("too_large", f"{message}: {path}")


def _file_kind_name(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def _read_object(uri: str, options: StorageOptions, max_bytes: int) -> bytes:
    try:
        return storage.read_object(uri, options, max_bytes)
    except storage.ObjectTooLargeError as e:
        raise _too_large(
            f"object is {e.size} bytes, more than --max-file-bytes {max_bytes}", uri
        ) from e
    except ConfigError as e:  # a malformed URI in a manifest costs its row only
        raise ReadError("unreadable", str(e)) from e
    except OSError as e:
        kind = storage.classify(e)
        if kind == "auth":
            raise storage.auth_error(e, uri, options) from e
        if kind == "not_found":
            raise ReadError("not_found", f"object not found: {uri}") from e
        if kind == "transient":
            raise ReadError(
                "unreadable",
                f"failed after {options.max_attempts} attempts: {storage.describe(e)}: {uri}",
            ) from e
        raise ReadError("unreadable", f"{storage.describe(e)}: {uri}") from e


class ReadError(RowError):
    """A file that could not be read (``not_found``, ``unreadable``)."""


def items_to_batch(items: Sequence[InputItem]) -> dict[str, np.ndarray]:
    """A source batch: ``id`` and ``path`` columns."""
    ids = np.empty(len(items), dtype=object)
    paths = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        ids[i], paths[i] = item.id, item.path
    return {"id": ids, "path": paths}


def read_batch(
    batch: dict[str, np.ndarray],
    storage_options: StorageOptions | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> dict[str, np.ndarray]:
    """Add ``bytes`` and ``error`` columns; a failed read is an error, not an exception.

    ``storage_options`` says how to reach ``s3://`` paths (an engine passes the run's);
    files larger than ``max_bytes`` are error rows (see :func:`read_bytes`).
    Object reads wait on the network, not the CPU, so a batch's S3 objects are read by up
    to ``read_concurrency`` threads at once; local files are read one after the other.
    ``StorageAuthError`` is raised, not turned into rows: it would fail every row.
    """
    options = storage_options or StorageOptions()
    paths = batch["path"]
    n = len(paths)
    data = np.empty(n, dtype=object)
    errors = np.full(n, None, dtype=object)

    def read_one(i: int) -> None:
        try:
            data[i] = read_bytes(paths[i], options, max_bytes)
        except ReadError as e:
            errors[i] = str(e)

    remote = [i for i in range(n) if storage.is_uri(paths[i]) and not _is_file_form(paths[i])]
    threads = min(options.read_concurrency, len(remote))
    if threads > 1:
        # Made per call: a pool kept across calls would not survive a fork into workers.
        with ThreadPoolExecutor(threads, thread_name_prefix="batchvision-read") as pool:
            # list(): re-raises the first StorageAuthError, after every read has finished.
            list(pool.map(read_one, remote))
        remote_set = set(remote)
        local = [i for i in range(n) if i not in remote_set]
    else:
        local = list(range(n))
    for i in local:
        read_one(i)
    return {**batch, "bytes": data, "error": errors}


# --- shard inputs (WebDataset tar, Parquet with image bytes) ---------------------------------


@dataclass(frozen=True)
class ShardInput:
    """An input of shards: ``tar`` or ``parquet``, and each shard's ``(path, id)``."""

    kind: str
    shards: tuple[tuple[str, str], ...]


def shard_input(
    spec: str,
    options: StorageOptions | None = None,
    shard_opts: ShardOptions | None = None,
    manifest: bool = False,
) -> ShardInput | None:
    """What ``spec`` holds if it is shards, else ``None`` (files, folders of images,
    manifests). Decided from the path (``.tar``, ``.parquet``, brace notation) and, for
    Parquet and folders, from what they hold; listed once per run.
    """
    return _shard_input(spec, options or StorageOptions(), shard_opts or ShardOptions(), manifest)


def forget_shard_inputs() -> None:
    """Forget what :func:`shard_input` found: a new run lists its inputs afresh (shards
    added to a folder since the last run in this process are seen)."""
    _shard_input.cache_clear()


@functools.lru_cache(maxsize=256)
def _shard_input(
    spec: str, options: StorageOptions, shard_opts: ShardOptions, manifest: bool
) -> ShardInput | None:
    if shards.has_braces(spec):
        paths = shards.expand_braces(spec)
        base = _fixed_dir(spec[: spec.index("{")])
        kinds = {shards.shard_kind(p) for p in paths}
        if len(kinds) != 1 or None in kinds:
            raise ConfigError(
                f"input {spec!r}: brace notation is for shards; every name must end in .tar "
                "(or every one in .parquet)"
            )
        found = [(p, shards.shard_id(p, base)) for p in paths]
        for p, _ in found:
            input_kind(p, options)  # a missing shard is refused up front
        return _checked(spec, kinds.pop() or "", found, options, shard_opts, manifest)
    if _is_glob(spec):
        kind = shards.shard_kind(spec)
        if kind is None:
            return None
        base = _glob_base_any(spec)
        found = [(p, shards.shard_id(p, base)) for p in _glob_paths(spec, options)]
        if not found:
            raise ConfigError(f"glob {spec!r} matches no files")
        return _checked(spec, kind, found, options, shard_opts, manifest)
    kind = input_kind(spec, options)
    if kind in ("file", "manifest"):
        ext = shards.shard_kind(spec)
        if ext is None:
            return None
        return _checked(spec, ext, [(spec, spec)], options, shard_opts, manifest)
    # A folder: of shards only when it holds no image.
    if next(iter(listed(spec, kind, ListingStats(), options)), None) is not None:
        return None
    files = _all_files(spec, options)
    for ext in ("tar", "parquet"):
        found = [(p, shards.shard_id(p, spec)) for p in files if shards.shard_kind(p) == ext]
        if found:
            return _checked(spec, ext, found, options, shard_opts, manifest)
    return None


def _checked(
    spec: str,
    kind: str,
    found: list[tuple[str, str]],
    options: StorageOptions,
    shard_opts: ShardOptions,
    manifest: bool,
) -> ShardInput | None:
    """Parquet files hold images or paths: the first file's schema decides."""
    if kind == "parquet":
        if manifest:
            return None
        try:
            schema = storage.parquet_file(found[0][0], options).schema_arrow
        except (OSError, ValueError) as e:
            raise ConfigError(f"input {found[0][0]!r} cannot be read: {e}") from e
        column = shards.image_column(schema, shard_opts.image_column, repr(found[0][0]))
        if column is None:
            return None  # a manifest of paths, as before
        if "path" in schema.names and shard_opts.image_column is None:
            raise ConfigError(
                f"{found[0][0]!r} has both a 'path' column and image bytes in {column!r}: "
                f"give --image-column {column} to read its images, or --manifest to read it as "
                "a list of paths"
            )
    return ShardInput(kind, tuple(found))


def _is_glob(spec: str) -> bool:
    key = storage.parse_uri(spec).key if storage.is_uri(spec) else spec
    return glob.has_magic(key)


def _fixed_dir(prefix: str) -> str:
    """The folder part of ``prefix`` (what shard ids are relative to)."""
    if storage.is_uri(prefix):
        return prefix.rsplit("/", 1)[0] + "/" if "/" in prefix.removeprefix("s3://") else prefix
    return os.path.dirname(prefix)


def _s3_glob_parts(pattern: str) -> tuple[str, list[str]]:
    """An S3 glob's fixed prefix (a URI) and the ``/``-separated patterns after it."""
    loc = storage.parse_uri(pattern)
    segments = loc.key.split("/")
    fixed = next(i for i, seg in enumerate(segments) if glob.has_magic(seg))
    base = storage.S3Location(loc.scheme, loc.anonymous, loc.bucket, "/".join(segments[:fixed]))
    return base.uri, segments[fixed:]


def _glob_base_any(spec: str) -> str:
    return _s3_glob_parts(spec)[0] if storage.is_uri(spec) else _glob_base(spec)


def _glob_paths(spec: str, options: StorageOptions) -> list[str]:
    """The files a glob matches, hidden ones skipped, sorted."""
    if storage.is_uri(spec):
        base, wanted = _s3_glob_parts(spec)
        loc = storage.parse_uri(base)
        rels = _list_s3(base, options)
    else:
        base, wanted = _glob_base(spec), []
        rels = [os.path.relpath(p, base or ".") for p in glob.glob(spec, recursive=True)]
        rels = [r for r in rels if os.path.isfile(os.path.join(base, r))]
    keep = [
        r
        for r in sorted(rels)
        if not any(is_hidden(p) for p in r.replace(os.sep, "/").split("/"))
        and (not wanted or _segments_match(r.split("/"), wanted))
    ]
    if storage.is_uri(spec):
        return [loc.child(r) for r in keep]
    return [os.path.join(base, r) if base else r for r in keep]


def _all_files(root: str, options: StorageOptions) -> list[str]:
    """Every file under ``root`` (hidden ones skipped), sorted."""
    if storage.is_uri(root):
        loc = storage.parse_uri(root)
        return [
            loc.child(rel)
            for rel in _list_s3(root, options)
            if not any(is_hidden(p) for p in rel.split("/"))
        ]
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        found.extend(os.path.join(folder, f) for f in sorted(files) if not is_hidden(f))
    return sorted(found)
