"""The generated docs match the code, and every column, manifest field and code is described."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from batchvision import docs
from tests import report_fixtures

ROOT = Path(__file__).resolve().parents[2]
classify_outputs = report_fixtures.classify_outputs


@pytest.mark.parametrize("name", sorted(docs.GENERATED))
def test_generated_docs_are_current(name: str) -> None:
    on_disk = (ROOT / "docs" / name).read_text(encoding="utf-8")
    assert on_disk == docs.GENERATED[name](), f"docs/{name} is stale: run `make docs`"


def test_cli_reference_covers_every_option() -> None:
    from batchvision.cli import cli

    text = docs.cli_reference()
    for name, cmd in cli.commands.items():
        assert f"## `batchvision {name}`" in text
        for param in cmd.params:
            for opt in param.opts if param.param_type_name == "option" else []:
                assert f"`{opt}`" in text, opt
    assert "| `--sample` | integer >= 0 | `200` |" in text
    assert "| `--max-error-rate` | number in [0, 1] | `0.1` |" in text
    assert "| `--draft`, `--no-draft` | flag | `--no-draft` |" in text


def test_every_schema_column_is_described(monkeypatch: pytest.MonkeyPatch) -> None:
    assert docs.undocumented_columns() == []
    assert docs.type_name(pa.list_(pa.float32())) == "list<float32>"
    # A new column without a description fails the generator.
    from batchvision.tasks import get_task

    monkeypatch.setattr(
        type(get_task("embed")), "fields", (pa.field("brand_new", pa.int8()),), raising=True
    )
    assert docs.undocumented_columns() == ["brand_new"]
    with pytest.raises(ValueError, match="brand_new"):
        docs.output_schema()


def test_every_error_code_is_described() -> None:
    src = "\n".join(p.read_text() for p in (ROOT / "src" / "batchvision").rglob("*.py"))
    codes = set(re.findall(r'(?:DecodeError|ReadError)\(\s*"([a-z_]+)"', src))
    codes |= set(re.findall(r'errors\[\w+\] = f"([a-z_]+): ', src))  # decode_failed
    assert codes and codes <= docs.ERROR_CODES.keys(), codes - docs.ERROR_CODES.keys()


def test_every_manifest_field_is_described(classify_outputs: dict[str, Path]) -> None:
    import json

    manifest = json.loads((classify_outputs["parquet"] / "_manifest.json").read_text())
    assert set(manifest) <= docs.MANIFEST.keys(), set(manifest) - docs.MANIFEST.keys()
    for run in manifest["runs"]:
        assert set(run) <= docs.RUN_FIELDS.keys(), set(run) - docs.RUN_FIELDS.keys()


def test_check_mode_reports_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert docs.main(["--out", str(tmp_path), "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert docs.main(["--out", str(tmp_path)]) == 0
    assert docs.main(["--out", str(tmp_path), "--check"]) == 0
    assert (tmp_path / "cli.md").read_text() == docs.cli_reference()
