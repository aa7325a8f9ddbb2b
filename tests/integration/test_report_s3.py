"""A report of an output folder in S3 (a real moto server on loopback, started here)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchvision.errors import OutputDirError
from batchvision.report import ReportConfig, build_report
from tests import report_fixtures
from tests.report_fixtures import BAD, GOOD

classify_outputs = report_fixtures.classify_outputs
boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto server did not start within 30 s")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_report_of_s3_output(
    s3_endpoint: str,
    classify_outputs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="bv-report")
    local = classify_outputs["parquet"]
    for f in local.iterdir():
        s3.upload_file(str(f), "bv-report", f"runs/one/{f.name}")
    result = build_report(ReportConfig("s3://bv-report/runs/one", html=str(tmp_path / "r.html")))
    assert (result.rows, result.ok, result.error) == (GOOD + 1 + len(BAD), GOOD + 1, len(BAD))
    assert result.sampled == GOOD + 1 and "mobilenet_v3_small" in (tmp_path / "r.html").read_text()
    with pytest.raises(OutputDirError, match="does not exist"):
        build_report(ReportConfig("s3://bv-report/runs/none", html=str(tmp_path / "x.html")))
