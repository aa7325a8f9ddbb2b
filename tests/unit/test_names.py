"""The ``file:`` form of local names that are not valid UTF-8: reversible and unambiguous."""

from __future__ import annotations

import os
from urllib.parse import unquote_to_bytes

import pytest

from batchvision.io.names import to_os, to_text


def _os(raw: bytes) -> str:
    return os.fsdecode(raw)  # what os.scandir / os.listdir give for these bytes


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"latin1_\xe9.jpg", "file:latin1_%E9.jpg"),
        (b"/data/latin1_\xe9.jpg", "file:///data/latin1_%E9.jpg"),
        (b"a b/\xff%.jpg", "file:a%20b/%FF%25.jpg"),
        (b"caf\xc3\xa9/x\xe9.jpg", "file:caf%C3%A9/x%E9.jpg"),  # UTF-8 parts escaped too
    ],
)
def test_names_that_are_not_utf8_get_the_file_form(raw: bytes, text: str) -> None:
    name = _os(raw)
    assert to_text(name) == text
    text.encode("utf-8")
    assert to_os(text) == name
    # The documented reading: the bytes after file: (and // for an absolute path).
    rest = text[len("file:") :]
    assert unquote_to_bytes(rest[2:] if rest.startswith("//") else rest) == raw


@pytest.mark.parametrize(
    "name",
    ["a/b.jpg", "café.jpg", "file:x.jpg", "file:///etc/x.jpg", "s3://b/k.jpg", "%E9.jpg", ""],
)
def test_valid_utf8_names_stay_as_they_are(name: str) -> None:
    assert to_text(name) == name
    assert to_os(name) == name


def test_no_two_names_share_a_form() -> None:
    # A valid name that looks like the form of a Latin-1 name is encoded once more, so
    # both survive the round trip and stay distinct.
    latin1 = _os(b"latin1_\xe9.jpg")
    lookalike = "file:latin1_%E9.jpg"
    forms = {to_text(latin1), to_text(lookalike)}
    assert len(forms) == 2
    assert to_os(to_text(latin1)) == latin1
    assert to_os(to_text(lookalike)) == lookalike
    assert to_text(lookalike) == "file:file%3Alatin1_%25E9.jpg"
