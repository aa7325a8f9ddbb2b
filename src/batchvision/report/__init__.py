"""The HTML report of a run: ``build_report(ReportConfig(output_dir))``.

reading (I/O: manifest, part files, image bytes) -> data (pure: sampling, label counts,
error groups) -> images (thumbnails, mask overlays) -> render (one self-contained page).
"""

from __future__ import annotations

from batchvision.report.build import ReportConfig, ReportResult, build_report

__all__ = ["ReportConfig", "ReportResult", "build_report"]
