"""The bench's PNG chart: throughput by strategy, by batch size, and peak memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = {"stage": "#8c8c8c", "engine": "#1f77b4", "seed": "#d62728", "memory": "#2ca02c"}


def write_chart(report: dict[str, Any], path: Path) -> Path:
    """Draw ``report``'s rows into ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["error"] is None]
    throughput = [r for r in rows if r["kind"] != "memory"]
    memory = [r for r in rows if r["kind"] == "memory"]
    panels = (2 if throughput else 0) + (1 if memory else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(7 * max(panels, 1), 5.5), squeeze=False)
    ax_list = list(axes[0])
    if throughput:
        # Failed measurements keep their place in the bars, marked as failed.
        _by_strategy(ax_list.pop(0), [r for r in report["rows"] if r["kind"] != "memory"])
        _by_batch_size(ax_list.pop(0), throughput)
    if memory:
        _memory(ax_list.pop(0), memory)
    if not panels:
        ax_list[0].text(0.5, 0.5, "no successful measurement", ha="center", va="center")
        ax_list[0].set_axis_off()
    machine = report["machine"]
    fig.suptitle(
        f"batchvision bench: {report['config']['model']}, {report['images']['count']} images, "
        f"{machine['usable_cores']} cores ({machine['cpu_model']})",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def strategy_panel(rows: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """The batch size the by-strategy bars show, and its rows (failed ones included): the
    largest size among those where the fewest measurements failed."""
    sizes = {r["batch_size"] for r in rows}
    failed = {b: sum(1 for r in rows if r["batch_size"] == b and r["error"]) for b in sizes}
    batch = max(sizes, key=lambda b: (-failed[b], b))
    return batch, [r for r in rows if r["batch_size"] == batch]


def _by_strategy(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Horizontal bars at one batch size (img/s, with memory labels; failures marked)."""
    batch, shown = strategy_panel(rows)
    labels = [r["title"] for r in shown]
    values = [r["images_per_second"] or 0.0 for r in shown]
    bars = ax.barh(labels, values, color=[COLOURS[r["kind"]] for r in shown])
    measured = [v for v in values if v > 0]
    low = min(measured) / 2 if measured else 1.0
    for bar, r in zip(bars, shown, strict=True):
        if r["error"]:
            note, x = " failed (see the table and logs/)", low
        else:
            note, x = f" {r['images_per_second']:.1f}", bar.get_width()
            if r["peak_pss_mb"] is not None:
                note += f"  ({r['peak_pss_mb']:.0f} MB)"
        ax.text(x, bar.get_y() + bar.get_height() / 2, note, va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images per second (peak PSS of the process tree)")
    ax.set_title(f"throughput by strategy, batch {batch}")
    if measured and max(measured) > 20 * min(measured):
        # Decode only can be 50x the model: on a linear axis the rest would be slivers.
        ax.set_xscale("log")
        ax.set_xlim(low, max(measured) * 6)
    else:
        ax.set_xlim(0, max(measured) * 1.35 if measured else 1)


def _by_batch_size(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Lines of img/s against batch size, one per measurement."""
    names = list(dict.fromkeys(r["name"] for r in rows))
    sizes = sorted({r["batch_size"] for r in rows})
    for name in names:
        mine = sorted((r for r in rows if r["name"] == name), key=lambda r: r["batch_size"])
        ax.plot(
            [r["batch_size"] for r in mine],
            [r["images_per_second"] for r in mine],
            marker="o",
            label=mine[0]["title"],
            color={"decode": "#8c8c8c", "model": "#000000"}.get(name),
            linestyle="--" if mine[0]["kind"] == "seed" else "-",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    values = [r["images_per_second"] for r in rows]
    if max(values) > 20 * min(values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images per second")
    title = "throughput by batch size"
    if len(sizes) == 1:
        title += " (one batch size measured)"
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _memory(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Peak RSS and PSS against the number of images (the memory check)."""
    rows = sorted(rows, key=lambda r: r["images"])
    x = range(len(rows))
    rss = [r["peak_rss_mb"] for r in rows]
    pss = [r["peak_pss_mb"] for r in rows]
    ax.bar([i - 0.2 for i in x], rss, width=0.4, label="peak RSS", color=COLOURS["memory"])
    ax.bar([i + 0.2 for i in x], pss, width=0.4, label="peak PSS", color="#98df8a")
    ax.set_xticks(list(x), [f"{r['images']} images" for r in rows])
    ax.set_ylabel("MB (whole process tree)")
    ax.set_title("memory check: local engine end to end")
    ax.legend(fontsize=8)
