"""The report in a real browser: headless Chromium (Debian's chromium + chromium-driver).

The fixture installs the packages with apt-get when they are missing (bounded in time) and
skips with the reason when it cannot. Screenshots are kept under the test's tmp folder and
copied to $BATCHVISION_ARTIFACTS when set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchvision.report import ReportConfig, build_report
from tests import report_fixtures

classify_outputs = report_fixtures.classify_outputs
segment_output = report_fixtures.segment_output

pytestmark = pytest.mark.timeout(180)
APT_TIMEOUT = 240


def _find_chromium() -> tuple[str | None, str | None]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    return browser, shutil.which("chromedriver")


def _install_chromium() -> str:
    """Try apt-get; returns why it failed ('' on success)."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    try:
        p = subprocess.run(
            [
                *sudo,
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                "chromium",
                "chromium-driver",
            ],
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get install failed: {e}"
    return "" if p.returncode == 0 else f"apt-get install exited {p.returncode}: {p.stderr[-300:]}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium driven by selenium, or a skip saying why there is none."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    binary, driver = _find_chromium()
    if binary is None or driver is None:
        why = _install_chromium()
        binary, driver = _find_chromium()
        if binary is None or driver is None:
            pytest.skip(f"headless Chromium unavailable (chromium, chromium-driver): {why}")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--allow-file-access-from-files",
    ):
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver), options=options)
    drv.set_page_load_timeout(60)
    drv.set_script_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def _screenshot(drv: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    height = drv.execute_script("return document.documentElement.scrollHeight;")
    drv.set_window_size(1400, min(int(height) + 100, 6000))  # the whole page
    drv.save_screenshot(str(path))
    drv.set_window_size(1400, 1000)
    assert path.stat().st_size > 5_000
    artifacts = os.environ.get("BATCHVISION_ARTIFACTS")
    if artifacts:
        os.makedirs(artifacts, exist_ok=True)
        shutil.copy(path, Path(artifacts) / name)
        path = Path(artifacts) / name
    print(f"\nscreenshot: {path}")
    return path


def _visible(drv: Any) -> list[dict[str, Any]]:
    return drv.execute_script(
        """return Array.from(document.querySelectorAll('#gallery .card'))
             .filter(c => c.offsetParent !== null)
             .map(c => ({label: c.dataset.label, score: c.dataset.score}));"""
    )


def test_classify_report_in_chromium(
    browser: Any, classify_outputs: dict[str, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    html = tmp_path / "report.html"
    result = build_report(ReportConfig(str(classify_outputs["parquet"]), html=str(html)))
    browser.get(html.as_uri())
    # Every embedded thumbnail decoded in the browser; the one gone image is a placeholder.
    widths = browser.execute_script(
        "return Array.from(document.querySelectorAll('img.thumb')).map(i => i.naturalWidth);"
    )
    assert len(widths) == result.sampled - 1 and all(w > 0 for w in widths)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".thumb-missing")) == 1
    cards = _visible(browser)
    assert len(cards) == result.sampled
    top1 = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "tr.top1 td:first-child")]
    assert top1 == [c["label"] for c in cards] and all(t.startswith("thing_") for t in top1)
    # The label filter shows exactly the cards with that top-1 label.
    label = cards[0]["label"]
    Select(browser.find_element(By.ID, "label-filter")).select_by_value(label)
    shown = _visible(browser)
    assert shown and {c["label"] for c in shown} == {label}
    assert len(shown) == sum(c["label"] == label for c in cards)
    assert browser.find_element(By.ID, "shown-count").text == str(len(shown))
    Select(browser.find_element(By.ID, "label-filter")).select_by_value("")
    # The low-confidence filter keeps the cards whose top-1 score is below the threshold.
    scores = sorted(float(c["score"]) for c in cards)
    threshold = round((scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2, 2)
    browser.execute_script(
        "const s = document.getElementById('score-max'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'));",
        str(threshold),
    )
    low = _visible(browser)
    assert len(low) == sum(s < threshold for s in scores) and 0 < len(low) < len(cards)
    assert all(float(c["score"]) < threshold for c in low)
    # Error groups are listed with their counts.
    codes = {
        e.get_attribute("data-code"): e.find_element(By.CLASS_NAME, "group-count").text
        for e in browser.find_elements(By.CSS_SELECTOR, ".error-group")
    }
    assert codes == {code: "1" for code in report_fixtures.BAD.values()}
    browser.execute_script(
        "const s = document.getElementById('score-max'); s.value = 1;"
        "s.dispatchEvent(new Event('input'));"
    )
    _screenshot(browser, tmp_path, "report-classify.png")


def test_segment_overlay_in_chromium(browser: Any, segment_output: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    html = tmp_path / "seg.html"
    build_report(ReportConfig(str(segment_output), html=str(html)))
    browser.get(html.as_uri())
    overlays = browser.execute_script(
        "return Array.from(document.querySelectorAll('img.overlay'))"
        ".map(i => [i.naturalWidth, i.naturalHeight]);"
    )
    assert len(overlays) == 7 and all(w > 0 and h > 0 for w, h in overlays)
    legend = {e.text.split()[0] for e in browser.find_elements(By.CSS_SELECTOR, ".legend div")}
    assert legend == {"background", "road", "car", "rare_thing"}
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "label-filter")).select_by_value("rare_thing")
    assert len(_visible(browser)) == 3
    _screenshot(browser, tmp_path, "report-segment.png")


#: ImageNet's longest class name (class 180).
LONG_LABEL = (
    "American Staffordshire terrier, Staffordshire terrier, American pit bull terrier, "
    "pit bull terrier"
)


def test_long_labels_fit_the_label_chart_in_chromium(browser: Any, tmp_path: Path) -> None:
    labels = {**report_fixtures.SEG_LABELS, 300: LONG_LABEL, 2: "WWWWWWWWWWWWWWWWWWWWWW"}
    out = report_fixtures.write_segment_output(tmp_path, labels)
    html = tmp_path / "long.html"
    build_report(ReportConfig(str(out), html=str(html)))
    browser.get(html.as_uri())
    # Every label's text lies inside the SVG, left of its bar (x from the SVG's left edge).
    boxes = browser.execute_script(
        """const svg = document.getElementById('label-chart').getBoundingClientRect();
           return Array.from(document.querySelectorAll('#label-chart g.bar')).map(g => {
             const label = g.querySelector('text');  // the first text is the label
             const t = label.getBoundingClientRect();
             const r = g.querySelector('rect').getBoundingClientRect();
             return {label: g.dataset.label, left: t.left - svg.left, right: t.right - svg.left,
                     bar: r.left - svg.left,
                     title: (label.querySelector('title') || {}).textContent};
           });"""
    )
    assert {b["label"] for b in boxes} == set(labels.values())
    for b in boxes:
        assert 0 <= b["left"] < b["right"] <= b["bar"], b
    assert [b["title"] for b in boxes] == [b["label"] for b in boxes]  # full names as tooltips
    _screenshot(browser, tmp_path, "report-long-labels.png")
