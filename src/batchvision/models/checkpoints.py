"""Reading what a user gives for a model: checkpoint files and label files.

Shared by every model source (torchvision, timm, Hugging Face): a checkpoint is read the
same way whichever library builds the architecture.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from batchvision.errors import ConfigError, ModelLoadError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")
#: Keys under which training scripts commonly nest the state_dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
#: Classes an architecture is built with to find its classifier head in a checkpoint.
HEAD_PROBE_CLASSES = 1000
_V = TypeVar("_V")


def read_labels(path: str | None, num_classes: int | None) -> tuple[str, ...]:
    """Class names from a file (one per line), or ``class_N`` when no file is given."""
    if not path:
        if num_classes is None:
            raise ConfigError("cannot tell the number of classes; pass --labels FILE")
        return tuple(f"class_{i}" for i in range(num_classes))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read --labels {path!r}: {e.strerror or e}") from e
    labels = tuple(line.strip() for line in text.splitlines())
    while labels and not labels[-1]:
        labels = labels[:-1]
    if num_classes is not None and len(labels) != num_classes:
        raise ConfigError(
            f"--labels {path!r} has {len(labels)} names but the model has {num_classes} classes"
        )
    return labels


def looks_like_path(weights: str) -> bool:
    """Whether ``--weights`` names a checkpoint file rather than a weights name."""
    return (
        weights.lower().endswith(CHECKPOINT_SUFFIXES)
        or os.sep in weights
        or os.path.exists(weights)
    )


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A state_dict from ``.safetensors`` or a torch pickle, unwrapped and de-prefixed."""
    if not os.path.isfile(path):
        raise ConfigError(f"--weights checkpoint {path!r} does not exist")
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            raw: Any = load_file(path)
        else:
            # mmap reads only the zip format (torch >= 1.6); older files and those saved
            # with _use_new_zipfile_serialization=False are read whole, as safely.
            mmap = zipfile.is_zipfile(path)
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise ModelLoadError(f"cannot read checkpoint {path!r}: {e}") from e
    return _unwrap_state_dict(raw, path)


def _unwrap_state_dict(raw: Any, path: str) -> dict[str, torch.Tensor]:
    if isinstance(raw, torch.nn.Module):
        raw = raw.state_dict()
    for key in WRAPPER_KEYS:
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelLoadError(f"checkpoint {path!r} does not hold a state_dict of tensors")
    return _strip_prefixes(dict(raw))


def _strip_prefixes(state: dict[str, _V]) -> dict[str, _V]:
    # DataParallel/DDP ("module.") and torch.compile ("_orig_mod.") wrap every key.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a checkpoint; a ``.safetensors`` file is read from its header only.

    Resolving a model needs only the head's shape; the tensors themselves are read once,
    later, by ``load_state_dict``.
    """
    if not (path.lower().endswith(".safetensors") and os.path.isfile(path)):
        return {k: tuple(v.shape) for k, v in read_checkpoint(path).items()}
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:
        raise ModelLoadError(f"cannot read checkpoint {path!r}: {e}") from e
    return _strip_prefixes(shapes)


def head_classes(
    probe: torch.nn.Module, shapes: dict[str, tuple[int, ...]], path: str, what: str
) -> int:
    """A checkpoint's class count: its size of the last tensor whose leading dimension in
    ``probe`` (the architecture built with ``HEAD_PROBE_CLASSES`` classes on the meta
    device) is the class count, i.e. the classifier head's output."""
    heads = [
        k
        for k, v in probe.state_dict().items()
        if v.ndim >= 1 and v.shape[0] == HEAD_PROBE_CLASSES and k in shapes
    ]
    if not heads:
        raise ModelLoadError(
            f"checkpoint {path!r} has no classifier head for {what}; "
            "is it a state_dict of this architecture?"
        )
    return int(shapes[heads[-1]][0])
