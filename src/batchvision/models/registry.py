"""The one way in to models: parse a name, resolve it to a ModelSpec, build the module.

Modelled on torchvision's ``models/_api.py``: sources register once (a duplicate is an
error), names are parsed in one place, and an unknown name lists what is valid.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from batchvision.config import TASKS, PreprocessOverrides, TaskName
from batchvision.errors import ConfigError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from batchvision.models.spec import ModelSpec


@dataclass(frozen=True)
class ModelInfo:
    """One row of ``batchvision models``."""

    name: str
    task: str
    weights: tuple[str, ...]


class ModelSource(Protocol):
    """A family of models (torchvision, Hugging Face, timm, ...).

    ``resolve`` returns a spec whose ``task`` is the model's natural one; the registry then
    applies ``--task``. ``build`` returns a module whose output is the task's tensor:
    logits ``(N, C)`` (classify), per-pixel logits ``(N, C, h, w)`` (segment) or pooled
    features ``(N, D)`` (embed).
    """

    name: str
    #: How users name a model of this source, for ``batchvision models``.
    naming: str

    def resolve(
        self,
        arch: str,
        weights: str,
        *,
        labels_path: str | None,
        overrides: PreprocessOverrides,
        seed: int,
    ) -> ModelSpec:
        """Validate the name and weights and describe the model, cheaply (no download)."""
        ...

    def load_state_dict(self, spec: ModelSpec) -> dict[str, torch.Tensor] | None:
        """Download or read the weights, once, on the driver (``None`` for random init)."""
        ...

    def build(
        self, spec: ModelSpec, state_dict: dict[str, torch.Tensor] | None = None
    ) -> torch.nn.Module:
        """Build the module with its weights (downloading or reading them if not given)."""
        ...

    def list_models(self) -> list[ModelInfo]:
        """Every model this source offers."""
        ...


_SOURCES: dict[str, ModelSource] = {}
DEFAULT_SOURCE = "torchvision"


def register_source(source: ModelSource) -> ModelSource:
    """Add a model source; registering a name twice is a programming error."""
    if source.name in _SOURCES:
        raise ValueError(f"model source {source.name!r} is already registered")
    _SOURCES[source.name] = source
    return source


def get_source(name: str) -> ModelSource:
    """The registered source called ``name``."""
    _ensure_builtin_sources()
    try:
        return _SOURCES[name]
    except KeyError:
        raise ConfigError(
            f"unknown model source {name!r}; valid sources: {', '.join(sorted(_SOURCES))}"
        ) from None


def parse_model_name(name: str) -> tuple[str, str]:
    """Split ``"source:arch"`` into its parts; a bare name belongs to torchvision."""
    name = name.strip()
    if not name:
        raise ConfigError("--model is empty; try `batchvision models` for the list")
    source, sep, arch = name.partition(":")
    if not sep:
        return DEFAULT_SOURCE, source
    return source, arch


def resolve_model(
    name: str,
    weights: str = "DEFAULT",
    *,
    labels_path: str | None = None,
    overrides: PreprocessOverrides | None = None,
    seed: int = 0,
    task: TaskName | None = None,
) -> ModelSpec:
    """Resolve a user-facing model name and weights into a ModelSpec for ``task``.

    ``task`` defaults to the model's own (segmentation models segment, classifiers
    classify); a task the model cannot do is a ConfigError naming the ones it can.
    """
    source_name, arch = parse_model_name(name)
    spec = get_source(source_name).resolve(
        arch,
        weights,
        labels_path=labels_path,
        overrides=overrides or PreprocessOverrides(),
        seed=seed,
    )
    return with_task(spec, task)


def with_task(spec: ModelSpec, task: TaskName | None) -> ModelSpec:
    """``spec`` set up for ``task`` (``None``: the model's default)."""
    if task is None:
        task = spec.tasks[0]
    if task not in TASKS:
        raise ConfigError(f"--task {task!r} is not valid; choose one of: {', '.join(TASKS)}")
    if task not in spec.tasks:
        raise ConfigError(
            f"--task {task} does not fit {spec.name}: it supports {', '.join(spec.tasks)}"
        )
    spec = dataclasses.replace(spec, task=task)
    if task == "embed" and spec.embedding_dim is None:
        spec = dataclasses.replace(spec, embedding_dim=_probe_embedding_dim(spec))
    return spec


def _probe_embedding_dim(spec: ModelSpec) -> int:
    """The feature size, from a forward pass on the meta device (no memory, no compute)."""
    import torch

    probe = dataclasses.replace(spec, weights_kind="random")
    pp = spec.preprocess
    h, w = (pp.resize_size, pp.resize_size) if pp.resize_mode == "shorter" else pp.crop_size
    source = get_source(spec.source)
    try:
        with torch.device("meta"):
            out = source.build(probe).eval()(torch.empty(1, 3, h, w))
    except (NotImplementedError, RuntimeError, TypeError, ValueError) as e:
        logger.debug("meta-device probe of %s failed (%s); probing on the CPU", spec.name, e)
        with torch.inference_mode():
            out = source.build(probe).eval()(torch.zeros(1, 3, h, w))
    return int(out.reshape(1, -1).shape[1])


def load_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor] | None:
    """``spec``'s weights, fetched once so workers never download on their own."""
    return get_source(spec.source).load_state_dict(spec)


def encode_text(
    spec: ModelSpec, state_dict: dict[str, torch.Tensor] | None, texts: list[str]
) -> tuple[Any, str]:
    """Text embeddings of an image-text model (``zero-shot``), and its score function.

    Only sources with image-text models have ``encode_text``; for others this is a
    ConfigError (``with_task`` refuses zero-shot on their models first).
    """
    source = get_source(spec.source)
    encode = getattr(source, "encode_text", None)
    if encode is None:
        raise ConfigError(f"--task zero-shot needs an image-text model; {spec.name} has no text")
    result: tuple[Any, str] = encode(spec, state_dict, texts)
    return result


def build_model(
    spec: ModelSpec, state_dict: dict[str, torch.Tensor] | None = None
) -> torch.nn.Module:
    """Build ``spec``'s module in eval mode; random weights are said loudly, here for every
    source (not on the meta device, where a module is only a shape probe)."""
    import torch

    if spec.weights_kind == "random" and torch.get_default_device().type != "meta":
        logger.warning(
            "RANDOM WEIGHTS (--weights random, seed %d): predictions are meaningless; "
            "use this only for benchmarking and testing",
            spec.seed,
        )
    module = get_source(spec.source).build(spec, state_dict)
    return module.eval()


def list_models() -> dict[str, list[ModelInfo]]:
    """All models, by source."""
    _ensure_builtin_sources()
    return {name: src.list_models() for name, src in sorted(_SOURCES.items())}


def list_sources() -> dict[str, ModelSource]:
    """The registered sources, by name."""
    _ensure_builtin_sources()
    return dict(sorted(_SOURCES.items()))


def _ensure_builtin_sources() -> None:
    # Imported lazily so that `import batchvision` stays cheap; the import registers. The
    # hf and timm modules import their optional packages only when a model is resolved.
    for module in ("torchvision", "hf", "timm"):
        importlib.import_module(f"batchvision.models.{module}")
