"""Object storage: ``s3://`` URIs to pyarrow filesystems, and what their errors mean.

Local paths never come here: they keep using ``open``/``os`` directly, which is faster
than pyarrow's local filesystem for whole small files. A URI resolves to one cached
``pyarrow.fs.S3FileSystem`` per process and per (scheme, anonymous or not, bucket,
settings), so every read in a worker reuses one connection pool.

Retries are the AWS SDK's own ("standard" mode: exponential backoff with jitter, for
throttling, 5xx, timeouts and broken connections), bounded by ``StorageOptions.max_attempts``.
After that a read error becomes an error row; an authentication or authorization failure
is a ``StorageAuthError`` that stops the run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from batchvision.errors import ConfigError, StorageAuthError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

SCHEMES = ("s3",)
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_READ_CONCURRENCY = 16
ANONYMOUS_USER = "anonymous"


def env_endpoint() -> str | None:
    """The S3 endpoint the AWS environment names (``AWS_ENDPOINT_URL_S3`` first)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def env_max_attempts() -> int:
    """``AWS_MAX_ATTEMPTS`` as the AWS CLI and SDKs read it, else the default."""
    value = os.environ.get("AWS_MAX_ATTEMPTS")
    try:
        return int(value) if value else DEFAULT_MAX_ATTEMPTS
    except ValueError:
        raise ConfigError(f"AWS_MAX_ATTEMPTS={value!r} is not an integer") from None


@dataclass(frozen=True)
class StorageOptions:
    """How to reach object storage; small and picklable, so engines ship it to workers.

    Credentials are not here: they come from the AWS environment and config files
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
    ``AWS_PROFILE``, ``~/.aws``, instance roles) in every process that reads.

    Attributes:
        endpoint: URL of an S3-compatible store (``http://host:port``); ``None`` for AWS.
        max_attempts: tries per request, the first included, before a read fails.
        connect_timeout: seconds to connect; ``None`` keeps the SDK's default.
        request_timeout: seconds to wait on a request; ``None`` keeps the SDK's default.
        read_concurrency: objects of one batch read at once (threads), per worker.
    """

    endpoint: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout: float | None = None
    request_timeout: float | None = None
    read_concurrency: int = DEFAULT_READ_CONCURRENCY

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(
                    f"--s3-endpoint {self.endpoint!r} is not valid; give a URL such as "
                    "http://127.0.0.1:9000 or https://storage.example.com"
                )
        if self.max_attempts < 1:
            raise ConfigError(f"S3 max attempts must be >= 1, got {self.max_attempts}")
        if self.read_concurrency < 1:
            raise ConfigError(f"S3 read concurrency must be >= 1, got {self.read_concurrency}")
        for name in ("connect_timeout", "request_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"S3 {name.replace('_', ' ')} must be > 0 s, got {value}")


def is_uri(path: str) -> bool:
    """Whether ``path`` is an object-storage URI rather than a local path."""
    return "://" in path


@dataclass(frozen=True)
class S3Location:
    """A parsed ``s3://[anonymous@]bucket/key`` URI; ``key`` has no leading or trailing /."""

    scheme: str
    anonymous: bool
    bucket: str
    key: str

    @property
    def path(self) -> str:
        """The ``bucket/key`` path pyarrow's filesystem takes."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    @property
    def uri(self) -> str:
        user = f"{ANONYMOUS_USER}@" if self.anonymous else ""
        return f"{self.scheme}://{user}{self.path}"

    def child(self, rel: str) -> str:
        """The URI of ``rel`` (a ``/``-separated relative key) under this location."""
        return S3Location(self.scheme, self.anonymous, self.bucket, _join(self.key, rel)).uri

    def parent(self) -> S3Location:
        return S3Location(self.scheme, self.anonymous, self.bucket, self.key.rpartition("/")[0])


def _join(key: str, rel: str) -> str:
    parts: list[str] = [p for p in key.split("/") if p]
    for p in rel.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
        else:
            parts.append(p)
    return "/".join(parts)


def parse_uri(uri: str) -> S3Location:
    """Parse an object-storage URI; anything but ``s3://[anonymous@]bucket[/key]`` fails."""
    scheme, _, rest = uri.partition("://")
    if scheme.lower() not in SCHEMES:
        raise ConfigError(
            f"{uri!r}: the {scheme!r} scheme is not supported; use a local path or "
            "s3://bucket/prefix (s3://anonymous@bucket/prefix for public buckets)"
        )
    authority, _, key = rest.partition("/")
    user, at, bucket = authority.rpartition("@")
    if at and user != ANONYMOUS_USER:
        raise ConfigError(
            f"{uri!r}: only 'anonymous@' may precede the bucket; put credentials in the "
            "AWS environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...), never in a URI"
        )
    if not bucket:
        raise ConfigError(f"{uri!r} names no bucket; expected s3://bucket/prefix")
    return S3Location(scheme.lower(), bool(at), bucket, key.strip("/"))


def filesystem(uri: str, options: StorageOptions) -> tuple[pafs.FileSystem, S3Location]:
    """The (cached) filesystem that serves ``uri``, and the parsed location."""
    loc = parse_uri(uri)
    return _filesystem(loc.scheme, loc.anonymous, loc.bucket, options), loc


@functools.lru_cache(maxsize=64)
def _filesystem(
    scheme: str, anonymous: bool, bucket: str, options: StorageOptions
) -> pafs.FileSystem:
    import pyarrow.fs as pafs

    kwargs: dict[str, object] = {}
    if options.endpoint is not None:
        parts = urlsplit(options.endpoint)
        kwargs.update(scheme=parts.scheme, endpoint_override=parts.netloc + parts.path)
    else:
        # AWS serves a bucket from its own region only; when that cannot be found out,
        # the SDK's defaults (AWS_REGION, ~/.aws/config) decide.
        with contextlib.suppress(OSError):
            kwargs["region"] = pafs.resolve_s3_region(bucket)
    return pafs.S3FileSystem(
        anonymous=anonymous,
        # Small outputs (parts, the manifest) then go up in one PutObject instead of a
        # three-request multipart upload; a missing bucket is reported at close().
        allow_delayed_open=True,
        connect_timeout=options.connect_timeout,
        request_timeout=options.request_timeout,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=options.max_attempts),
        **kwargs,
    )


