"""``--format lance``: parts as Lance fragments, one dataset version committed per run.

The output folder keeps its own bookkeeping (``_manifest.json``, one part per unit or
flush, named as for the other formats) and the rows live in the Lance dataset
``OUTPUT/results.lance``. A part is two steps:

1. its rows are written as fragment data files with ``lance.fragment.write_fragments``
   (unique file names under ``results.lance/data/``; no dataset version names them, so
   no reader sees them yet);
2. a small JSON record of those fragments (``FragmentMetadata.to_json``, the rows and the
   Arrow schema) is committed as the part file, all or nothing, by ``sinks.write_atomic``.

Only the driver makes a dataset version: :func:`commit` lists exactly the fragments of the
committed part records in one ``LanceOperation.Overwrite`` (O(parts), never O(rows)), at
the end of a run and again at the end of a resumed one. Fragment files written by a unit
that was retried, or by a run killed before its record was committed, are in no version.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pyarrow as pa

from batchvision.errors import ConfigError, OutputDirError, OutputWriteError
from batchvision.io import storage
from batchvision.io.storage import StorageOptions

logger = logging.getLogger(__name__)

#: The dataset's folder inside the output folder.
DATASET_NAME = "results.lance"
INSTALL_HINT = "pip install 'batchvision[lance]'"
#: What a part record holds (``kind``), and its layout's version.
RECORD_KIND = "batchvision-lance-part"
RECORD_VERSION = 1
#: Lance's file format, pinned: a resumed run with a newer pylance writes files that the
#: run's earlier fragments match.
DATA_STORAGE_VERSION = "2.1"


def require() -> ModuleType:
    """The ``lance`` module, or a :class:`ConfigError` with its install command."""
    try:
        import lance
        import lance.fragment
    except ImportError as e:
        raise ConfigError(_missing(str(e))) from None
    return lance


def check_installed() -> None:
    """Refuse ``--format lance`` without pylance (:class:`ConfigError`), without importing
    it: once imported, every ``fork`` warns that Lance is not fork-safe, and a run forks its
    decode workers after this check (they never call Lance; only the writer does)."""
    try:
        found = importlib.util.find_spec("lance") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it
        found = False
    if not found:
        raise ConfigError(_missing("No module named 'lance'"))


def _missing(why: str) -> str:
    return f"--format lance needs pylance, which is not installed ({why}): {INSTALL_HINT}"


def dataset_uri(out_dir: str) -> str:
    """Where the output's Lance dataset lives (a path, or an ``s3://`` URI Lance reads)."""
    if storage.is_uri(out_dir):
        loc = storage.parse_uri(out_dir)  # Lance takes no anonymous@ user in a URI
        return storage.S3Location(loc.scheme, False, loc.bucket, loc.key).child(DATASET_NAME)
    return f"{out_dir.rstrip('/')}/{DATASET_NAME}"


def lance_storage_options(out_dir: str, options: StorageOptions) -> dict[str, str] | None:
    """The run's S3 settings as Lance's object store takes them; credentials and region
    come from the AWS environment there too (never written here)."""
    if not storage.is_uri(out_dir):
        return None
    opts: dict[str, str] = {"client_max_retries": str(max(0, options.max_attempts - 1))}
    endpoint = options.endpoint or storage.env_endpoint()
    if endpoint:
        opts["aws_endpoint"] = endpoint
        opts["allow_http"] = str(endpoint.startswith("http://")).lower()
    if storage.parse_uri(out_dir).anonymous:
        opts["aws_skip_signature"] = "true"
    if options.connect_timeout is not None:
        opts["connect_timeout"] = f"{options.connect_timeout}s"
    if options.request_timeout is not None:
        opts["timeout"] = f"{options.request_timeout}s"
    return opts


