"""The Python blocks of docs/api.md run as written, in order, in an empty folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def test_api_md_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(ROOT / "docs" / "api.md")
    assert len(blocks) == 5
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"docs/api.md block {i + 1}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "report.html").exists() and os.listdir(tmp_path / "preds")


def test_readme_search_by_text_example_runs(
    photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's search-by-text block, as written, with a tiny CLIP in place of the
    hub's (no downloads here): it embeds a folder, embeds a text and ranks by cosine."""
    from tests.task_models import save_tiny_clip

    block = next(
        b for b in python_blocks(ROOT / "README.md") if b.startswith("# search-by-text example")
    )
    save_tiny_clip(tmp_path / "clip")
    hub = '"hf:openai/clip-vit-base-patch32"'
    assert hub in block
    code = block.replace(hub, repr(f"hf:{tmp_path / 'clip'}"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").symlink_to(photo_dir / "a")
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(code, "README.md search-by-text", "exec"), namespace)
    hits = namespace["hits"]
    assert isinstance(hits, list) and len(hits) == 3
    assert all(str(i).endswith(".jpg") for i, _ in hits)
    sims = [s for _, s in hits]
    assert sims == sorted(sims, reverse=True) and -1.0 <= sims[-1] <= sims[0] <= 1.0
