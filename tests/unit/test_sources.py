"""Listing (folders, globs, files, manifests) and reading bytes, on every odd input."""

from __future__ import annotations

import csv
import logging
import os
import pickle
import re
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchvision.errors import ConfigError
from batchvision.io import sources
from batchvision.io.sources import (
    InputItem,
    ListingStats,
    ReadError,
    check_inputs,
    duplicate_ids,
    items_to_batch,
    iter_inputs,
    needs_duplicate_check,
    read_batch,
)


def _touch(root: Path, *names: str, data: bytes = b"x") -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _ids(inputs: list[str], stats: ListingStats | None = None) -> list[str]:
    return [item.id for item in iter_inputs(inputs, stats)]


# --- folders -----------------------------------------------------------------------------------


def test_folder_walk_recursive_sorted_hidden_and_extensions(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _touch(
        root,
        "z.jpg",
        "a.jpeg",
        "A.JPG",
        "b.TiFf",
        "c.webp",
        "d.bmp",
        "e.gif",
        "f.png",
        "g.tif",
        "notes.txt",
        "README",
        "sub/x.png",
        "sub/deeper/y.jpg",
        "sub/deeper/raw.cr2",
        "aaa/first.jpg",
        ".hidden/x.jpg",
        "._x.jpg",
        ".DS_Store",
        "sub/.cache/thumb.jpg",
    )
    stats = ListingStats()
    items = list(iter_inputs([str(root)], stats))
    # Files of a folder first (sorted by name), then its sub-folders, depth first.
    assert [i.id for i in items] == [
        "A.JPG",
        "a.jpeg",
        "b.TiFf",
        "c.webp",
        "d.bmp",
        "e.gif",
        "f.png",
        "g.tif",
        "z.jpg",
        "aaa/first.jpg",
        "sub/x.png",
        "sub/deeper/y.jpg",
    ]
    assert all(i.path == os.path.join(str(root), i.id) for i in items)
    assert stats.listed == 12 and stats.done
    # .hidden/ (one folder, not walked), ._x.jpg, .DS_Store, sub/.cache/
    assert stats.skipped_hidden == 4
    assert stats.skipped_extension == 3  # notes.txt, README, raw.cr2
    assert stats.skipped == 7
    assert len(stats.skipped_examples) == 5
    assert _ids([str(root)]) == [i.id for i in items]  # deterministic


def test_folder_ids_use_slashes_and_keep_unicode_and_spaces(tmp_path: Path) -> None:
    _touch(tmp_path, "été 2024/plage à Nice.JPEG", "日本/写真 1.png")
    assert _ids([str(tmp_path)]) == ["été 2024/plage à Nice.JPEG", "日本/写真 1.png"]


def test_empty_folder_lists_nothing(tmp_path: Path) -> None:
    stats = ListingStats()
    assert _ids([str(tmp_path)], stats) == []
    assert stats.listed == 0 and stats.done


def test_symlink_loops_do_not_hang_or_duplicate(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch(root, "a/x.jpg", "a/y.png")
    os.symlink("..", root / "a" / "up")  # a/up -> root: a loop
    os.symlink(".", root / "self")  # root/self -> root: a loop
    os.symlink("a", root / "b")  # a second link to an already walked folder
    os.symlink("a/x.jpg", root / "link.jpg")  # a link to a file is a file
    ids = _ids([str(root)])
    assert ids == ["link.jpg", "a/x.jpg", "a/y.png"]


def test_dangling_symlink_is_listed_then_not_found(tmp_path: Path) -> None:
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "dead.jpg")
    items = list(iter_inputs([str(tmp_path)]))
    assert [i.id for i in items] == ["dead.jpg"]
    out = read_batch(items_to_batch(items))
    assert out["error"][0].startswith("not_found: ")


def test_unlistable_subfolder_is_logged_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _touch(tmp_path, "ok/a.jpg", "locked/b.jpg", "c.jpg")
    real = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if os.path.basename(str(path)) == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(sources.os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="batchvision.io.sources"):
        assert _ids([str(tmp_path)]) == ["c.jpg", "ok/a.jpg"]
    assert "locked" in caplog.text and "Permission denied" in caplog.text


def test_listing_is_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path, "0.jpg")
    for d in range(40):
        _touch(tmp_path, *(f"d{d:02d}/{f}.jpg" for f in range(5)))
    calls: list[str] = []
    real = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(sources.os, "scandir", scandir)
    stats = ListingStats()
    it = iter_inputs([str(tmp_path)], stats)
    first = next(it)
    assert first.id == "0.jpg"
    assert stats.listed == 1 and not stats.done
    # Only the top folder was read so far (twice: first to tell images from shards).
    assert calls == [str(tmp_path)] * 2
    rest = list(it)
    assert len(rest) == 200 and stats.listed == 201 and stats.done
    assert len(calls) == 42


