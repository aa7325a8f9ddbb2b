"""Work units: every input in exactly one unit, the same inputs as the listing, stable keys."""

from __future__ import annotations

import itertools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchvision.errors import OutputDirError
from batchvision.io import units
from batchvision.io.sources import ListingStats, iter_inputs
from batchvision.io.storage import StorageOptions

SIZES = (1, 2, 3, 7, 1000)


def _unit_inputs(spec: str, rows: int) -> tuple[list[units.Unit], list[tuple[str, str]]]:
    planned = list(units.plan_units([spec], rows))
    # Through JSON, as the Ray engine ships them to its actors.
    items = [
        (i.id, i.path) for u in planned for i in units.unit_items(units.Unit.from_json(u.to_json()))
    ]
    return planned, items


def _listing(spec: str) -> list[tuple[str, str]]:
    return [(i.id, i.path) for i in iter_inputs([spec])]


@pytest.mark.parametrize("rows", SIZES)
def test_text_manifest_units_hold_the_listing(tmp_path: Path, rows: int) -> None:
    lines = ["# a comment", "a.jpg", "", "  b.jpg  ", "sub/c.png", "#x", "d.jpg", "e.jpg", " "]
    spec = tmp_path / "m.txt"
    spec.write_text("\ufeff" + "\n".join(lines))  # a BOM, and no newline at the end
    planned, items = _unit_inputs(str(spec), rows)
    assert items == _listing(str(spec))
    assert len(items) == 5
    assert [u.rows for u in planned] == [min(rows, 5 - k) for k in range(0, 5, rows)]
    assert [u.key for u in planned] == [f"000-{k:08d}" for k in range(len(planned))]
    # Byte ranges tile the file: nothing read twice, nothing skipped.
    assert planned[0].start == 0 and planned[-1].stop <= spec.stat().st_size
    assert all(a.stop == b.start for a, b in itertools.pairwise(planned))


@pytest.mark.parametrize("rows", SIZES)
def test_csv_manifest_units_number_bad_rows_as_the_listing(tmp_path: Path, rows: int) -> None:
    spec = tmp_path / "m.csv"
    spec.write_text(
        'label,path\ncat,a.jpg\ndog,\n\n"x, y","b, with comma.png"\ncow,c.jpg\n,\nz,d.jpg\n'
    )
    _, items = _unit_inputs(str(spec), rows)
    assert items == _listing(str(spec))
    ids = [i for i, _ in items]
    assert f"{spec}#row=2" in ids and f"{spec}#row=5" in ids and "b, with comma.png" in ids


@pytest.mark.parametrize("rows", SIZES)
def test_parquet_manifest_units_span_row_groups(tmp_path: Path, rows: int) -> None:
    spec = tmp_path / "m.parquet"
    paths = [f"img_{i}.jpg" if i % 5 else None for i in range(23)]
    pq.write_table(pa.table({"path": pa.array(paths, pa.string())}), spec, row_group_size=4)
    planned, items = _unit_inputs(str(spec), rows)
    assert items == _listing(str(spec))
    assert sum(u.rows for u in planned) == 23


@pytest.mark.parametrize("rows", SIZES)
def test_folder_units_hold_the_walk(tmp_path: Path, rows: int) -> None:
    for name in ("a/1.jpg", "a/2.png", "b/3.jpg", "c.jpg", ".hidden.jpg", "notes.txt"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    stats = ListingStats()
    planned = list(units.plan_units([str(tmp_path / "in")], rows, stats))
    items = [(i.id, i.path) for u in planned for i in units.unit_items(u)]
    assert items == _listing(str(tmp_path / "in"))
    assert (stats.listed, stats.skipped, stats.done) == (4, 2, True)


def test_keys_and_fingerprints_are_stable_and_see_changes(tmp_path: Path) -> None:
    spec = tmp_path / "m.txt"
    spec.write_text("a.jpg\nb.jpg\nc.jpg\n")
    first = list(units.plan_units([str(spec)], 2))
    assert first == list(units.plan_units([str(spec)], 2))
    spec.write_text("a.jpg\nB.jpg\nc.jpg\n")
    changed = list(units.plan_units([str(spec)], 2))
    assert [u.key for u in changed] == [u.key for u in first]
    assert changed[0].fingerprint != first[0].fingerprint
    assert changed[1].fingerprint == first[1].fingerprint
    # Each input of a run has its own key space.
    two = list(units.plan_units([str(spec), str(spec)], 2))
    assert [u.key for u in two] == ["000-00000000", "000-00000001", "001-00000000", "001-00000001"]


def _part(unit: units.Unit, rows: int, errors: int, data: bytes) -> str:
    name = units.unit_part_name(unit, rows, errors, data, ".parquet")
    assert units.parse_unit_part(name) == (
        unit.key,
        units.UnitPart(name, unit.fingerprint, rows, errors),
    )
    return name


def test_committed_units_keep_one_part_each_and_refuse_changed_inputs(tmp_path: Path) -> None:
    spec = tmp_path / "m.txt"
    spec.write_text("a.jpg\nb.jpg\nc.jpg\n")
    u0, u1 = units.plan_units([str(spec)], 2)
    out = tmp_path / "out"
    out.mkdir()
    names = [_part(u0, 2, 1, b"one"), _part(u0, 2, 1, b"retry"), _part(u1, 1, 0, b"two")]
    for n in names:
        (out / n).write_bytes(b"")
    committed = units.read_committed(str(out), [*names, "_manifest.json"], StorageOptions())
    kept = min(names[:2])
    assert committed.units[u0.key].name == kept
    assert committed.removed == [max(names[:2])]
    assert sorted(p.name for p in out.iterdir()) == sorted([kept, names[2]])
    assert committed.statuses == {"ok": 2, "error": 1}
    assert committed.check(u0) and committed.check(u1)
    spec.write_text("a.jpg\nX.jpg\nc.jpg\n")
    changed = next(iter(units.plan_units([str(spec)], 2)))
    with pytest.raises(OutputDirError, match=r"the inputs of unit 000-00000000 .* changed"):
        committed.check(changed)
