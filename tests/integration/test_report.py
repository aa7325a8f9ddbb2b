"""``batchvision report`` on real and synthetic outputs: contents, formats, tasks, CLI."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchvision.errors import ConfigError, OutputDirError
from batchvision.report import ReportConfig, build_report
from tests import report_fixtures
from tests.conftest import run_cli
from tests.report_fixtures import BAD, GOOD, make_images

# Fixtures shared with the browser test.
classify_outputs = report_fixtures.classify_outputs
segment_output = report_fixtures.segment_output
embed_output = report_fixtures.embed_output

CARD = re.compile(
    r'<div class="card[^"]*" data-label="([^"]*)" data-labels="[^"]*" '
    r'data-score="([^"]*)"'
)


def _cards(html: str) -> list[tuple[str, str]]:
    return CARD.findall(html)


def _bars(html: str) -> dict[str, str]:
    return dict(re.findall(r'<g class="bar" data-label="([^"]*)" data-count="(\d+)"', html))


def _span(html: str, id_: str) -> str:
    m = re.search(rf'<span id="{id_}">([^<]*)</span>', html)
    assert m, id_
    return m.group(1)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_classify_report_contents(
    classify_outputs: dict[str, Path], fmt: str, tmp_path: Path
) -> None:
    out = classify_outputs[fmt]
    result = build_report(ReportConfig(str(out), html=str(tmp_path / "r.html")))
    html = (tmp_path / "r.html").read_text()
    n_ok = GOOD + 1  # GONE was readable at run time
    assert (result.rows, result.ok, result.error) == (n_ok + len(BAD), n_ok, len(BAD))
    assert _span(html, "count-ok") == str(n_ok) and _span(html, "count-error") == str(len(BAD))
    cards = _cards(html)
    assert len(cards) == n_ok == result.sampled
    assert all(label.startswith("thing_") and 0 < float(score) <= 1 for label, score in cards)
    # Every ok image has a thumbnail except the one deleted after the run.
    assert html.count('<img class="thumb" src="data:image/jpeg;base64,') == n_ok - 1
    assert result.placeholders == 1 and "not_found" in html
    assert html.count('class="top1"') == n_ok
    # Error groups: one per code, each with its path.
    assert result.error_codes == {code: 1 for code in BAD.values()}
    for name, code in BAD.items():
        assert f'data-code="{code}"' in html and name in html
    # The chart's bars add up to the ok rows, and the run's stage times are shown.
    counts = [
        int(c) for c in re.findall(r'<g class="bar" data-label="[^"]*" data-count="(\d+)"', html)
    ]
    assert sum(counts) == n_ok
    assert "inference" in html and "mobilenet_v3_small" in html
    assert re.search(r'<td id="throughput">\d+\.\d img/s', html)
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


def test_sample_label_and_errors_options(classify_outputs: dict[str, Path], tmp_path: Path) -> None:
    out = str(classify_outputs["parquet"])
    a = build_report(ReportConfig(out, html=str(tmp_path / "a.html"), sample=5, seed=3))
    b = build_report(ReportConfig(out, html=str(tmp_path / "b.html"), sample=5, seed=3))
    first = re.findall(r'alt="([^"]+)"', (tmp_path / "a.html").read_text())
    assert a.sampled == 5 and first == re.findall(
        r'alt="([^"]+)"', (tmp_path / "b.html").read_text()
    )
    del b
    labels = [lab for lab, _ in _cards((tmp_path / "a.html").read_text())]
    target = labels[0]
    c = build_report(ReportConfig(out, html=str(tmp_path / "c.html"), label=target))
    shown = _cards((tmp_path / "c.html").read_text())
    assert c.sampled == len(shown) >= 1 and {lab for lab, _ in shown} == {target}
    e = build_report(ReportConfig(out, html=str(tmp_path / "e.html"), errors=True))
    html = (tmp_path / "e.html").read_text()
    assert e.sampled == len(BAD) and html.count('class="card error"') == len(BAD)
    assert html.count("image unavailable") == len(BAD)  # none of them decodes
    with pytest.raises(ConfigError, match="no ok row has it; most frequent: thing_"):
        build_report(ReportConfig(out, html=str(tmp_path / "x.html"), label="nope"))
    with pytest.raises(ConfigError, match="exclude each other"):
        ReportConfig(out, label=target, errors=True)


def test_default_html_path_and_refusals(classify_outputs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(classify_outputs["parquet"], out)
    assert build_report(ReportConfig(str(out))).html == str(out / "_report.html")
    assert (out / "_report.html").stat().st_size > 10_000
    # The default report inside an output folder does not block `run --overwrite`, nor
    # does the report.html that earlier versions wrote by default.
    from batchvision.io.outdir import prepare_output_dir

    (out / "report.html").write_text("<html>an earlier version's report</html>")
    prepare_output_dir(str(out), resume=False, overwrite=True)
    assert list(out.iterdir()) == []
    with pytest.raises(OutputDirError, match="does not exist"):
        build_report(ReportConfig(str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OutputDirError, match="not a batchvision output folder"):
        build_report(ReportConfig(str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="pass --html FILE"):
        ReportConfig("s3://bucket/out").html_path()
    with pytest.raises(ConfigError, match="written to a local file"):
        ReportConfig(str(out), html="s3://bucket/r.html").html_path()


def test_default_report_leaves_the_folder_readable_as_a_dataset(
    classify_outputs: dict[str, Path], tmp_path: Path
) -> None:
    # README: `pq.read_table(DIR)`, `pd.read_parquet(DIR)`: still true after the report.
    import shutil

    import pandas as pd

    out = tmp_path / "copy"
    shutil.copytree(classify_outputs["parquet"], out)
    ids = sorted(pq.read_table(out, columns=["id"]).column("id").to_pylist())
    assert len(ids) == GOOD + len(BAD) + 1
    p = run_cli("report", str(out), "--sample", "4", timeout=120)
    assert p.returncode == 0, p.stderr
    assert sorted(pq.read_table(out).column("id").to_pylist()) == ids
    assert sorted(pd.read_parquet(out)["id"]) == ids
    assert (out / "_report.html").stat().st_size > 10_000


def test_segment_report(segment_output: Path, tmp_path: Path) -> None:
    result = build_report(ReportConfig(str(segment_output), html=str(tmp_path / "s.html")))
    html = (tmp_path / "s.html").read_text()
    assert result.task == "segment" and (result.ok, result.error) == (7, len(BAD))
    # Every ok row has an overlay, the gone image too (over grey); 16-bit masks by path too.
    assert html.count('<img class="overlay" src="data:image/png;base64,') == 7
    assert html.count('class="placeholder thumb-missing"') == 1
    assert "rare_thing" in html and "background" in html and "#000000" in html
    bars = _bars(html)
    assert bars == {"background": "7", "road": "4", "car": "4", "rare_thing": "3"}
    only = build_report(
        ReportConfig(str(segment_output), html=str(tmp_path / "t.html"), label="rare_thing")
    )
    assert only.sampled == 3


def test_embed_report(embed_output: Path, tmp_path: Path) -> None:
    result = build_report(ReportConfig(str(embed_output), html=str(tmp_path / "e.html")))
    html = (tmp_path / "e.html").read_text()
    assert (result.task, result.ok, result.error, result.sampled) == ("embed", 6, 1, 6)
    assert 'id="label-chart"' not in html and 'id="label-filter"' not in html
    assert html.count('<img class="thumb"') == 5 and 'data-code="not_found"' in html
    assert result.placeholders == 1 and "s3://no-bucket/a.jpg" in html


def test_cli_report(classify_outputs: dict[str, Path], tmp_path: Path) -> None:
    html = tmp_path / "cli.html"
    p = run_cli("report", str(classify_outputs["csv"]), "--html", str(html), "--sample", "4")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == str(html) and html.exists()
    assert "4 sampled" in p.stdout
    missing = run_cli("report", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"batchvision: error: output folder {str(tmp_path / 'nope')!r} does not exist"
    )
    both = run_cli("report", str(classify_outputs["csv"]), "--label", "x", "--errors")
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_million_rows(tmp_path: Path) -> None:
    """A 1,000,000-row output (10 parts) pointing at a few real images: right counts, fast."""
    images = make_images(tmp_path / "images", n=5, seed=1)
    out = tmp_path / "million"
    out.mkdir()
    n, parts = 1_000_000, 10
    rng = np.random.default_rng(0)
    labels = np.array([f"class_{i:03d}" for i in range(40)], dtype=object)
    per = n // parts
    for k in range(parts):
        idx = np.arange(k * per, (k + 1) * per)
        err = idx % 10 == 7  # exactly 10% error rows
        lab = labels[(idx * 7919) % 40]
        score = rng.random(per).astype(np.float32)
        codes = np.where(idx % 20 == 7, "not_found: gone", "corrupt: bad")
        table = pa.table(
            {
                "id": pa.array([f"{i:07d}.jpg" for i in idx]),
                "path": pa.array([str(images[i % 5]) for i in idx]),
                "status": pa.array(np.where(err, "error", "ok").tolist()),
                "error": pa.array(np.where(err, codes, None).tolist(), pa.string()),
                "label": pa.array(np.where(err, None, lab).tolist(), pa.string()),
                "score": pa.array(score, mask=err),
                "topk_labels": pa.array([[lbl] for lbl in lab.tolist()]),
                "topk_scores": pa.array(score.reshape(-1, 1).tolist(), pa.list_(pa.float32())),
            }
        )
        pq.write_table(table, out / f"part-m-{k:05d}.parquet", row_group_size=50_000)
    t0 = time.perf_counter()
    result = build_report(ReportConfig(str(out), html=str(tmp_path / "m.html")))
    seconds = time.perf_counter() - t0
    print(f"\nreport of {result.rows} rows: {seconds:.1f} s")
    assert (result.rows, result.ok, result.error) == (n, 900_000, 100_000)
    assert result.sampled == 200 and result.placeholders == 0
    assert result.error_codes == {"corrupt": 50_000, "not_found": 50_000}
    html = (tmp_path / "m.html").read_text()
    bars = _bars(html)
    assert sum(int(v) for v in bars.values()) == 900_000 and "other" in bars
    assert html.count("(20 shown, 49980 more)") == 2


def test_inline_masks_are_sampled_from_few_row_groups(tmp_path: Path) -> None:
    """Heavy rows (masks stored inline) are sampled from ~sample/10 row groups, not all."""
    import io

    from PIL import Image

    images = make_images(tmp_path / "images", n=3, seed=2)
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(8):  # incompressible masks: ~2 KB stored per row
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 10, (48, 48), dtype=np.uint8)).save(buf, "PNG")
        blobs.append(buf.getvalue())
    n = 3000
    cls = [{"id": 0, "label": "background", "fraction": 1.0}]
    table = pa.table(
        {
            "id": [f"{i:05d}" for i in range(n)],
            "path": [str(images[i % 3]) for i in range(n)],
            "status": ["ok"] * n,
            "error": pa.nulls(n, pa.string()),
            "mask": pa.array([blobs[i % 8] for i in range(n)], pa.binary()),
            "mask_path": pa.nulls(n, pa.string()),
            "mask_width": pa.array([48] * n, pa.int32()),
            "mask_height": pa.array([48] * n, pa.int32()),
            "classes": pa.array([cls] * n, report_fixtures.CLASSES_TYPE),
        }
    )
    out = tmp_path / "seg"
    out.mkdir()
    pq.write_table(
        table,
        out / "part-s-00000.parquet",
        row_group_size=100,
        use_dictionary=False,
        compression="none",
    )
    (out / "_manifest.json").write_text('{"task": "segment"}')
    result = build_report(ReportConfig(str(out), html=str(tmp_path / "s.html"), sample=30))
    html = (tmp_path / "s.html").read_text()
    ids = [int(i) for i in re.findall(r'alt="mask of (\d+)"', html)]
    assert result.sampled == len(ids) == 30 and result.placeholders == 0
    assert len({i // 100 for i in ids}) <= 3  # 30 rows from at most 3 of the 30 row groups


def test_report_of_a_real_segmentation_run(
    photo_dir: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A real run of a (tiny, random) SegFormer, inline masks and with --mask-dir: every ok
    image gets its overlay, and the legend names the classes its row lists."""
    import batchvision
    from batchvision.config import RunConfig
    from tests.task_models import save_tiny_segformer

    model = tmp_path_factory.mktemp("segformer")
    save_tiny_segformer(model, size=64)
    for mask_dir in (None, str(tmp_path / "masks")):
        out = tmp_path / f"seg-{mask_dir is None}"
        summary = batchvision.run(
            RunConfig(
                inputs=(str(photo_dir / "a"),),
                output=str(out),
                model=f"hf:{model}",
                workers=0,
                mask_dir=mask_dir,
            )
        )
        assert summary.ok == 12
        result = build_report(ReportConfig(str(out), html=str(tmp_path / "r.html"), sample=5))
        html = (tmp_path / "r.html").read_text()
        assert (result.task, result.sampled, result.placeholders) == ("segment", 5, 0)
        assert html.count('<img class="overlay" src="data:image/png;base64,') == 5
        rows = pq.read_table(out).to_pylist()
        present = {c["label"] for r in rows for c in r["classes"]}
        legend = set(re.findall(r'class="swatch"[^>]*></span>([^<]+?) <span', html))
        assert legend and legend <= present


def test_zero_shot_report_shows_labels_like_classify(tmp_path: Path) -> None:
    """A zero-shot run's report: the chart of top-1 classes, the label filter and the
    top-k per card, as for classify (the rows share its schema)."""
    import batchvision
    from batchvision.config import RunConfig
    from tests.task_models import save_tiny_clip

    save_tiny_clip(tmp_path / "clip")
    make_images(tmp_path / "in")
    out = tmp_path / "zs"
    batchvision.run(
        RunConfig(
            inputs=(str(tmp_path / "in"),), output=str(out), model=f"hf:{tmp_path / 'clip'}",
            task="zero-shot", classes=("cat", "dog", "car"), workers=0, max_error_rate=1.0,
        )
    )  # fmt: skip
    result = build_report(ReportConfig(str(out), html=str(tmp_path / "z.html")))
    html = (tmp_path / "z.html").read_text()
    assert result.task == "zero-shot" and result.ok == GOOD + 1  # the GONE image is there
    assert "Top-1 label of" in html and 'id="label-filter"' in html
    bars = _bars(html)
    assert set(bars) <= {"cat", "dog", "car"} and sum(map(int, bars.values())) == GOOD + 1
