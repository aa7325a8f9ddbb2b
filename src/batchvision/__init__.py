"""batchvision: run PyTorch vision models over very large image collections.

``batchvision.run(RunConfig(...))`` is the entry point; the stages in
``batchvision.stages`` are plain batch functions usable in your own pipelines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "PreprocessConfig", "PreprocessOverrides", "RunConfig", "Summary", "__version__",
    "embed_text", "run",
]  # fmt: skip

if TYPE_CHECKING:
    from batchvision.api import Summary, embed_text, run
    from batchvision.config import PreprocessConfig, PreprocessOverrides, RunConfig


def __getattr__(name: str) -> Any:
    # Lazy, so `batchvision --help` does not pay for importing torch.
    if name in ("run", "Summary", "embed_text"):
        from batchvision import api

        return getattr(api, name)
    if name in ("RunConfig", "PreprocessConfig", "PreprocessOverrides"):
        from batchvision import config

        return getattr(config, name)
    raise AttributeError(f"module 'batchvision' has no attribute {name!r}")
