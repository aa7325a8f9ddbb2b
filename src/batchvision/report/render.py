"""Rendering: the report's data into one self-contained HTML page (Jinja2 template)."""

from __future__ import annotations

import datetime as _dt
import json
from typing import TYPE_CHECKING, Any

import jinja2

from batchvision.report.data import Distribution, ErrorGroup, run_records
from batchvision.tasks import get_task

if TYPE_CHECKING:
    from batchvision.report.build import ReportConfig

CHART_WIDTH = 640
BAR_HEIGHT = 18
LABEL_WIDTH = 180
LABEL_FONT_PX = 12
#: Room for a label's text, right-aligned 6 px left of its bar.
LABEL_ROOM = LABEL_WIDTH - 12
#: Squeezed at most this much; a longer label is cut, with "…".
MAX_SQUEEZE = 1.3


def text_width(text: str, font_px: float = LABEL_FONT_PX) -> float:
    """An upper bound of ``text``'s width in common sans-serif fonts (DejaVu Sans, Arial).

    The page cannot measure before it is drawn without script, so the chart sizes labels
    from per-character widths no narrower than those fonts' (in em).
    """
    em = 0.0
    for ch in text:
        if ch in "WMmw@%":
            em += 1.0
        elif ch.isupper():
            em += 0.8
        else:
            em += 0.64
    return em * font_px


def fit_label(label: str, room: float = LABEL_ROOM) -> tuple[str, bool]:
    """``(text, squeeze)``: the label as the chart shows it, and whether to squeeze it.

    Labels wider than ``room`` are squeezed into it (SVG ``textLength``), and those wider
    than ``MAX_SQUEEZE`` times ``room`` are cut first and end in "…": the longest class
    names (ImageNet's run to 90 characters) never leave the chart on the left. The page
    gives the full name as the label's tooltip.
    """
    text = label
    if text_width(text) > room * MAX_SQUEEZE:
        while len(text) > 1 and text_width(text + "…") > room * MAX_SQUEEZE:
            text = text[:-1]
        text = text.rstrip(" ,;-") + "…"
    return text, text_width(text) > room


def chart_bars(dist: Distribution) -> list[dict[str, Any]]:
    """Bar geometry of the label chart (SVG units): the top labels, then "other"."""
    items = list(dist.bars) + ([("other", dist.other)] if dist.other else [])
    peak = max((c for _, c in items), default=0) or 1
    span = CHART_WIDTH - LABEL_WIDTH - 90
    return [
        {
            "label": label,
            "text": fit_label(label)[0],
            "squeeze": fit_label(label)[1],
            "count": count,
            "share": count / dist.images if dist.images else 0.0,
            "y": i * (BAR_HEIGHT + 4),
            "width": max(1.0, span * count / peak),
            "other": label == "other" and i == len(dist.bars),
        }
        for i, (label, count) in enumerate(items)
    ]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("batchvision.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tojson_attr"] = lambda v: json.dumps(v, ensure_ascii=False)
    return env


def render_html(
    *,
    task: str,
    manifest: dict[str, Any],
    output_dir: str,
    counts: dict[str, int],
    total_rows: int,
    distribution: Distribution,
    groups: list[ErrorGroup],
    cards: list[dict[str, Any]],
    config: ReportConfig,
    pool_size: int,
) -> str:
    """The whole page as a string: inline CSS, SVG, images and script; nothing external."""
    runs = run_records(manifest)
    bars = chart_bars(distribution)
    view = get_task(task).report_view
    labels = sorted({c["label"] for c in cards if c.get("label")})
    if view in ("classes", "boxes"):
        labels = sorted({e["label"] for c in cards for e in c["legend"]})
    template = _environment().get_template("report.html.j2")
    return template.render(
        task=task,
        view=view,
        model=manifest.get("model", "?"),
        weights=manifest.get("weights", "?"),
        manifest_status=manifest.get("status", "unknown"),
        output_dir=output_dir,
        counts=counts,
        skipped=(manifest.get("counts") or {}).get("skipped", 0),
        total_rows=total_rows,
        runs=runs,
        wall_seconds=sum(r["wall_seconds"] for r in runs),
        processed=sum(r["ok"] + r["error"] for r in runs),
        distribution=distribution,
        bars=bars,
        chart_height=max(1, len(bars)) * (BAR_HEIGHT + 4),
        chart_width=CHART_WIDTH,
        label_width=LABEL_WIDTH,
        label_room=LABEL_ROOM,
        bar_height=BAR_HEIGHT,
        groups=groups,
        error_paths=config.error_paths,
        cards=cards,
        labels=labels,
        sample=config.sample,
        seed=config.seed,
        label_filter=config.label,
        errors_only=config.errors,
        pool_size=pool_size,
        generated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