def write_part(table: pa.Table, out_dir: str, options: StorageOptions) -> bytes:
    """Write ``table`` as fragments of the output's dataset (no version names them yet);
    returns the part record to commit.

    Raises:
        OutputWriteError: the fragment files could not be written.
    """
    from lance.fragment import write_fragments

    uri = dataset_uri(out_dir)
    kwargs: dict[str, Any] = {
        "storage_options": lance_storage_options(out_dir, options),
        "data_storage_version": DATA_STORAGE_VERSION,
    }
    try:
        try:
            fragments = write_fragments(table, uri, mode="create", **kwargs)
        except OSError as e:
            if "already exists" not in str(e):
                raise
            # A resumed run: the same files, field ids from the same schema.
            fragments = write_fragments(table, uri, mode="overwrite", **kwargs)
    except OSError as e:
        raise OutputWriteError(
            f"cannot write Lance fragments under {uri}: {_one_line(e)}; the parts written "
            "before are complete - fix this, then run the same command with --resume"
        ) from e
    record = {
        "kind": RECORD_KIND,
        "version": RECORD_VERSION,
        "rows": table.num_rows,
        "schema": base64.b64encode(table.schema.serialize().to_pybytes()).decode("ascii"),
        "fragments": [f.to_json() for f in fragments],
    }
    return (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")


@dataclass(frozen=True)
class PartRecord:
    """A committed part's fragments (``lance.fragment.FragmentMetadata``) and schema."""

    rows: int
    schema: pa.Schema
    fragments: list[Any]


def read_record(data: bytes) -> PartRecord:
    """Parse a part record.

    Raises:
        ValueError: it is not one (the caller sets the part aside as damaged).
    """
    from lance.fragment import FragmentMetadata

    record = json.loads(data.decode("utf-8"))
    if not isinstance(record, dict) or record.get("kind") != RECORD_KIND:
        raise ValueError("not a batchvision Lance part record")
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(record["schema"])))
    fragments = [FragmentMetadata.from_json(json.dumps(f)) for f in record["fragments"]]
    if sum(f.physical_rows for f in fragments) != record["rows"]:
        raise ValueError("its fragments do not hold the rows it records")
    return PartRecord(int(record["rows"]), schema, fragments)


def read_ids_statuses(
    data: bytes, out_dir: str, options: StorageOptions
) -> tuple[list[str], list[str]]:
    """The ``id`` and ``status`` of a part's rows, read from its fragment files.

    Raises:
        ValueError: the record or a fragment file it names is unreadable or missing.
    """
    from lance.file import LanceFileReader

    record = read_record(data)
    uri, opts = dataset_uri(out_dir), lance_storage_options(out_dir, options)
    ids: list[str] = []
    statuses: list[str] = []
    for fragment in record.fragments:
        path = f"{uri}/data/{fragment.files[0].path}"
        try:
            reader = LanceFileReader(path, storage_options=opts, columns=["id", "status"])
            table = reader.read_all().to_table()
        except (OSError, RuntimeError, ValueError) as e:
            raise ValueError(f"fragment file {path} cannot be read: {_one_line(e)}") from e
        if table.num_rows != fragment.physical_rows:
            raise ValueError(f"fragment file {path} holds {table.num_rows} rows, not "
                             f"{fragment.physical_rows}")  # fmt: skip
        ids += table.column("id").to_pylist()
        statuses += table.column("status").to_pylist()
    return ids, statuses


def commit(out_dir: str, records: list[tuple[str, bytes]], options: StorageOptions) -> int | None:
    """Make the dataset's new version hold exactly the fragments of ``records`` (each a
    committed part's name and bytes, in order); returns that version (``None`` when there
    is nothing to commit). A version that holds them already is kept as it is.

    Raises:
        OutputDirError: a record is unreadable, or parts disagree on the schema.
        OutputWriteError: Lance could not write the version.
    """
    import lance
    from lance import LanceDataset, LanceOperation

    schema: pa.Schema | None = None
    first = ""
    fragments: list[Any] = []
    for name, data in records:
        try:
            record = read_record(data)
        except (ValueError, KeyError, TypeError) as e:
            raise OutputDirError(f"part {name} is not a readable Lance part record: {e}") from e
        if schema is None:
            schema, first = record.schema, name
        elif not record.schema.equals(schema):
            raise OutputDirError(
                f"parts {first} and {name} hold different schemas; one Lance dataset "
                "cannot hold both - rerun with --overwrite"
            )
        fragments += record.fragments
    if schema is None:
        return None
    uri, opts = dataset_uri(out_dir), lance_storage_options(out_dir, options)
    try:
        current = lance.dataset(uri, storage_options=opts)
    except (OSError, ValueError):  # no version yet
        current = None
    wanted = sorted(f.files[0].path for f in fragments)
    if current is not None and _file_names(current) == wanted:
        return int(current.version)
    try:
        ds = LanceDataset.commit(
            uri,
            LanceOperation.Overwrite(schema, fragments),
            read_version=None if current is None else current.version,
            storage_options=opts,
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise OutputWriteError(
            f"cannot commit the Lance dataset {uri}: {_one_line(e)}; every part is kept - "
            "run the same command with --resume to commit it"
        ) from e
    logger.info(
        "lance: version %d of %s holds %d fragment(s) of %d part(s)",
        ds.version, uri, len(fragments), len(records),
    )  # fmt: skip
    return int(ds.version)


def _file_names(ds: Any) -> list[str]:
    return sorted(f.metadata.files[0].path for f in ds.get_fragments())


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]
