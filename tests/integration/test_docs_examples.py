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
