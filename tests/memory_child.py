"""Run ``batchvision.run`` in this fresh process, for the flat-memory tests.

``python tests/memory_child.py PARAMS_JSON RESULT_PATH``: ``PARAMS_JSON`` holds
``RunConfig``'s fields (``preprocess`` as a dict of overrides); the summary's counts go to
``RESULT_PATH`` as JSON. tests/e2e/test_memory.py samples this process and its decode
workers from outside while it runs.

``leak_kb`` exists only to show that the check can fail: it keeps that many KiB per image
alive in whichever process counts the image (the heap trimmer of
:mod:`batchvision.memory` counts every image in the main process, and every image read
in the decode worker that read it; workers are forked, so they inherit the patch).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def inject_leak(kb_per_image: int) -> None:
    """Make every :class:`batchvision.memory.HeapTrimmer` keep ``kb_per_image`` KiB."""
    from batchvision import memory

    kept: list[bytes] = []
    count = memory.HeapTrimmer.__call__

    def leaky(self: memory.HeapTrimmer, images: int = 1) -> None:
        kept.append(b"\x01" * (kb_per_image * 1024 * images))  # written pages, not calloc's
        count(self, images)

    memory.HeapTrimmer.__call__ = leaky  # type: ignore[method-assign]


def main(params_json: str, result_path: str) -> None:
    import batchvision
    from batchvision import RunConfig
    from batchvision.config import PreprocessOverrides

    p: dict[str, Any] = json.loads(params_json)
    leak_kb = p.pop("leak_kb", 0)
    if leak_kb:
        inject_leak(leak_kb)
    preprocess = PreprocessOverrides(**p.pop("preprocess", {}))
    summary = batchvision.run(RunConfig(**p, preprocess=preprocess))
    result = {"ok": summary.ok, "error": summary.error, "processed": summary.processed}
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
    # The run is over and measured: interpreter teardown (which allocates on its own) is not.
    sys.stdout.flush()
    os._exit(0)
