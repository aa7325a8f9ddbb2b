"""Local file names that are not valid UTF-8, as text every output can hold, and back.

A POSIX file name is bytes. Python lists one that is not valid UTF-8 as a ``str`` holding
lone surrogates (PEP 383), which no Parquet, CSV or JSON writer can encode: such a name is
written in a reversible ``file:`` form instead, by the rule in :data:`RULE` (the output
schema's documentation quotes it).

:func:`to_text` makes the form when listing; :func:`to_os` turns it back into the name the
operating system knows, wherever a path is read (``io.sources.read_bytes`` serves the run
and ``batchvision report``).
"""

from __future__ import annotations

import os
from urllib.parse import quote_from_bytes, unquote_to_bytes

#: The rule, as docs/output-schema.md states it (Markdown).
RULE = (
    "A local file name is bytes. One that is not valid UTF-8 (say a Latin-1 `é`, byte "
    "0xE9) is written in `id` and `path` as its `file:` form: `file:` followed by the "
    "bytes percent-encoded (RFC 3986: ASCII letters, digits, `-._~` and `/` as they are, "
    "every other byte as `%XX`, upper-case hex), with `//` after `file:` when the path is "
    "absolute, which makes it a standard file URI. So `/data/latin1_\\xe9.jpg` is "
    "written `file:///data/latin1_%E9.jpg` and the id `a/latin1_\\xe9.jpg` "
    "`file:a/latin1_%E9.jpg`; `urllib.parse.unquote_to_bytes` gives the bytes back. Every "
    "valid UTF-8 name is written exactly as it is, except one that is itself such a form "
    "(starts with `file:` and its escapes decode to bytes that are not UTF-8): that one is "
    "encoded once more, so no two names share a form. `--resume`, `batchvision report` and "
    "manifests (so an output's rows can be listed again) read these forms back."
)
MARKER = "file:"
#: Bytes kept as they are in the ``file:`` form (besides letters and digits).
_SAFE = "/-._~"


def to_text(name: str) -> str:
    """``name`` (a ``str`` from the OS, perhaps holding surrogates) as valid UTF-8 text."""
    return _encode(name) if _needs_form(name) else name


def to_os(text: str) -> str:
    """The name :func:`to_text` made ``text`` from: its ``file:`` form decoded, else itself."""
    name = _decode(text)
    return name if name is not None and _needs_form(name) else text


def _needs_form(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    decoded = _decode(name)
    # A valid name that reads as the form of another name: encoded too (see module doc).
    return decoded is not None and _needs_form(decoded)


def _raw(name: str) -> bytes:
    try:
        return os.fsencode(name)
    except UnicodeEncodeError:  # a surrogate that no byte produced: keep it reversible
        return name.encode("utf-8", "surrogatepass")


def _encode(name: str) -> str:
    raw = _raw(name)
    quoted = quote_from_bytes(raw, safe=_SAFE)
    return f"{MARKER}//{quoted}" if raw.startswith(b"/") else f"{MARKER}{quoted}"


def _decode(text: str) -> str | None:
    """The name whose canonical ``file:`` form is ``text``, or ``None``."""
    if not text.startswith(MARKER):
        return None
    rest = text[len(MARKER) :]
    if rest.startswith("//"):
        rest = rest[2:]  # an empty authority: file:///absolute/path
    try:
        name = os.fsdecode(unquote_to_bytes(rest))
    except (UnicodeDecodeError, ValueError):
        return None
    return name if _encode(name) == text else None