# --- what an error means -----------------------------------------------------------------

ErrorKind = Literal["auth", "not_found", "transient", "other"]

_AWS_ERROR = re.compile(r"AWS Error (\w+)")
_HTTP_STATUS = re.compile(r"HTTP status (\d{3})")
_REQUEST_ID = re.compile(r"\s*\(Request ID: [^)]*\)")
_AUTH_ERRORS = frozenset(
    {
        "ACCESS_DENIED",
        "INVALID_ACCESS_KEY_ID",
        "SIGNATURE_DOES_NOT_MATCH",
        "EXPIRED_TOKEN",
        "INVALID_CLIENT_TOKEN_ID",
        "MISSING_AUTHENTICATION_TOKEN",
        "UNRECOGNIZED_CLIENT",
        "INVALID_SIGNATURE",
    }
)
# Error codes an S3 store may send that the SDK reports as UNKNOWN.
_AUTH_WORDS = re.compile(
    r"\b(AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|ExpiredToken|InvalidToken)\b"
)
_NOT_FOUND_ERRORS = frozenset({"NO_SUCH_KEY", "NO_SUCH_BUCKET", "RESOURCE_NOT_FOUND"})
_TRANSIENT_ERRORS = frozenset(
    {
        "SLOW_DOWN",
        "THROTTLING",
        "SERVICE_UNAVAILABLE",
        "INTERNAL_FAILURE",
        "NETWORK_CONNECTION",
        "REQUEST_TIMEOUT",
        "REQUEST_EXPIRED",
    }
)


def classify(error: OSError) -> ErrorKind:
    """What a pyarrow S3 error means for a run: stop it, a missing object, or a bad read."""
    if isinstance(error, FileNotFoundError):
        return "not_found"
    text = str(error)
    code = m.group(1) if (m := _AWS_ERROR.search(text)) else ""
    status = int(m.group(1)) if (m := _HTTP_STATUS.search(text)) else 0
    if code in _AUTH_ERRORS or status in (401, 403) or _AUTH_WORDS.search(text):
        return "auth"
    if code in _NOT_FOUND_ERRORS or status == 404:
        return "not_found"
    if code in _TRANSIENT_ERRORS or status == 429 or status >= 500 or "curlCode" in text:
        return "transient"
    return "other"


def describe(error: OSError) -> str:
    """The error's message on one line, without the request id."""
    return " ".join(_REQUEST_ID.sub("", str(error)).split())


def auth_error(error: OSError, uri: str, options: StorageOptions) -> StorageAuthError:
    """The run-stopping error for an authentication or authorization failure on ``uri``."""
    where = f" at {options.endpoint}" if options.endpoint else ""
    hint = (
        "the object is not public (anonymous@ sends no credentials); drop anonymous@ to use "
        "the AWS credentials"
        if is_uri(uri) and parse_uri(uri).anonymous
        else "check the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
        "~/.aws), their permissions on this bucket, and --s3-endpoint"
    )
    return StorageAuthError(f"S3 refused access to {uri}{where}: {describe(error)} - {hint}")


def check_auth(error: OSError, uri: str, options: StorageOptions) -> None:
    """Raise ``StorageAuthError`` when ``error`` is an authentication failure."""
    if classify(error) == "auth":
        raise auth_error(error, uri, options) from error


# --- whole objects -----------------------------------------------------------------------


