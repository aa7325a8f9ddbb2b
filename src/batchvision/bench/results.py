"""Pure functions over a bench's results: rows, ratios, the memory check, the table.

A row is a plain dict (it goes into ``bench.json`` as it is): ``name`` (a measurement:
``decode``, ``model``, an engine or a seed strategy), ``kind``, ``title``, ``batch_size``,
the figures (``images``, ``seconds``, ``images_per_second``, ``peak_rss_mb``,
``peak_pss_mb``), ``details`` (everything the measurement reported) and ``error``
(``None``, or why the measurement failed).
"""

from __future__ import annotations

from typing import Any

from batchvision.bench.options import STRATEGIES

TITLES: dict[str, str] = {
    "decode": "decode only (read+decode+preprocess)",
    "model": "model only (ready tensors on device)",
    "local": "batchvision --engine local",
    "ray": "batchvision --engine ray",
    "sequential": "seed: sequential loop",
    "ray_tasks": "seed: Ray tasks",
    "ray_actors": "seed: Ray actors",
    "actor_pool": "seed: Ray ActorPool",
    "ray_data": "seed: Ray Data map_batches",
}
#: The seed strategy the issue measures batchvision against.
BASELINE = "ray_data"
#: Below this reference spread the parity cosine is noise (outputs alike for every image).
MIN_SPREAD = 1e-3
#: Within this fraction of each other, peak memory counts as flat.
FLAT_TOLERANCE = 0.10


def kind_of(name: str) -> str:
    """``stage`` (decode, model), ``engine`` (batchvision end to end) or ``seed``."""
    if name in ("decode", "model"):
        return "stage"
    return "seed" if name in STRATEGIES else "engine"


