"""One writer per output folder: an exclusive lock held for the whole run.

Two runs writing one folder (two fresh runs that both found it empty, or a ``--resume``
started while the first run still writes) would write every id twice and overwrite each
other's manifest. So a run takes the output's lock before it looks at the folder, and
holds it until the end:

- a local folder: ``.batchvision.lock`` locked with ``flock``, held by an open file for the
  run's life. The kernel releases it when the process dies, however it dies, so a dead
  holder's lock is simply taken.
- an S3 prefix: a lease object ``.batchvision.lock`` created with a conditional PUT
  (``If-None-Match: *``) and renewed (``If-Match`` on its ETag) while the run lives. Its
  body names the holder and an expiry; a lease past its expiry, or held by a process of
  this host that no longer exists, is taken over (again with ``If-Match``, so two runs
  cannot both take it).

The lock's name starts with a dot: readers (pyarrow datasets, ``report``) skip it, and the
emptiness and ``--overwrite`` checks do not count it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchvision.errors import ConfigError, OutputDirError
from batchvision.io import storage
from batchvision.io.storage import StorageOptions

logger = logging.getLogger(__name__)

LOCK_NAME = ".batchvision.lock"
#: How long an S3 lease lasts without renewal; renewed every quarter of it.
LEASE_SECONDS = 60.0
#: Space the local lock file keeps for the run's last manifest write: when the disk fills
#: up mid-run it is given back, so that the manifest can still say what happened.
RESERVE_BYTES = 128 * 1024


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _holder(run_id: str, expires: _dt.datetime | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "run_id": run_id,
        "started_at": _now().isoformat(timespec="seconds"),
    }
    if expires is not None:
        info["expires_at"] = expires.isoformat(timespec="seconds")
    return info


def describe_holder(info: dict[str, Any] | None) -> str:
    """``pid 123 on host h, started 2026-...``, or what is known of it."""
    if not info:
        return "holder unknown"
    return (
        f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
        f"started {info.get('started_at', '?')}"
    )


def _refusal(out_dir: str, info: dict[str, Any] | None) -> OutputDirError:
    return OutputDirError(
        f"--output {out_dir!r} is in use by another batchvision run ({describe_holder(info)}); "
        "wait for it to finish or stop it, or choose another folder"
    )


class OutputLock:
    """The held lock; ``check()`` raises once it is known to be lost, ``release()`` ends it."""

    def check(self) -> None:
        """Raise ``OutputDirError`` when another process may now be writing the output."""

    def release(self) -> None:
        """Give the lock up (idempotent)."""

    def free_reserve(self) -> None:
        """Give back the space kept for the last manifest write (a full disk)."""


@contextlib.contextmanager
def hold(out_dir: str, run_id: str, options: StorageOptions | None = None) -> Iterator[OutputLock]:
    """Hold ``out_dir``'s lock for the block; released on any exit, Ctrl-C included.

    Raises:
        OutputDirError: another live run holds it, or the output cannot be a folder.
    """
    lock: OutputLock
    if storage.is_uri(out_dir):
        lock = _S3Lease(out_dir, run_id, options or StorageOptions())
    else:
        lock = _LocalLock(out_dir, run_id)
    try:
        yield lock
    finally:
        lock.release()


# --- a local folder -------------------------------------------------------------------------


def _make_folder(out_dir: str) -> bool:
    """Create ``out_dir`` (and its parents); whether it was created. One-line errors."""
    root = Path(out_dir)
    if root.is_dir():
        return False
    if root.exists() or root.is_symlink():
        raise OutputDirError(f"--output {out_dir!r} exists and is not a folder; choose a folder")
    try:
        root.mkdir(parents=True)
    except FileExistsError:
        # A parent is a file (``somefile/out``), or another run just made it.
        if root.is_dir():
            return False
        raise OutputDirError(
            f"--output {out_dir!r} cannot be created: a part of its path is a file, not a "
            "folder; choose a folder path"
        ) from None
    except OSError as e:
        why = e.strerror or str(e)
        if e.errno == errno.ENOTDIR:
            why = "a part of its path is a file, not a folder"
        raise OutputDirError(
            f"--output {out_dir!r} cannot be created: {why}; choose a folder you can write to"
        ) from e
    return True


class _LocalLock(OutputLock):
    def __init__(self, out_dir: str, run_id: str) -> None:
        import fcntl

        self._created = _make_folder(out_dir)
        self._out_dir = out_dir
        self._root = Path(out_dir)
        self._path = self._root / LOCK_NAME
        self._fd: int | None = None
        self._data = json.dumps(_holder(run_id)).encode()
        try:
            fd = self._lock(fcntl)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise OutputDirError(
                    f"--output {out_dir!r} cannot be locked for this run: {e.strerror or e}; "
                    "choose a folder you can write to"
                ) from e
            logger.warning(
                "the file system of %s cannot lock files (%s): nothing stops a second run "
                "from writing there at the same time",
                out_dir,
                e.strerror or e,
            )
            return
        self._fd = fd
        # The holder's name for a refused run's message, then the space kept for the last
        # manifest write. Without room for either the run goes on: its writes fail soon,
        # one line each.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._data, 0)
            os.pwrite(fd, b" " * RESERVE_BYTES, len(self._data))

    def _lock(self, fcntl: Any) -> int:
        """Open and flock the lock file; refuse when another process holds it."""
        while True:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_json(os.pread(fd, 4096, 0))
                os.close(fd)
                raise _refusal(self._out_dir, info) from None
            except OSError:
                os.close(fd)
                raise
            # The holder we waited on may have removed the file between our open and our
            # flock: then we hold a lock on a name nobody else will open. Retry.
            try:
                same = os.stat(self._path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def free_reserve(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, len(self._data))

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding: a run that opened the file meanwhile finds it gone
        # (the inode check above) and opens a fresh one.
        with contextlib.suppress(OSError):
            if os.stat(self._path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self._path)
        os.close(self._fd)
        self._fd = None
        if self._created:  # a run refused before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                self._root.rmdir()


def _read_json(data: bytes) -> dict[str, Any] | None:
    try:
        info = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


# --- an S3 prefix ---------------------------------------------------------------------------


def _s3_client(options: StorageOptions, bucket: str) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(
            "writing to s3:// needs boto3 (for the output lease that keeps two runs from "
            "writing one prefix): pip install 'batchvision[s3]'"
        ) from None
    region = None
    if options.endpoint is None:
        import pyarrow.fs as pafs

        with contextlib.suppress(OSError):
            region = pafs.resolve_s3_region(bucket)
    config = Config(
        retries={"max_attempts": options.max_attempts, "mode": "standard"},
        connect_timeout=options.connect_timeout or 60,
        read_timeout=options.request_timeout or 60,
    )
    return boto3.client("s3", endpoint_url=options.endpoint, region_name=region, config=config)


def _error_code(e: Exception) -> tuple[str, int]:
    response = getattr(e, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _S3Lease(OutputLock):
    def __init__(self, out_dir: str, run_id: str, options: StorageOptions) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        loc = storage.parse_uri(out_dir)
        self._out_dir = out_dir
        self._uri = loc.child(LOCK_NAME)
        self._bucket = loc.bucket
        self._key = storage.parse_uri(self._uri).key
        self._run_id = run_id
        self._client = _s3_client(options, loc.bucket)
        self._lost: str | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        try:
            self._acquire(ClientError)
        except (ClientError, BotoCoreError) as e:
            raise self._failure(e) from e
        self._thread = threading.Thread(target=self._renew_loop, name="output-lease", daemon=True)
        self._thread.start()

    def _failure(self, e: Exception) -> OutputDirError:
        code, status = _error_code(e)
        if status in (401, 403) or code in ("AccessDenied", "InvalidAccessKeyId"):
            return OutputDirError(
                f"S3 refused the output lease {self._uri}: {code or e} - check the AWS "
                "credentials and their permissions on this bucket"
            )
        if code == "NotImplemented" or status == 501:
            return OutputDirError(
                f"--output {self._out_dir!r}: this S3 store does not support conditional "
                "writes (If-None-Match), which batchvision needs to keep two runs from "
                "writing one prefix"
            )
        if code == "NoSuchBucket":
            return OutputDirError(
                f"--output {self._out_dir!r}: bucket {self._bucket!r} does not exist"
            )
        return OutputDirError(f"cannot take the output lease {self._uri}: {e}")

    def _body(self) -> bytes:
        expires = _now() + _dt.timedelta(seconds=LEASE_SECONDS)
        return json.dumps(_holder(self._run_id, expires)).encode()

    def _acquire(self, client_error: type[Exception]) -> None:
        for _ in range(5):
            try:
                r = self._client.put_object(
                    Bucket=self._bucket, Key=self._key, Body=self._body(), IfNoneMatch="*"
                )
                self._etag = r["ETag"]
                return
            except client_error as e:
                if _error_code(e)[1] not in (409, 412):  # 409: a concurrent conditional write
                    raise
            try:
                held = self._client.get_object(Bucket=self._bucket, Key=self._key)
            except client_error as e:
                if _error_code(e)[1] == 404:
                    continue  # released meanwhile: try again
                raise
            info = _read_json(held["Body"].read())
            if not self._holder_dead(info, held["LastModified"]):
                raise _refusal(self._out_dir, info)
            try:
                r = self._client.put_object(
                    Bucket=self._bucket, Key=self._key, Body=self._body(), IfMatch=held["ETag"]
                )
            except client_error as e:
                if _error_code(e)[1] in (404, 409, 412):
                    continue  # someone else took it or released it first: look again
                raise
            self._etag = r["ETag"]
            logger.warning(
                "took over the output lease %s from a run that is gone (%s)",
                self._uri,
                describe_holder(info),
            )
            return
        raise _refusal(self._out_dir, None)

    @staticmethod
    def _holder_dead(info: dict[str, Any] | None, modified: _dt.datetime) -> bool:
        expires = None
        if info and isinstance(info.get("expires_at"), str):
            with contextlib.suppress(ValueError):
                expires = _dt.datetime.fromisoformat(info["expires_at"])
        if expires is None:  # unreadable body: it lasts a lease from its last write
            expires = modified + _dt.timedelta(seconds=LEASE_SECONDS)
        if expires < _now():
            return True
        if info and info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
            return info["pid"] != os.getpid() and not _pid_alive(info["pid"])
        return False

    def _renew_loop(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + LEASE_SECONDS
        while not self._stop.wait(LEASE_SECONDS / 4):
            try:
                r = self._client.put_object(
                    Bucket=self._bucket, Key=self._key, Body=self._body(), IfMatch=self._etag
                )
                self._etag = r["ETag"]
                deadline = time.monotonic() + LEASE_SECONDS
            except (ClientError, BotoCoreError) as e:
                if _error_code(e)[1] in (404, 412):
                    self._lost = f"another process replaced or removed {self._uri}"
                elif time.monotonic() > deadline:
                    self._lost = f"{self._uri} could not be renewed before it expired ({e})"
                else:
                    logger.warning("renewing the output lease failed, retrying: %s", e)
                    continue
                logger.error("lost the output lease: %s", self._lost)
                return

    def check(self) -> None:
        if self._lost is not None:
            raise OutputDirError(
                f"stopped: this run lost its lock on --output {self._out_dir!r} "
                f"({self._lost}); the parts written before are complete - make sure no other "
                "run writes there, then run the same command with --resume"
            )

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=LEASE_SECONDS)
        if self._lost is not None:
            return
        try:
            self._client.delete_object(Bucket=self._bucket, Key=self._key, IfMatch=self._etag)
        except Exception as e:  # the lease expires by itself
            logger.warning("could not remove the output lease %s: %s", self._uri, e)
