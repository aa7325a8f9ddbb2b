"""``build_report``: read an output folder, sample it, draw thumbnails, write one HTML file."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchvision.errors import ConfigError, OutputDirError, RowError
from batchvision.io import sinks
from batchvision.io.storage import StorageOptions, env_endpoint
from batchvision.report import data, images, reading, render
from batchvision.tasks import get_task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportConfig:
    """What ``batchvision report`` is asked for; validated on construction.

    Attributes:
        output_dir: the folder ``batchvision run`` wrote (local path or ``s3://`` URI).
        html: the file to write; ``None`` means ``output_dir/_report.html`` (local only).
        sample: how many gallery images, chosen uniformly at random (seeded).
        label: show only images with this predicted label (segmentation: class present).
        errors: the gallery shows error rows instead of ok rows.
        seed: seed of the sample, so the same command gives the same report.
        thumb_size: longest side of the thumbnails, in pixels.
        workers: threads that read and decode thumbnails.
        error_paths: how many paths each error group lists (the count is always exact).
        top_labels: bars in the label chart before the rest is folded into "other".
    """

    output_dir: str
    html: str | None = None
    sample: int = 200
    label: str | None = None
    errors: bool = False
    seed: int = 0
    thumb_size: int = 192
    workers: int = 8
    error_paths: int = 20
    top_labels: int = 15
    #: S3-compatible endpoint for ``s3://`` folders and images (default: the AWS environment).
    s3_endpoint: str | None = field(default_factory=env_endpoint)

    def __post_init__(self) -> None:
        for name in ("thumb_size", "workers", "error_paths", "top_labels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.sample < 0:
            raise ConfigError(f"--sample must be 0 or more, got {self.sample}")
        if self.label is not None and self.errors:
            raise ConfigError("--label and --errors exclude each other: error rows have no label")
        self.storage  # noqa: B018 - validates the endpoint now

    @property
    def storage(self) -> StorageOptions:
        """How to reach ``s3://`` paths: the output folder and the images its rows name."""
        return StorageOptions(endpoint=self.s3_endpoint or None)

    def html_path(self) -> str:
        """Where the report goes: ``html``, or ``_report.html`` inside a local output folder."""
        if self.html:
            if "://" in self.html:
                raise ConfigError(f"--html {self.html!r}: the report is written to a local file")
            return self.html
        if "://" in self.output_dir:
            raise ConfigError(
                f"{self.output_dir!r} is not a local folder: pass --html FILE to say where "
                "the report goes"
            )
        return os.path.join(self.output_dir, sinks.REPORT_NAME)


@dataclass
class ReportResult:
    """What was written: the file, the task, the counts and the sample drawn."""

    html: str
    task: str
    rows: int
    ok: int
    error: int
    sampled: int
    placeholders: int
    seconds: float
    error_codes: dict[str, int] = field(default_factory=dict)


def build_report(config: ReportConfig) -> ReportResult:
    """Write the HTML report of ``config.output_dir`` and say what it holds.

    Raises:
        OutputDirError: the folder is missing or not a batchvision output, or the report
            file cannot be written (exit code 2).
        ConfigError: a bad option, e.g. a ``--label`` no row has.
    """
    t0 = time.perf_counter()
    html_path = config.html_path()
    out = reading.open_output(config.output_dir, config.storage)
    task = data.infer_task(out.manifest, out.columns)
    light = reading.read_columns(out, data.light_columns(task))
    counts = data.status_counts(light)
    pool = data.candidates(light, task, label=config.label, errors=config.errors)
    picked = _sample(out, task, pool, config)
    groups = data.error_groups(light, cap=config.error_paths)
    dist = data.label_distribution(light, task, top=config.top_labels)
    del light
    logger.info("read %d rows in %.1f s", out.num_rows, time.perf_counter() - t0)

    rows = reading.take_rows(out, picked, data.row_columns(task))
    error_idx = np.array([i for g in groups for i in g.indices], dtype=np.int64)
    error_rows = iter(reading.take_rows(out, error_idx, ["id", "path", "error"]))
    groups = [
        data.ErrorGroup(g.code, g.count, g.indices, [next(error_rows) for _ in g.indices])
        for g in groups
    ]
    with ThreadPoolExecutor(max_workers=config.workers) as pool_:
        cards = list(pool_.map(lambda r: _card(out, task, r, config), rows))
    page = render.render_html(
        task=task,
        manifest=out.manifest,
        output_dir=config.output_dir,
        counts=counts,
        total_rows=out.num_rows,
        distribution=dist,
        groups=groups,
        cards=cards,
        config=config,
        pool_size=len(pool),
    )
    _write(html_path, page)
    result = ReportResult(
        html=html_path,
        task=task,
        rows=out.num_rows,
        ok=counts["ok"],
        error=counts["error"],
        sampled=len(cards),
        placeholders=sum(1 for c in cards if c["thumb"] is None),
        seconds=time.perf_counter() - t0,
        error_codes={g.code: g.count for g in groups},
    )
    logger.info("report of %d rows written to %s in %.1f s", result.rows, html_path, result.seconds)
    return result


#: Above this many stored bytes per row of the gallery's columns (inline masks), the sample
#: is drawn from a few row groups (``data.clustered_sample``) rather than from all of them.
HEAVY_ROW_BYTES = 512
ROWS_PER_GROUP = 10


def _sample(
    out: reading.OutputFolder, task: str, pool: np.ndarray, config: ReportConfig
) -> np.ndarray:
    if out.bytes_per_row(data.row_columns(task)) <= HEAVY_ROW_BYTES:
        return data.sample_indices(pool, config.sample, config.seed)
    groups = max(1, -(-config.sample // ROWS_PER_GROUP))
    return data.clustered_sample(
        pool, out.row_group_starts(), config.sample, config.seed, groups=groups
    )


def _write(path: str, page: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    # Hidden while being written, so a crash leaves nothing that looks like data.
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp")
    try:
        os.makedirs(parent, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputDirError(
            f"cannot write the report to {path!r} ({e.strerror or e}); pass --html FILE "
            "somewhere writable"
        ) from e


def _card(
    out: reading.OutputFolder, task: str, row: dict[str, Any], config: ReportConfig
) -> dict[str, Any]:
    """One gallery card: the row's fields, its thumbnail (or why there is none), its overlay."""
    card: dict[str, Any] = {
        "id": row.get("id") or "",
        "path": row.get("path") or "",
        "status": row.get("status") or "",
        "error": row.get("error"),
        "label": row.get("label"),
        "score": row.get("score"),
        "topk": list(zip(row.get("topk_labels") or [], row.get("topk_scores") or [], strict=False)),
        "thumb": None,
        "missing": None,
        "overlay": None,
        "legend": [],
    }
    base = None
    try:
        data = reading.read_image_bytes(card["path"], config.storage)
        base = images.thumbnail(data, config.thumb_size)
        card["thumb"] = images.data_uri(base)
    except RowError as e:
        card["missing"] = str(e)
    except Exception as e:  # a report must never die on one image
        logger.warning("thumbnail of %s failed: %s", card["path"], e)
        card["missing"] = f"unreadable: {e}"
    if get_task(task).report_view == "classes" and card["status"] == "ok":
        _add_mask(out, row, card, base, config)
    if get_task(task).report_view == "boxes" and card["status"] == "ok":
        _add_boxes(row, card, base)
    return card


def _add_boxes(row: dict[str, Any], card: dict[str, Any], base: Any) -> None:
    """The row's detections drawn on its thumbnail, and a legend: count and best score
    per label (the colour of the label's boxes)."""
    dets = row.get("detections") or []
    legend: dict[int, dict[str, Any]] = {}
    for d in dets:
        entry = legend.setdefault(
            int(d["label_id"]),
            {"id": int(d["label_id"]), "label": str(d.get("label") or d["label_id"]),
             "colour": images.hex_colour(int(d["label_id"]) + 1), "count": 0, "best": 0.0},
        )  # fmt: skip
        entry["count"] += 1
        entry["best"] = max(entry["best"], float(d.get("score") or 0.0))
    card["legend"] = [
        {**e, "note": f"{e['count']}x, best {e['best']:.2f}"}
        for e in sorted(legend.values(), key=lambda e: -e["best"])
    ]
    if base is not None and row.get("width"):
        scale = base.width / float(row["width"])
        card["overlay"] = images.data_uri(images.draw_boxes(base, dets, scale))


def _add_mask(
    out: reading.OutputFolder,
    row: dict[str, Any],
    card: dict[str, Any],
    base: Any,
    config: ReportConfig,
) -> None:
    classes = sorted(row.get("classes") or [], key=lambda c: -(c.get("fraction") or 0.0))
    card["legend"] = [
        {
            "id": int(c["id"]),
            "label": str(c.get("label") or c["id"]),
            "fraction": float(c.get("fraction") or 0.0),
            "colour": images.hex_colour(int(c["id"])),
        }
        for c in classes
        if c.get("id") is not None
    ]
    try:
        if row.get("mask") is not None:
            mask = images.decode_mask(row["mask"])
        elif row.get("mask_path"):
            data = reading.read_mask_bytes(out, row["mask_path"], config.storage)
            mask = images.decode_mask(data)
        else:
            card["mask_missing"] = "row has no mask"
            return
        card["overlay"] = images.data_uri(images.overlay(base, mask, config.thumb_size), "PNG")
    except (RowError, ValueError) as e:
        card["mask_missing"] = str(e)