def make_row(
    name: str,
    batch_size: int,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    *,
    kind: str | None = None,
) -> dict[str, Any]:
    """One measurement's row from its child's result (or its error)."""
    result = result or {}
    memory = result.get("memory", {})
    return {
        "name": name,
        "kind": kind or kind_of(name),
        "title": TITLES.get(name, name),
        "batch_size": batch_size,
        "images": result.get("images"),
        "seconds": _round(result.get("seconds"), 6),  # a smoke row can take 20 ms
        "images_per_second": _round(result.get("images_per_second"), 2),
        "peak_rss_mb": memory.get("peak_tree_rss_mb"),
        "peak_pss_mb": memory.get("peak_tree_pss_mb"),
        "details": {k: v for k, v in result.items() if k != "memory"},
        "memory": memory,
        "error": error,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` rounded, or ``None`` when either is missing or ``b`` is 0."""
    return round(a / b, 3) if a is not None and b else None


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Add ``to_model_only`` and ``to_seed`` (``ray_data``) ratios at the same batch size."""

    def ips(name: str, batch_size: int) -> float | None:
        for r in rows:
            if r["name"] == name and r["batch_size"] == batch_size and r["kind"] != "memory":
                value: float | None = r["images_per_second"]
                return value
        return None

    for r in rows:
        if r["kind"] == "memory":
            continue
        r["ratios"] = {
            "to_model_only": ratio(r["images_per_second"], ips("model", r["batch_size"])),
            "to_seed": ratio(r["images_per_second"], ips(BASELINE, r["batch_size"])),
        }
        if r["name"].startswith(("model ", "local ")):  # a --runtimes row: over torch's
            torch_row = "model" if r["kind"] == "stage" else "local"
            r["ratios"]["to_torch"] = ratio(r["images_per_second"], ips(torch_row, r["batch_size"]))


def memory_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The memory check: peak RSS/PSS per dataset size, the largest over the smallest."""
    mem = [r for r in rows if r["kind"] == "memory" and r["error"] is None]
    if not mem:
        return None
    mem.sort(key=lambda r: r["images"])
    small, large = mem[0], mem[-1]
    rss_ratio = ratio(large["peak_rss_mb"], small["peak_rss_mb"])
    pss_ratio = ratio(large["peak_pss_mb"], small["peak_pss_mb"])
    return {
        "images": [r["images"] for r in mem],
        "peak_rss_mb": [r["peak_rss_mb"] for r in mem],
        "peak_pss_mb": [r["peak_pss_mb"] for r in mem],
        "rss_ratio": rss_ratio,
        "pss_ratio": pss_ratio,
        "tolerance": FLAT_TOLERANCE,
        "flat": rss_ratio is not None and abs(rss_ratio - 1) <= FLAT_TOLERANCE,
    }


#: The issue's targets for batchvision end to end (local engine), as ratios.
TARGETS = {"to_model_only": 0.9, "to_seed": 5.0}


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The local engine's ratios at each batch size against the targets (after add_ratios)."""
    out = []
    for r in rows:
        if r["name"] != "local" or r["kind"] != "engine" or r["error"] is not None:
            continue
        for key, want in TARGETS.items():
            got = r["ratios"][key]
            if got is not None:
                out.append(
                    {
                        "batch_size": r["batch_size"],
                        "ratio": key,
                        "value": got,
                        "target": want,
                        "met": got >= want,
                    }
                )
    return out


def _round(x: Any, digits: int) -> Any:
    return round(x, digits) if isinstance(x, float) else x


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(report: dict[str, Any]) -> str:
    """The table ``batchvision bench`` prints, with the run's context under it."""
    rows = report["rows"]
    parity = report.get("parity") or {}
    cosine = parity.get("mean_centered_cosine")
    header = (
        f"{'measurement':<38} {'batch':>5} {'images':>7} {'img/s':>9} {'x model':>8} "
        f"{'x seed':>7} {'RSS MB':>8} {'PSS MB':>8} {'parity':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        title = r["title"] if r["kind"] != "memory" else f"{r['title']} (memory check)"
        if r["error"] is not None:
            first = r["error"].splitlines()[0] if r["error"] else "failed"
            lines.append(f"{title:<38} {r['batch_size']:>5} FAILED: {first[:80]}")
            continue
        ratios = r.get("ratios", {})
        par = cosine if r["kind"] == "engine" else None
        if r["name"].startswith("local ") and r["kind"] == "engine":  # a runtime's row
            par = ((parity.get("runtimes") or {}).get(r["name"][6:]) or {}).get(
                "mean_centered_cosine"
            )
        lines.append(
            f"{title:<38} {r['batch_size']:>5} {_fmt(r['images'], 'd'):>7} "
            f"{_fmt(r['images_per_second'], '.2f'):>9} "
            f"{_fmt(ratios.get('to_model_only'), '.2f'):>8} "
            f"{_fmt(ratios.get('to_seed'), '.2f'):>7} "
            f"{_fmt(r['peak_rss_mb'], '.0f'):>8} {_fmt(r['peak_pss_mb'], '.0f'):>8} "
            f"{_fmt(par, '.4f'):>7}"
        )
    lines.append("")
    lines += _context_lines(report)
    return "\n".join(lines)


def _runtime_line(rows: list[dict[str, Any]], entry: str, parity: dict[str, Any]) -> str:
    """``--runtimes`` ENTRY: its speeds over torch's and its parity, on one line."""

    def over_torch(name: str) -> str:
        row = next((r for r in rows if r["name"] == name and r["error"] is None), None)
        if row is None:
            return "failed"
        return (
            f"{row['images_per_second']:.2f} img/s "
            f"(x{_fmt(row.get('ratios', {}).get('to_torch'), '.2f')} torch)"
        )

    line = (
        f"runtime {entry} ({parity.get('precision', '?')}): model only "
        f"{over_torch(f'model {entry}')}, end to end {over_torch(f'local {entry}')}"
    )
    if "mean_centered_cosine" in parity:
        return line + (
            f"; parity mean centered cosine {parity['mean_centered_cosine']:.5f}, top-1 "
            f"agreement {parity['top1_agreement']:.3f} (vs the fp32 reference)"
        )
    return line + f"; parity FAILED: {(parity.get('error') or '?').splitlines()[0][:100]}"


def _context_lines(report: dict[str, Any]) -> list[str]:
    cfg, machine, images = report["config"], report["machine"], report["images"]
    gpus = ", ".join(machine.get("gpus") or []) or "no GPU"
    lines = [
        f"{cfg['model']} ({cfg['weights']} weights), {images['count']} images "
        f"({images['source']}), precision {report.get('precision') or cfg['precision']} "
        "(seed strategies: fp32)",
        f"{machine['usable_cores']} cores, {machine['cpu_model']}, {machine['ram_gb']} GB RAM, "
        f"{gpus}; load average before/after {machine['loadavg_before']} / "
        f"{machine['loadavg_after']} (a high load means noisy timings)",
        "x model: img/s over model-only at the same batch size; x seed: over the seeds' Ray "
        "Data pipeline; RSS/PSS: peak of the measurement's whole process tree",
    ]
    for r in report["rows"]:
        stages = r["details"].get("stage_seconds")
        if r["error"] is None and stages and r["kind"] == "engine":
            spent = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
            apart = [
                f"{what} {r['details'][key]:.1f} s"
                for key, what in (("import_seconds", "imports"), ("ray_init_seconds", "ray.init"))
                if r["details"].get(key)
            ]
            lines.append(
                f"{r['title']} b={r['batch_size']}: wall {r['seconds']:.2f} s, stages {spent} "
                "(read/decode summed over workers)"
                + (f"; {', '.join(apart)} not counted" if apart else "")
            )
        if r["error"] is None and r["name"] == "model":
            lines.append(
                f"model only b={r['batch_size']}: warm-up batches "
                f"{r['details'].get('warmup_batch_seconds')} s, {r['details'].get('device')}, "
                f"{r['details'].get('torch_threads')} torch threads"
            )
    for t in report.get("targets") or []:
        what = "x model-only" if t["ratio"] == "to_model_only" else "x the seeds' Ray Data"
        lines.append(
            f"target b={t['batch_size']}: local end to end {t['value']:.2f} {what} "
            f"(issue 4 wants >= {t['target']:g}): {'met' if t['met'] else 'NOT met'}"
        )
    parity = report.get("parity")
    if parity and "mean_centered_cosine" in parity:
        line = (
            f"parity ({parity['images']} images, batchvision {parity['precision']} vs fp32 "
            f"reference): mean centered cosine {parity['mean_centered_cosine']:.5f} "
            f"(min {parity['min_centered_cosine']:.5f}), top-1 agreement "
            f"{parity['top1_agreement']:.3f}"
        )
        for key, what in (
            ("fp32", "at fp32"),
            ("no_fuse", "without BatchNorm folding"),
            ("vs_seed_pipeline", "against the seeds' float-resize pipeline"),
        ):
            if key in parity:
                line += f"; {what} {parity[key]['mean_centered_cosine']:.5f}"
        lines.append(line)
        if parity.get("reference_spread", 1.0) < MIN_SPREAD:
            lines.append(
                "  (not meaningful here: the reference's outputs barely differ between images, "
                "as with random weights of some models; use e.g. resnet18 or a trained checkpoint)"
            )
        for entry, got in (parity.get("runtimes") or {}).items():
            lines.append(_runtime_line(report["rows"], entry, got))
    elif parity and parity.get("error"):
        lines.append(f"parity FAILED: {parity['error'].splitlines()[0]}")
    mem = report.get("memory_check")
    if mem:
        sizes = " vs ".join(
            f"{n} images {rss:.0f} MB"
            for n, rss in zip(mem["images"], mem["peak_rss_mb"], strict=True)
        )
        verdict = "flat" if mem["flat"] else "NOT flat"
        lines.append(
            f"memory check (peak RSS, local engine): {sizes}: "
            f"ratio {_fmt(mem['rss_ratio'], '.3f')} "
            f"({verdict}: within {mem['tolerance']:.0%} wanted; PSS ratio "
            f"{_fmt(mem['pss_ratio'], '.3f')})"
        )
    return lines
