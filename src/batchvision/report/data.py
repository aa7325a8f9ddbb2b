"""Pure functions that turn an output's columns into what the report shows.

No I/O here: inputs are Arrow tables and NumPy arrays already read, outputs are plain
dataclasses, so each piece is tested on small hand-made tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchvision.errors import ConfigError
from batchvision.tasks import get_task, list_tasks


@dataclass(frozen=True)
class Distribution:
    """The most frequent labels and the rest folded into ``other``."""

    bars: list[tuple[str, int]]
    other: int
    total: int  # the sum of all counts
    images: int  # the ok images counted over (a bar's share is count / images)


@dataclass(frozen=True)
class ErrorGroup:
    """Error rows sharing a code: how many, and the first few row indices."""

    code: str
    count: int
    indices: list[int]
    rows: list[dict[str, Any]] = field(default_factory=list)


def infer_task(manifest: dict[str, Any], columns: list[str]) -> str:
    """The run's task: the manifest's ``task``, else guessed from the columns."""
    task = manifest.get("task")
    if task in list_tasks():
        return str(task)
    if "classes" in columns:
        return "segment"
    if "detections" in columns:
        return "detect"
    if "embedding" in columns:
        return "embed"
    return "classify"


def light_columns(task: str) -> list[str]:
    """The columns read for every row (the rest is read for sampled rows only)."""
    return ["status", "error", *get_task(task).light_columns]


def row_columns(task: str) -> list[str]:
    """The columns read for the rows the report shows."""
    return ["id", "path", "status", "error", "width", "height", *get_task(task).row_columns]


def status_counts(table: pa.Table) -> dict[str, int]:
    """Rows by status (``ok``, ``error``), zero when absent."""
    counts = {"ok": 0, "error": 0}
    if "status" in table.column_names and table.num_rows:
        for item in pc.value_counts(table.column("status")).to_pylist():
            counts[str(item["values"])] = int(item["counts"])
    return counts


def _is(table: pa.Table, column: str, value: str) -> np.ndarray:
    if column not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    eq = pc.fill_null(pc.equal(table.column(column), value), False)
    return np.asarray(eq.to_numpy(zero_copy_only=False), dtype=bool)


def candidates(table: pa.Table, task: str, *, label: str | None, errors: bool) -> np.ndarray:
    """Row indices the gallery samples from.

    The gallery shows ``ok`` rows; with ``errors`` it shows error rows only (they have no
    label, so ``label`` must then be None). ``label`` keeps rows whose top-1 label is it
    (classification) or whose classes include it (segmentation).

    Raises:
        ConfigError: ``label`` with ``errors``, ``label`` on an embedding run, or a label
            no row has (the message lists the most frequent ones).
    """
    if errors:
        if label is not None:
            raise ConfigError("--label and --errors exclude each other: error rows have no label")
        return np.flatnonzero(_is(table, "status", "error"))
    keep = _is(table, "status", "ok")
    if label is None:
        return np.flatnonzero(keep)
    hit = get_task(task).label_hits(table, label)
    if hit is None:
        raise ConfigError(f"--label needs a run with labels; this is a {task} run")
    if not (keep & hit).any():
        common = [name for name, _ in label_distribution(table, task, top=10).bars]
        raise ConfigError(
            f"--label {label!r}: no ok row has it; most frequent: {', '.join(common) or 'none'}"
        )
    return np.flatnonzero(keep & hit)


def sample_indices(pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of ``pool``'s indices chosen uniformly without replacement, seeded, sorted.

    Chooses among indices only, so the cost does not depend on what the rows hold.
    """
    pool = np.asarray(pool, dtype=np.int64)
    if len(pool) <= n:
        return pool
    rng = np.random.default_rng(seed)
    return np.sort(pool[rng.choice(len(pool), size=n, replace=False)])