# --- globs, files, missing inputs --------------------------------------------------------------


def test_glob_recursive_ids_relative_to_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _touch(tmp_path, "d/a.png", "d/sub/b.png", "d/sub/deep/c.png", "d/x.jpg", "d/.hid/e.png")
    _touch(tmp_path, "d/sub/n.txt", "d/sub/deep/UPPER.PNG")
    monkeypatch.chdir(tmp_path)
    stats = ListingStats()
    items = list(iter_inputs(["d/**/*.png"], stats))
    assert sorted((i.id, i.path) for i in items) == [
        ("a.png", "d/a.png"),
        ("sub/b.png", "d/sub/b.png"),
        ("sub/deep/c.png", "d/sub/deep/c.png"),
    ]  # the pattern is literal: *.png does not match UPPER.PNG; ** skips hidden folders
    assert stats.listed == 3
    assert [i.id for i in iter_inputs(["d/**/*.png"])] == [i.id for i in items]  # deterministic
    # An absolute pattern: ids stay relative to the non-magic base.
    absolute = sorted(_ids([str(tmp_path / "d" / "**" / "*.png")]))
    assert absolute == ["a.png", "sub/b.png", "sub/deep/c.png"]
    # Magic in a folder part: the base stops before it; non-images are skipped and counted.
    stats = ListingStats()
    assert sorted(_ids(["d/*/*"], stats)) == ["sub/b.png"]
    assert stats.skipped_extension == 1


def test_glob_matching_nothing_is_a_config_error(tmp_path: Path) -> None:
    _touch(tmp_path, "a.jpg")
    pattern = str(tmp_path / "*.png")
    with pytest.raises(ConfigError, match="matches no files"):
        check_inputs([pattern])
    assert check_inputs([str(tmp_path / "*.jpg")]) == ["glob"]


