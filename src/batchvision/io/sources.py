"""Where images come from: folders, globs, files and manifests; and reading their bytes.

Listing is a generator, so prediction starts while a huge folder is still being walked
and memory does not grow with the number of files.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from batchvision.errors import ConfigError, RowError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MANIFEST_EXTENSIONS = frozenset({".txt", ".csv", ".parquet"})


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


def input_kind(spec: str) -> str:
    """``folder``, ``glob``, ``manifest`` or ``file``; raises when the input is missing."""
    if os.path.isdir(spec):
        return "folder"
    if glob.has_magic(spec):
        return "glob"
    if not os.path.exists(spec):
        raise ConfigError(
            f"input {spec!r} does not exist (expected a folder, glob, image or manifest)"
        )
    if os.path.splitext(spec)[1].lower() in MANIFEST_EXTENSIONS:
        return "manifest"
    return "file"


def check_inputs(inputs: Sequence[str]) -> list[str]:
    """Validate every input up front, before any work; returns their kinds."""
    kinds = [input_kind(spec) for spec in inputs]
    for spec, kind in zip(inputs, kinds, strict=True):
        if kind == "glob" and next(glob.iglob(spec, recursive=True), None) is None:
            raise ConfigError(f"glob {spec!r} matches no files")
        if kind == "manifest":
            _check_manifest(spec)
    return kinds


def iter_inputs(inputs: Sequence[str], stats: ListingStats | None = None) -> Iterator[InputItem]:
    """Every image of every input, lazily, in a deterministic order."""
    stats = stats if stats is not None else ListingStats()
    for spec in inputs:
        kind = input_kind(spec)
        if kind == "folder":
            items: Iterable[InputItem] = _walk(spec, stats)
        elif kind == "glob":
            items = _glob(spec, stats)
        elif kind == "manifest":
            items = _manifest(spec)
        else:
            items = [InputItem(id=spec, path=spec)]
        for item in items:
            stats.listed += 1
            yield item
    stats.done = True


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
                yield InputItem(id=rel, path=entry.path)
            else:
                _skip(stats, entry.path, hidden=False)
        stack.extend(reversed(subdirs))


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
            yield InputItem(id=rel.replace(os.sep, "/"), path=path)
        else:
            _skip(stats, path, hidden=False)


def _check_manifest(path: str) -> None:
    try:
        _check_manifest_columns(path)
    except ConfigError:
        raise
    except (ValueError, csv.Error, OSError) as e:  # not UTF-8, not CSV/Parquet, unreadable
        raise ConfigError(f"manifest {path!r} cannot be read: {e}") from e


def _check_manifest_columns(path: str) -> None:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
        if "path" not in header:
            raise ConfigError(f"manifest {path!r} has no 'path' column (columns: {header})")
    elif ext == ".parquet":
        import pyarrow.parquet as pq

        names = pq.ParquetFile(path).schema_arrow.names
        if "path" not in names:
            raise ConfigError(f"manifest {path!r} has no 'path' column (columns: {names})")


def _manifest_paths(path: str) -> Iterator[str]:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".txt":
        with open(path, encoding="utf-8-sig") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield line
    elif ext == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                if row.get("path"):
                    yield row["path"]
    else:
        import pyarrow.parquet as pq

        for rb in pq.ParquetFile(path).iter_batches(columns=["path"], batch_size=65_536):
            yield from (p for p in rb.column(0).to_pylist() if p)


def _manifest(path: str) -> Iterator[InputItem]:
    """Rows of a manifest; relative paths are relative to the manifest's folder.

    Listed paths are taken as they are, whatever their extension: the user named them.
    """
    base = os.path.dirname(path)
    try:
        for p in _manifest_paths(path):
            yield InputItem(id=p, path=p if os.path.isabs(p) else os.path.join(base, p))
    except (UnicodeDecodeError, csv.Error) as e:  # found past the header: a bad line
        raise ConfigError(f"manifest {path!r} cannot be read: {e}") from e


def needs_duplicate_check(inputs: Sequence[str], kinds: Sequence[str]) -> bool:
    """One folder or glob has unique ids by construction; anything else must be checked."""
    return len(inputs) > 1 or any(k == "manifest" for k in kinds)


def _id_hash(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


def duplicate_ids(inputs: Sequence[str], limit: int = 5) -> tuple[int, list[str]]:
    """Count all items of ``inputs`` and name up to ``limit`` duplicate ids (two passes)."""
    chunks: list[np.ndarray] = []
    buf: list[int] = []
    count = 0
    for item in iter_inputs(inputs):
        buf.append(_id_hash(item.id))
        count += 1
        if len(buf) >= 65_536:
            chunks.append(np.array(buf, dtype=np.uint64))
            buf = []
    chunks.append(np.array(buf, dtype=np.uint64))
    hashes = np.sort(np.concatenate(chunks))
    dup = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    if not dup:
        return count, []
    names: list[str] = []
    for item in iter_inputs(inputs):
        if _id_hash(item.id) in dup and item.id not in names:
            names.append(item.id)
            if len(names) >= limit:
                break
    return count, names


# --- reading bytes -----------------------------------------------------------------------


def read_bytes(path: str) -> bytes:
    """Read a whole file; raises ``ReadError`` with a stable code."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise ReadError("not_found", f"file not found (vanished or never existed): {path}") from e
    except IsADirectoryError as e:
        raise ReadError("unreadable", f"is a folder, not a file: {path}") from e
    except PermissionError as e:
        raise ReadError("unreadable", f"permission denied: {path}") from e
    except OSError as e:
        raise ReadError("unreadable", f"{e.strerror or e}: {path}") from e


class ReadError(RowError):
    """A file that could not be read (``not_found``, ``unreadable``)."""


def items_to_batch(items: Sequence[InputItem]) -> dict[str, np.ndarray]:
    """A source batch: ``id`` and ``path`` columns."""
    ids = np.empty(len(items), dtype=object)
    paths = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        ids[i], paths[i] = item.id, item.path
    return {"id": ids, "path": paths}


def read_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add ``bytes`` and ``error`` columns; a failed read is an error, not an exception."""
    n = len(batch["path"])
    data = np.empty(n, dtype=object)
    errors = np.full(n, None, dtype=object)
    for i, path in enumerate(batch["path"]):
        try:
            data[i] = read_bytes(path)
        except ReadError as e:
            errors[i] = str(e)
    return {**batch, "bytes": data, "error": errors}
