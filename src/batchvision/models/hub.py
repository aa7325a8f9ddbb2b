"""Pretrained weights from the network: the local cache first, then one bounded attempt.

Offline, the libraries' own downloaders retry for up to a minute and log every retry
(huggingface_hub, which timm and transformers use) or announce a download before failing
(torch hub). Here a model source loads from the local cache only first; on a miss, one TCP
connection to the host (or to the proxy that would carry the download) tells within
``CONNECT_TIMEOUT_S`` whether a download can work at all; only then does the library
download, with its retry and progress output silenced. Offline, the user gets one line
saying how to supply the weights, within seconds.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

logger = logging.getLogger(__name__)

#: Seconds to wait for the weights' host (name lookup and TCP connect together).
CONNECT_TIMEOUT_S = 5.0
#: Loggers of the download libraries, silenced during a download (retries, warnings).
_LIBRARY_LOGGERS = ("huggingface_hub", "transformers", "timm", "torch.hub")
_T = TypeVar("_T")


def host(url: str) -> str:
    """The host name of ``url``, for messages."""
    return urllib.parse.urlsplit(url).hostname or url


def reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    Through the proxy the environment names for the URL's scheme (``https_proxy``...),
    when there is one and ``no_proxy`` does not exempt the host: that is where a
    download would connect.
    """
    parts = urllib.parse.urlsplit(url)
    name = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(name):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        name, port = p.hostname or "", p.port or (443 if p.scheme == "https" else 80)
    return bool(name) and _connects(name, port, timeout)


def _connects(name: str, port: int, timeout: float) -> bool:
    ok = threading.Event()

    def attempt() -> None:
        try:
            with socket.create_connection((name, port), timeout=timeout):
                ok.set()
        except OSError:
            pass

    # The name lookup ignores the socket's timeout (it can take 20 s and more without a
    # DNS server), so the attempt runs in a thread and is waited for at most `timeout`.
    thread = threading.Thread(target=attempt, name="batchvision-reachable", daemon=True)
    thread.start()
    thread.join(timeout)
    return ok.is_set()


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """Make huggingface_hub (and timm and transformers through it) read only its cache.

    Sets the flag ``HF_HUB_OFFLINE=1`` sets, for this block only; the environment variable
    itself is read once, when huggingface_hub is imported.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # no huggingface_hub: nothing can go to the hub either
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the download libraries for one load: their retry logs, warnings, progress
    bars and torch hub's ``Downloading:`` line (all written to stderr). Their errors still
    raise; the model source turns those into its own one-line message."""
    loggers = [logging.getLogger(n) for n in _LIBRARY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def cache_first(
    load: Callable[[], _T],
    *,
    url: str,
    offline: Callable[[BaseException], Exception],
    cached: bool = True,
) -> _T:
    """``load()`` from the local cache only; on a miss, once from the network.

    Args:
        load: loads the weights (or configs) through the library's own downloader.
        url: where a download would go; it must answer within ``CONNECT_TIMEOUT_S``.
        offline: the error to raise when it does not (given the cache miss's error).
        cached: whether ``load`` can run cache-only (Hugging Face hub downloads can); if
            not, the host is checked first and ``load`` runs once.

    Errors of the network attempt propagate: the caller words them.
    """
    if cached:
        try:
            with hf_offline(), quiet():
                return load()
        except Exception as e:
            miss: BaseException = e
            logger.debug("not in the local cache (%s: %s)", type(e).__name__, e)
    else:
        miss = ConnectionError(f"{host(url)} is not reachable")
    if not reachable(url):
        raise offline(miss) from miss
    # Shown by default: the download may take minutes, with the libraries' bars silenced.
    logger.warning(
        "downloading pretrained weights from %s (once: later runs use the cache)", host(url)
    )
    with quiet():
        return load()