def test_folder_or_glob_without_images_is_a_config_error(tmp_path: Path) -> None:
    """0 images would be a run that looks like success: refused up front, like an empty
    manifest, saying what was skipped."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=rf"^folder {re.escape(repr(str(empty)))} holds no files"):
        check_inputs([str(empty)])
    docs = tmp_path / "docs"
    _touch(docs, "notes.txt")
    _touch(docs, ".hidden.jpg")
    _touch(docs, "sub/readme.md")
    with pytest.raises(ConfigError) as e:
        check_inputs([str(docs)])
    message = str(e.value)
    assert message.startswith(f"folder {str(docs)!r} holds no images: 1 hidden and 2 with ")
    assert "notes.txt" in message and ".jpeg, .jpg, .png" in message
    with pytest.raises(ConfigError, match=r"matches no images: 0 hidden and 1 with"):
        check_inputs([str(docs / "*.txt")])
    # One image deep in the tree is enough, and the listing is unchanged by the check.
    _touch(docs, "sub/deeper/x.png")
    assert check_inputs([str(docs)]) == ["folder"]
    assert [i.id for i in iter_inputs([str(docs)])] == ["sub/deeper/x.png"]


def test_single_file_id_is_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path, "sub/Pic.JPG", "notes.md")
    monkeypatch.chdir(tmp_path)
    for spec in ["sub/Pic.JPG", "./sub/Pic.JPG", str(tmp_path / "sub" / "Pic.JPG"), "notes.md"]:
        assert check_inputs([spec]) == ["file"]
        assert list(iter_inputs([spec])) == [InputItem(id=spec, path=spec)]


def test_missing_input_is_a_config_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        check_inputs([str(tmp_path), missing])
    with pytest.raises(ConfigError, match="does not exist"):
        list(iter_inputs([missing]))


def test_check_inputs_kinds(tmp_path: Path) -> None:
    _touch(tmp_path, "d/a.jpg", "f.png")
    (tmp_path / "m.TXT").write_text("d/a.jpg\n")
    specs = [str(tmp_path / "d"), str(tmp_path / "d" / "*.jpg"), str(tmp_path / "f.png")]
    specs.append(str(tmp_path / "m.TXT"))
    assert check_inputs(specs) == ["folder", "glob", "file", "manifest"]


# --- manifests ---------------------------------------------------------------------------------


def test_txt_manifest_comments_blanks_and_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    absolute = str(tmp_path / "abs.jpg")
    text = f"# my images\n\n  a.jpg  \r\nsub/b.png\n   \n# c.jpg\n../up.jpg\n{absolute}\nno_ext\n"
    (lists / "m.txt").write_text(text, encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = str(lists / "m.txt")
    assert check_inputs([spec]) == ["manifest"]
    items = list(iter_inputs([spec]))
    assert [i.id for i in items] == ["a.jpg", "sub/b.png", "../up.jpg", absolute, "no_ext"]
    assert [i.path for i in items] == [
        str(lists / "a.jpg"),
        str(lists / "sub/b.png"),
        str(lists / "../up.jpg"),
        absolute,
        str(lists / "no_ext"),
    ]


def test_csv_manifest_path_column(tmp_path: Path) -> None:
    with open(tmp_path / "m.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "path", "note"])
        w.writerows([["cat", "a.jpg", ""], ["dog", "", "no path"], ["x", "b, with comma.png", "q"]])
    spec = str(tmp_path / "m.csv")
    items = list(iter_inputs([spec]))
    # The row without a path keeps its place, as an error row to be (see read_batch).
    assert [i.id for i in items] == ["a.jpg", f"{spec}#row=2", "b, with comma.png"]
    assert items[1].path == ""
    assert items[2].path == str(tmp_path / "b, with comma.png")


def test_csv_manifest_without_path_column_names_the_columns(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,label\na.jpg,cat\n")
    with pytest.raises(ConfigError, match=r"no 'path' column \(columns: \['file', 'label'\]\)"):
        check_inputs([str(tmp_path / "m.csv")])


def test_empty_csv_manifest_has_no_path_column(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"columns: \[\]"):
        check_inputs([str(tmp_path / "m.csv")])


@pytest.mark.parametrize("name", ["m.csv", "m.txt"])
def test_manifest_with_utf8_bom(tmp_path: Path, name: str) -> None:
    # Excel's "CSV UTF-8" and older Notepad start the file with a byte-order mark.
    body = "path,label\nä.jpg,cat\n" if name.endswith(".csv") else "ä.jpg\n"
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert check_inputs([str(tmp_path / name)]) == ["manifest"]
    assert _ids([str(tmp_path / name)]) == ["ä.jpg"]


@pytest.mark.parametrize(
    ("name", "body", "fails_at_check"),
    [
        ("m.csv", "caf\xe9,path\nx.jpg,a.jpg\n", True),  # the header is read up front
        # Past the first read buffer, the bad byte is met while listing.
        ("m.csv", "path\n" + "a.jpg\n" * 3000 + "caf\xe9.jpg\n", False),
        ("m.txt", "a.jpg\n" * 3000 + "caf\xe9.jpg\n", False),
    ],
)
def test_manifest_not_utf8_is_a_config_error(
    tmp_path: Path, name: str, body: str, fails_at_check: bool
) -> None:
    spec = str(tmp_path / name)
    Path(spec).write_bytes(body.encode("latin-1"))
    if fails_at_check:
        with pytest.raises(ConfigError, match="cannot be read"):
            check_inputs([spec])
        return
    assert check_inputs([spec]) == ["manifest"]
    with pytest.raises(ConfigError, match="cannot be read"):
        list(iter_inputs([spec]))


def test_parquet_manifest(tmp_path: Path) -> None:
    table = pa.table({"label": ["a", "b", "c"], "path": ["x.jpg", None, "/abs/y.png"]})
    pq.write_table(table, tmp_path / "m.parquet")
    spec = str(tmp_path / "m.parquet")
    assert check_inputs([spec]) == ["manifest"]
    items = list(iter_inputs([spec]))
    assert [(i.id, i.path) for i in items] == [
        ("x.jpg", str(tmp_path / "x.jpg")),
        (f"{spec}#row=2", ""),  # a null path: an error row, not a silently dropped one
        ("/abs/y.png", "/abs/y.png"),
    ]


def test_manifest_rows_without_a_path_become_error_rows(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    table = pa.table({"path": ["a.jpg", None, "", "a.jpg"]})
    pq.write_table(table, tmp_path / "m.parquet")
    spec = str(tmp_path / "m.parquet")
    out = read_batch(items_to_batch(list(iter_inputs([spec]))))
    assert list(out["id"]) == ["a.jpg", f"{spec}#row=2", f"{spec}#row=3", "a.jpg"]
    assert list(out["bytes"][[0, 3]]) == [b"jpeg", b"jpeg"]
    for i in (1, 2):
        assert out["bytes"][i] is None
        assert out["error"][i] == "bad_manifest_row: this manifest row has no path (empty or null)"
    assert duplicate_ids([spec]) == (4, ["a.jpg"])  # the bad rows' ids are distinct


@pytest.mark.parametrize("kind", [pa.int64(), pa.float64(), pa.binary(), pa.list_(pa.string())])
def test_parquet_manifest_path_column_of_another_type(tmp_path: Path, kind: pa.DataType) -> None:
    values = {
        "int64": [1, 2],
        "double": [1.0, 2.0],
        "binary": [b"a.jpg", b"b.jpg"],
    }.get(str(kind), [["a.jpg"], ["b.jpg"]])
    pq.write_table(pa.table({"path": pa.array(values, kind)}), tmp_path / "m.parquet")
    spec = str(tmp_path / "m.parquet")
    with pytest.raises(ConfigError) as info:
        check_inputs([spec])
    msg = str(info.value)
    stored = pq.read_schema(spec).field("path").type  # as Parquet gives it back
    assert f"manifest {spec!r} has a 'path' column of {stored} values" in msg
    assert "must hold text (string)" in msg


@pytest.mark.parametrize(
    "kind", [pa.string(), pa.large_string(), pa.dictionary(pa.int8(), pa.string())]
)
def test_parquet_manifest_path_column_of_any_text_type(tmp_path: Path, kind: pa.DataType) -> None:
    pq.write_table(
        pa.table({"path": pa.array(["a.jpg", "b.jpg"]).cast(kind)}), tmp_path / "m.parquet"
    )
    spec = str(tmp_path / "m.parquet")
    assert check_inputs([spec]) == ["manifest"]
    assert _ids([spec]) == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("m.txt", b""),
        ("m.txt", b"# only comments\n\n   \n"),
        ("m.csv", b"path,label\n"),
        ("m.parquet", None),
    ],
)
def test_manifest_without_rows_is_a_config_error(tmp_path: Path, name: str, content) -> None:
    spec = str(tmp_path / name)
    if content is None:
        pq.write_table(pa.table({"path": pa.array([], pa.string())}), spec)
    else:
        Path(spec).write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^manifest {re.escape(repr(spec))} lists no images"):
        check_inputs([spec])


def test_parquet_manifest_without_path_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"file": ["x.jpg"], "label": ["a"]}), tmp_path / "m.parquet")
    with pytest.raises(ConfigError, match=r"no 'path' column \(columns: \['file', 'label'\]\)"):
        check_inputs([str(tmp_path / "m.parquet")])


def test_parquet_manifest_that_is_not_parquet(tmp_path: Path) -> None:
    (tmp_path / "m.parquet").write_text("path\nx.jpg\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        check_inputs([str(tmp_path / "m.parquet")])


# --- duplicates --------------------------------------------------------------------------------


def test_duplicate_ids_across_two_folders(tmp_path: Path) -> None:
    _touch(tmp_path, "one/x.jpg", "one/sub/y.png", "one/only1.jpg")
    _touch(tmp_path, "two/x.jpg", "two/sub/y.png", "two/only2.jpg")
    inputs = [str(tmp_path / "one"), str(tmp_path / "two")]
    count, names = duplicate_ids(inputs)
    assert count == 6
    assert names == ["x.jpg", "sub/y.png"]
    assert duplicate_ids(inputs, limit=1) == (6, ["x.jpg"])
    assert duplicate_ids([str(tmp_path / "one")]) == (3, [])


def test_duplicate_ids_in_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("a.jpg\nb.jpg\na.jpg\n")
    assert duplicate_ids([str(tmp_path / "m.txt")]) == (3, ["a.jpg"])


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        (["folder"], False),
        (["glob"], False),
        (["file"], False),
        (["manifest"], True),
        (["folder", "folder"], True),
        (["file", "glob"], True),
    ],
)
def test_needs_duplicate_check(kinds: list[str], expected: bool) -> None:
    inputs = [f"in{i}" for i in range(len(kinds))]
    assert needs_duplicate_check(inputs, kinds) is expected


# --- reading bytes -----------------------------------------------------------------------------


def _read(paths: list[str]) -> dict[str, np.ndarray]:
    return read_batch(items_to_batch([InputItem(id=f"id{i}", path=p) for i, p in enumerate(paths)]))


def test_read_batch_ok_missing_and_directory(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8abc")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "dir.jpg").mkdir()
    paths = [str(tmp_path / n) for n in ("a.jpg", "missing.jpg", "dir.jpg", "empty.jpg")]
    out = _read(paths)
    assert out["id"].tolist() == ["id0", "id1", "id2", "id3"]
    assert out["path"].tolist() == paths
    assert out["bytes"][0] == b"\xff\xd8abc" and out["error"][0] is None
    assert out["bytes"][1] is None and out["error"][1].startswith("not_found: ")
    assert paths[1] in out["error"][1]
    assert out["bytes"][2] is None
    assert out["error"][2] == f"not_a_file: is a folder, not a regular file: {paths[2]}"
    assert out["bytes"][3] == b"" and out["error"][3] is None  # empty is decode's business


def test_read_batch_name_too_long_is_unreadable(tmp_path: Path) -> None:
    out = _read([str(tmp_path / ("n" * 300 + ".jpg"))])
    assert out["error"][0].startswith("unreadable: ")


def test_read_batch_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked.jpg"
    path.write_bytes(b"secret")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop this process reading")
        assert _read([str(path)])["error"][0].startswith("unreadable: permission denied")
    finally:
        path.chmod(0o644)


def test_read_batch_permission_error_is_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same mapping as chmod 000, checked even where the tests run as root.
    path = str(tmp_path / "a.jpg")
    Path(path).write_bytes(b"x")

    def denied(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(sources.os, "open", denied)
    out = _read([path])
    assert out["error"][0] == f"unreadable: permission denied: {path}"


def test_file_vanished_between_listing_and_reading(tmp_path: Path) -> None:
    _touch(tmp_path, "a.jpg", "b.jpg", "c.jpg")
    items = list(iter_inputs([str(tmp_path)]))
    (tmp_path / "b.jpg").unlink()
    out = read_batch(items_to_batch(items))
    assert [e is None for e in out["error"]] == [True, False, True]
    assert out["error"][1].startswith("not_found: ")
    assert out["bytes"][0] == b"x" and out["bytes"][2] == b"x"


def test_read_batch_keeps_columns_and_does_not_modify_input(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    batch = items_to_batch([InputItem("a.jpg", str(tmp_path / "a.jpg"))])
    batch["extra"] = np.array([7])
    out = read_batch(batch)
    assert set(batch) == {"id", "path", "extra"}
    assert set(out) == {"id", "path", "extra", "bytes", "error"}
    assert out["extra"].tolist() == [7]


def test_empty_read_batch() -> None:
    out = read_batch(items_to_batch([]))
    assert out["bytes"].shape == (0,) and out["error"].shape == (0,)
    assert out["id"].dtype == object


def test_read_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(ReadError("not_found", "gone: /x.jpg")))
    assert isinstance(err, ReadError)
    assert err.code == "not_found" and str(err) == "not_found: gone: /x.jpg"


# --- special files, size limits, names that are not UTF-8 ---------------------------------


def _read_within(paths: list[str], seconds: float = 20, **kwargs: object) -> dict[str, np.ndarray]:
    """``read_batch`` in a thread that must finish in ``seconds`` (a FIFO would block it)."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            read_batch,
            items_to_batch([InputItem(id=f"id{i}", path=p) for i, p in enumerate(paths)]),
            None,
            **kwargs,
        )
        try:
            return future.result(timeout=seconds)
        except FutureTimeout:
            # Unblock the reader (open the FIFO for writing) so the test run can end.
            for p in paths:
                if stat.S_ISFIFO(os.stat(p).st_mode):
                    os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
            raise AssertionError(f"read_batch still reading after {seconds} s") from None