def clustered_sample(
    pool: np.ndarray, group_starts: np.ndarray, n: int, seed: int, *, groups: int
) -> np.ndarray:
    """About ``n`` of ``pool``'s indices from at most ``groups`` row groups, seeded, sorted.

    A row group is read whole, so when rows are heavy (segmentation masks stored inline) a
    simple random sample of 200 rows reads nearly every row group of a large output. This
    draws row groups by systematic sampling with probability proportional to their pool
    rows, then rows uniformly within each drawn group in proportion to its hits, so every
    pool row keeps the same chance ``n / len(pool)`` of being shown (up to rounding, and
    short only where a small group cannot give its quota) while at most ``groups`` row
    groups are read.
    """
    pool = np.asarray(pool, dtype=np.int64)
    if len(pool) <= n:
        return pool
    gid = np.searchsorted(np.asarray(group_starts), pool, side="right") - 1
    _, first, counts = np.unique(gid, return_index=True, return_counts=True)
    if len(counts) <= groups:
        return sample_indices(pool, n, seed)
    rng = np.random.default_rng(seed)
    step = len(pool) / groups
    points = (rng.random() + np.arange(groups)) * step
    hits = np.bincount(
        np.searchsorted(np.cumsum(counts), points, side="right"), minlength=len(counts)
    )
    quota = hits * (n / groups)
    take = np.floor(quota).astype(np.int64)
    short = n - int(take.sum())
    if short > 0:  # hand out the rounding remainder by the fractional parts, randomly
        frac = quota - take
        extra = rng.choice(len(quota), size=short, replace=False, p=frac / frac.sum())
        take[extra] += 1
    chosen = [
        pool[
            first[g] + rng.choice(counts[g], size=min(int(take[g]), int(counts[g])), replace=False)
        ]
        for g in np.flatnonzero(take)
    ]
    return np.sort(np.concatenate(chosen))


def label_distribution(table: pa.Table, task: str, *, top: int = 15) -> Distribution:
    """Counts of the predicted labels among ok rows: the ``top`` most frequent and other.

    Classification counts each image's top-1 label; segmentation counts the images in
    which each class is present. Ties are broken by label, so the chart is stable.
    """
    ok = _is(table, "status", "ok")
    values = get_task(task).label_values(table, pa.array(ok))
    if values is None:
        return Distribution([], 0, 0, 0)
    counts = [
        (str(v["values"]), int(v["counts"]))
        for v in pc.value_counts(values).to_pylist()
        if v["values"] is not None
    ]
    counts.sort(key=lambda item: (-item[1], item[0]))
    total = sum(c for _, c in counts)
    bars = counts[:top]
    return Distribution(bars, total - sum(c for _, c in bars), total, int(ok.sum()))


def error_code(error: str | None) -> str:
    """The stable code of an ``error`` value (``"code: message"``)."""
    if not error:
        return "unknown"
    return error.split(":", 1)[0].strip() or "unknown"


def error_groups(table: pa.Table, *, cap: int = 20) -> list[ErrorGroup]:
    """Error rows grouped by code, largest group first, with the first ``cap`` row indices."""
    err = np.flatnonzero(_is(table, "status", "error"))
    if not len(err):
        return []
    if "error" in table.column_names:
        texts = table.column("error").take(pa.array(err))
        parts = pc.split_pattern(pc.fill_null(texts, "unknown"), ":", max_splits=1)
        codes = pc.utf8_trim_whitespace(pc.list_element(parts, 0))
        codes = pc.if_else(pc.equal(codes, ""), "unknown", codes)
        code_arr = np.asarray(codes.to_numpy(zero_copy_only=False), dtype=object)
    else:
        code_arr = np.full(len(err), "unknown", dtype=object)
    names, counts = np.unique(code_arr, return_counts=True)
    groups = []
    for name, count in zip(names, counts, strict=True):
        rows = err[code_arr == name][:cap]
        groups.append(ErrorGroup(str(name), int(count), [int(i) for i in rows]))
    groups.sort(key=lambda g: (-g.count, g.code))
    return groups


def run_records(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per run into the folder, as the summary table shows it."""
    records = []
    for run in manifest.get("runs") or []:
        config = run.get("config") or {}
        records.append(
            {
                "finished_at": run.get("finished_at", ""),
                "status": run.get("status", ""),
                "engine": config.get("engine", ""),
                "device": run.get("device", ""),
                "precision": run.get("precision", ""),
                "ok": run.get("ok", 0),
                "error": run.get("error", 0),
                "wall_seconds": float(run.get("wall_seconds") or 0.0),
                "images_per_second": float(run.get("images_per_second") or 0.0),
                "stage_seconds": dict(run.get("stage_seconds") or {}),
            }
        )
    return records
