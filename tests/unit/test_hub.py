"""Pretrained downloads: the cache first, one bounded reachability check, quiet libraries."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Iterator

import pytest

from batchvision.models import hub

PROXY_VARS = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*PROXY_VARS, "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return int(server.getsockname()[1])  # closed when the block ends


def test_reachable_open_and_closed_ports(no_proxy_env: None, listener: int) -> None:
    assert hub.reachable(f"http://127.0.0.1:{listener}/weights.pth", timeout=2)
    assert not hub.reachable(f"http://127.0.0.1:{_closed_port()}/weights.pth", timeout=2)
    assert not hub.reachable("https://no-such-host.invalid/weights.pth", timeout=2)


def test_reachable_goes_through_the_proxy(
    no_proxy_env: None, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{listener}/weights.pth"
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{_closed_port()}")
    assert not hub.reachable(url, timeout=2)  # the download would go to the dead proxy
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert hub.reachable(url, timeout=2)


def test_cache_first_loads_offline_then_once_online(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    seen: list[bool] = []

    def load() -> str:
        seen.append(constants.HF_HUB_OFFLINE)
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError("not cached")
        return "weights"

    monkeypatch.setattr(hub, "reachable", lambda url: True)
    assert hub.cache_first(load, url="https://h/x", offline=RuntimeError) == "weights"
    assert seen == [True, False]
    assert constants.HF_HUB_OFFLINE is False


def test_cache_first_offline_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def load() -> str:
        calls.append("load")
        raise FileNotFoundError("not cached")

    monkeypatch.setattr(hub, "reachable", lambda url: calls.append(url) or False)
    with pytest.raises(RuntimeError, match=r"^offline: not cached$"):
        hub.cache_first(load, url="https://h/x", offline=lambda e: RuntimeError(f"offline: {e}"))
    assert calls == ["load", "https://h/x"]  # the cache, the host, and no download
    calls.clear()
    with pytest.raises(RuntimeError, match="h is not reachable"):
        hub.cache_first(
            load, url="https://h/x", offline=lambda e: RuntimeError(str(e)), cached=False
        )
    assert calls == ["https://h/x"]


def test_quiet_silences_library_retries_and_stderr(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    lib = logging.getLogger("huggingface_hub.utils._http")
    with caplog.at_level(logging.INFO), hub.quiet():
        lib.warning("Retrying in 8s [Retry 5/5].")
        sys.stderr.write('Downloading: "https://h/x" to /cache/x\n')
    lib.warning("after")
    assert capfd.readouterr().err == ""
    assert [r.getMessage() for r in caplog.records] == ["after"]