def test_special_files_are_error_rows_and_never_read(tmp_path: Path) -> None:
    (tmp_path / "real.jpg").write_bytes(b"\xff\xd8real")
    os.mkfifo(tmp_path / "x.jpg")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "rand.png").symlink_to("/dev/urandom")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "real.jpg")
    (tmp_path / "dir.jpg").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s.jpg"))
    names_ = ["x.jpg", "zero.png", "rand.png", "link.jpg", "dir.jpg", "s.jpg", "real.jpg"]
    try:
        out = _read_within([str(tmp_path / n) for n in names_])
    finally:
        sock.close()
    kinds = [e.split(": ")[1] if e else None for e in out["error"]]
    assert kinds == [
        "is a FIFO (named pipe), not a regular file",
        "is a character device, not a regular file",
        "is a character device, not a regular file",
        None,
        "is a folder, not a regular file",
        "is a socket, not a regular file",
        None,
    ]
    assert [e.split(":")[0] for e in out["error"] if e] == ["not_a_file"] * 5
    assert out["bytes"][3] == out["bytes"][6] == b"\xff\xd8real"  # a symlink to a file works


def test_fifo_swapped_in_after_the_stat_does_not_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race: the path is a regular file when checked, a FIFO when opened.
    os.mkfifo(tmp_path / "x.jpg")
    (tmp_path / "regular").write_bytes(b"x")
    regular = os.stat(tmp_path / "regular")
    monkeypatch.setattr(sources.os, "stat", lambda *a, **k: regular)
    out = _read_within([str(tmp_path / "x.jpg")])
    assert out["error"][0].startswith("not_a_file: is a FIFO (named pipe)")