class ObjectTooLargeError(Exception):
    """An object larger than the reader's limit; nothing of it was read."""

    def __init__(self, size: int) -> None:
        super().__init__(f"object is {size} bytes")
        self.size = size


#: Bytes an S3 stream is read at a time: pyarrow's S3 stream sends one ranged GET per
#: read, so small reads (a tar parser's 512-byte headers) go through a buffer this large.
S3_READ_BUFFER = 8 << 20


def open_stream(path: str, options: StorageOptions) -> Any:
    """A local file or an S3 object as a binary stream read in order, never whole (on S3
    one GET per ``S3_READ_BUFFER`` bytes)."""
    if not is_uri(path):
        _check_regular(path)
        return open(path, "rb", buffering=1 << 20)
    fs, loc = filesystem(path, options)
    return fs.open_input_stream(loc.path, compression=None, buffer_size=S3_READ_BUFFER)


def parquet_file(path: str, options: StorageOptions) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` of a local file or an S3 object (read by ranges)."""
    import pyarrow.parquet as pq

    if not is_uri(path):
        _check_regular(path)
        return pq.ParquetFile(path)
    fs, loc = filesystem(path, options)
    return pq.ParquetFile(fs.open_input_file(loc.path))


def _check_regular(path: str) -> None:
    """Only regular files are opened: a FIFO's open (or read) would wait forever."""
    import stat

    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"not a regular file: {path}")


def read_object(uri: str, options: StorageOptions, max_bytes: int | None = None) -> bytes:
    """All bytes of one object; pyarrow errors pass through (see ``classify``).

    With ``max_bytes``, the object's size (from a HEAD request) is checked before any byte
    is read, and the read asks for that many bytes only (a ranged GET), however the object
    changes meanwhile: ``ObjectTooLargeError`` when it is larger.
    """
    fs, loc = filesystem(uri, options)
    if max_bytes is None:
        # compression=None: the bytes as stored, even for a key ending in .gz or .bz2.
        with fs.open_input_stream(loc.path, compression=None) as f:
            return bytes(f.read())
    with fs.open_input_file(loc.path) as f:
        size = f.size()
        if size > max_bytes:
            raise ObjectTooLargeError(size)
        return bytes(f.read(size))


def write_object(uri: str, data: bytes, options: StorageOptions) -> None:
    """Write ``data`` to ``uri`` in one upload; the object appears only once complete.

    All bytes are in memory before the upload starts, so a failure while encoding never
    leaves a partial object: S3 shows a key only when its PUT or multipart upload completes.
    """
    fs, loc = filesystem(uri, options)
    try:
        out = fs.open_output_stream(loc.path)
        out.write(data)
        out.close()
    except OSError as e:
        check_auth(e, uri, options)
        raise


def delete_object(uri: str, options: StorageOptions) -> None:
    fs, loc = filesystem(uri, options)
    fs.delete_file(loc.path)


def delete_prefix(uri: str, options: StorageOptions) -> None:
    """Delete every object under the prefix ``uri``."""
    fs, loc = filesystem(uri, options)
    fs.delete_dir(loc.path)


def list_files(uri: str, options: StorageOptions) -> list[tuple[str, int]]:
    """``(relative key, size)`` of every object under ``uri``, recursively, sorted by key.

    Folder markers (keys ending in ``/``) are not files. A prefix with nothing under it
    lists as empty.
    """
    import pyarrow.fs as pafs

    fs, loc = filesystem(uri, options)
    try:
        infos = fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    except OSError as e:
        check_auth(e, uri, options)
        raise
    start = len(loc.path) + 1
    return sorted(
        (info.path[start:], info.size or 0) for info in infos if info.type == pafs.FileType.File
    )


def list_dir(uri: str, options: StorageOptions) -> list[tuple[str, bool]]:
    """``(name, is_folder)`` of the entries one level under ``uri``, sorted by name.

    One delimited listing: keys deeper down show as their first-level "folder" only.
    """
    import pyarrow.fs as pafs

    fs, loc = filesystem(uri, options)
    try:
        infos = fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    except OSError as e:
        check_auth(e, uri, options)
        raise
    return sorted(
        (info.base_name, info.type == pafs.FileType.Directory)
        for info in infos
        if info.type in (pafs.FileType.File, pafs.FileType.Directory)
    )


def file_type(uri: str, options: StorageOptions) -> Literal["file", "folder", "missing"]:
    """Whether ``uri`` is an object, a prefix with objects under it, or neither."""
    import pyarrow.fs as pafs

    fs, loc = filesystem(uri, options)
    try:
        info = fs.get_file_info(loc.path)
    except OSError as e:
        check_auth(e, uri, options)
        raise
    if info.type == pafs.FileType.File:
        return "file"
    if info.type == pafs.FileType.Directory:
        return "folder"
    return "missing"
