"""A report of an output folder in S3 whose images are in S3 too (moto on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

import batchvision
from batchvision.config import RunConfig
from batchvision.errors import OutputDirError
from batchvision.report import ReportConfig, build_report
from tests.conftest import S3Server

pytest.importorskip("moto")


def test_report_of_s3_output_with_s3_images(
    s3_server: S3Server,
    photo_dir: Path,
    tiny_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = s3_server.new_bucket("report")
    s3_server.upload_dir(photo_dir / "a", f"s3://{bucket}/in")
    s3_server.put(f"s3://{bucket}/in/broken.jpg", b"not an image")
    ckpt, labels = tiny_checkpoint
    out = f"s3://{bucket}/runs/one"
    summary = batchvision.run(
        RunConfig(
            inputs=(f"s3://{bucket}/in",),
            output=out,
            model="mobilenet_v3_small",
            weights=str(ckpt),
            labels=str(labels),
            workers=0,
            s3_endpoint=s3_server.endpoint,
        )
    )
    assert (summary.ok, summary.error) == (12, 1)
    html = tmp_path / "r.html"
    result = build_report(ReportConfig(out, html=str(html), s3_endpoint=s3_server.endpoint))
    assert (result.rows, result.ok, result.error, result.sampled) == (13, 12, 1, 12)
    # Every sampled image was read from S3: a thumbnail each, no placeholder.
    assert result.placeholders == 0
    page = html.read_text()
    assert page.count('src="data:image/jpeg;base64,') >= 12 and "not_image" in page
    # The endpoint may also come from the AWS environment, as for a run.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    again = build_report(ReportConfig(out, html=str(tmp_path / "env.html")))
    assert (again.rows, again.placeholders) == (13, 0)
    with pytest.raises(OutputDirError, match="does not exist"):
        build_report(ReportConfig(f"s3://{bucket}/runs/none", html=str(tmp_path / "x.html")))