def test_max_file_bytes_is_checked_before_reading(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x" * 1000)
    path = str(tmp_path / "a.jpg")
    assert _read_within([path], max_bytes=1000)["bytes"][0] == b"x" * 1000
    out = _read_within([path], max_bytes=999)
    assert out["bytes"][0] is None
    assert out["error"][0] == (
        f"too_large: file is 1000 bytes, more than --max-file-bytes 999: {path}"
    )


def test_a_file_that_grows_is_read_no_further_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file that grew after its size was taken: the stats say 10 bytes, it holds 5000.
    (tmp_path / "a.jpg").write_bytes(b"y" * 5000)
    path = str(tmp_path / "a.jpg")
    small = os.stat_result((*os.stat(path)[:6], 10, 0, 0, 0))
    monkeypatch.setattr(sources.os, "stat", lambda *a, **k: small)
    monkeypatch.setattr(sources.os, "fstat", lambda fd: small)
    read: list[int] = []
    real_open = open

    def counting_open(*args, **kwargs):  # type: ignore[no-untyped-def]
        f = real_open(*args, **kwargs)
        raw_read = f.read

        class Counted:
            def __enter__(self):  # type: ignore[no-untyped-def]
                return self

            def __exit__(self, *exc):  # type: ignore[no-untyped-def]
                f.close()

            def read(self, n: int) -> bytes:
                data = raw_read(n)
                read.append(len(data))
                return data

        return Counted()

    monkeypatch.setattr("builtins.open", counting_open)
    out = _read_within([path], max_bytes=3000)
    assert out["error"][0] == f"too_large: file grew past --max-file-bytes 3000 while read: {path}"
    assert sum(read) == 3001  # never more than the limit + 1
    read.clear()
    assert _read_within([path], max_bytes=8000)["bytes"][0] == b"y" * 5000


def test_names_that_are_not_utf8_are_listed_in_file_form_and_read(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    os.makedirs(root + b"/sub")
    for name, data in ((b"latin1_\xe9.jpg", b"A"), (b"sub/caf\xc3\xa9.jpg", b"B")):
        with open(root + b"/" + name, "wb") as f:
            f.write(data)
    (tmp_path / "file:x.jpg").write_bytes(b"C")  # valid UTF-8 that merely starts with file:
    items = list(iter_inputs([str(tmp_path)]))
    assert [(i.id, i.path) for i in items] == [
        ("file:x.jpg", str(tmp_path / "file:x.jpg")),
        ("file:latin1_%E9.jpg", f"file://{tmp_path}/latin1_%E9.jpg"),
        ("sub/café.jpg", str(tmp_path / "sub" / "café.jpg")),  # valid UTF-8: as it was
    ]
    for item in items:
        item.id.encode("utf-8")  # every output format can hold them
    assert read_batch(items_to_batch(items))["bytes"].tolist() == [b"C", b"A", b"B"]
    # A glob and a single file give the same forms.
    glob_items = list(iter_inputs([str(tmp_path / "*.jpg")]))
    assert sorted(i.id for i in glob_items) == ["file:latin1_%E9.jpg", "file:x.jpg"]
    single = os.fsdecode(root + b"/latin1_\xe9.jpg")
    assert list(iter_inputs([single])) == [
        InputItem(f"file://{tmp_path}/latin1_%E9.jpg", f"file://{tmp_path}/latin1_%E9.jpg")
    ]
    # An output's forms listed in a manifest (to redo some rows) read the same files: the
    # absolute path form, the relative id form, and the plain name that starts with file:.
    manifest = tmp_path / "redo.txt"
    listed = [f"file://{tmp_path}/latin1_%E9.jpg", "file:latin1_%E9.jpg", "file:x.jpg"]
    manifest.write_text("\n".join(listed) + "\n")
    again = list(iter_inputs([str(manifest)]))
    assert [i.id for i in again] == listed  # ids: the paths as given
    assert read_batch(items_to_batch(again))["bytes"].tolist() == [b"A", b"A", b"C"]
