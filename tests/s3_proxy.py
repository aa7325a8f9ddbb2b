"""A small HTTP proxy in front of an S3 server that injects failures, for retry tests.

Each request is forwarded unchanged unless ``fault(method, path)`` returns an HTTP status;
then the proxy answers that status itself with an S3-style error body (``SlowDown`` for
503, ``InternalError`` for 500, ``InvalidAccessKeyId`` for 403), or, for ``RESET``, closes
the connection without a reply. Every request is counted
by ``(method, path)``, so tests can assert how many attempts a read took.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Fault = Callable[[str, str], "int | None"]

#: A fault "status" that drops the connection without answering (a connection reset).
RESET = 0

_ERROR_CODES = {
    403: (
        "InvalidAccessKeyId",
        "The AWS Access Key Id you provided does not exist in our records.",
    ),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


class FaultProxy:
    """Forwards to ``upstream`` (``http://host:port``); ``url`` is this proxy's endpoint."""

    def __init__(self, upstream: str, fault: Fault | None = None, delay: float = 0.0) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.delay = delay  # seconds added to every request: a far-away store's latency
        self.fault: Fault = fault or (lambda method, path: None)
        self.requests: Counter[tuple[str, str]] = Counter()
        self.injected: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                path = urlsplit(self.path).path
                key = (self.command, path)
                with proxy._lock:
                    proxy.requests[key] += 1
                    status = proxy.fault(self.command, path)
                    if status is not None:
                        proxy.injected[key] += 1
                body = self._read_body()
                if proxy.delay:
                    time.sleep(proxy.delay)
                if status == RESET:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # no reply at all
                elif status is not None:
                    self._reply_error(status)
                else:
                    self._forward(body)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunk = self.rfile.read(size)
                        self.rfile.readline()
                        if not size:
                            break
                        chunks.append(chunk)
                    return b"".join(chunks)
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _reply_error(self, status: int) -> None:
                code, message = _ERROR_CODES.get(status, ("InternalError", "injected"))
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("transfer-encoding", "connection", "content-length")
                }
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                if self.command == "HEAD":
                    length = resp.getheader("Content-Length")
                    self.send_header("Content-Length", length or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def count(self, method: str, path: str) -> int:
        """Requests seen for ``method`` and ``path`` (``/bucket/key``), injected or not."""
        with self._lock:
            return self.requests[(method, path)]
