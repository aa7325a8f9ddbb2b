"""torchvision classification and segmentation models, through torchvision's own registry."""

from __future__ import annotations

import collections
import difflib
import logging
import os
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import torch
import torchvision.models as tvm
from torchvision.models import WeightsEnum

from batchvision.config import Interpolation, PreprocessConfig, PreprocessOverrides
from batchvision.errors import ConfigError, ModelLoadError
from batchvision.models import hub
from batchvision.models.registry import ModelInfo, register_source
from batchvision.models.spec import ModelSpec, Task, WeightsKind

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")
_INTERPOLATIONS: dict[str, Interpolation] = {
    "BILINEAR": "bilinear",
    "BICUBIC": "bicubic",
    "NEAREST": "nearest",
}
# Keys under which training scripts commonly nest the state_dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
_HEAD_PROBE_CLASSES = 1000
_V = TypeVar("_V")


class TorchvisionSource:
    """Classification and semantic segmentation architectures in ``torchvision.models``."""

    name = "torchvision"
    naming = (
        "NAME or torchvision:NAME, e.g. resnet50, deeplabv3_mobilenet_v3_large; "
        "--weights DEFAULT, an enum name, random or a checkpoint file"
    )

    def resolve(
        self,
        arch: str,
        weights: str,
        *,
        labels_path: str | None,
        overrides: PreprocessOverrides,
        seed: int,
    ) -> ModelSpec:
        arch = _check_arch(arch)
        weights = weights.strip()
        default = _default_weights(arch)
        base = preprocess_from_weights(default) if default else PreprocessConfig()
        kind: WeightsKind
        if _looks_like_path(weights):
            num_classes = checkpoint_num_classes(arch, weights)
            labels = read_labels(labels_path, num_classes)
            kind, desc = "checkpoint", str(Path(weights).resolve())
        elif weights.lower() == "random":
            labels = _labels_for_random(default, labels_path)
            num_classes = len(labels)
            kind, desc = "random", "random"
        else:
            w = parse_weights(arch, weights)
            base = preprocess_from_weights(w)
            categories = tuple(w.meta.get("categories") or ())
            labels = read_labels(labels_path, len(categories)) if labels_path else categories
            num_classes = len(labels)
            kind, desc = "pretrained", _qualname(w)
        tasks = _tasks(arch)
        return ModelSpec(
            source=self.name,
            arch=arch,
            weights=desc,
            weights_kind=kind,
            num_classes=num_classes,
            labels=labels,
            preprocess=overrides.apply(base),
            seed=seed,
            task=tasks[0],
            tasks=tasks,
        )

    def load_state_dict(self, spec: ModelSpec) -> dict[str, torch.Tensor] | None:
        if spec.weights_kind == "random":
            return None
        if spec.weights_kind == "checkpoint":
            state = read_checkpoint(spec.weights)
            _check_fits(spec, state)
            return state
        return _download_pretrained(spec.arch, tvm.get_weight(spec.weights)).state_dict()

    def build(
        self, spec: ModelSpec, state_dict: dict[str, torch.Tensor] | None = None
    ) -> torch.nn.Module:
        if state_dict is None and spec.weights_kind == "random":
            if torch.get_default_device().type != "meta":  # not a shape probe
                logger.warning(
                    "RANDOM WEIGHTS (--weights random, seed %d): predictions are meaningless; "
                    "use this only for benchmarking and testing",
                    spec.seed,
                )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.seed)
                model = _get_model(spec.arch, spec.num_classes)
            return for_task(model, spec)
        if state_dict is None:
            state_dict = self.load_state_dict(spec)
            assert state_dict is not None
        model = _get_model(spec.arch, spec.num_classes, **_builder_kwargs(spec, state_dict.keys()))
        _load_into(model, state_dict, spec.weights)
        return for_task(model, spec)

    def list_models(self) -> list[ModelInfo]:
        infos = []
        for arch in _all_archs():
            try:
                names = tuple(_qualname(w) for w in tvm.get_model_weights(arch))
            except (ValueError, KeyError):
                names = ()
            infos.append(ModelInfo(name=arch, task="|".join(_tasks(arch)), weights=names))
        return infos


def _segmentation_archs() -> list[str]:
    return list(tvm.list_models(module=tvm.segmentation))


def _all_archs() -> list[str]:
    return list(tvm.list_models(module=tvm)) + _segmentation_archs()


def _tasks(arch: str) -> tuple[Task, ...]:
    return ("segment",) if arch in _segmentation_archs() else ("classify", "embed")


def _get_model(arch: str, num_classes: int, **kwargs: Any) -> torch.nn.Module:
    if arch in _segmentation_archs():
        # Never fetch the ImageNet backbone the segmentation builders default to.
        kwargs.setdefault("weights_backbone", None)
    return tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)


class _SegmentationLogits(torch.nn.Module):
    """torchvision segmentation models return a dict; the predictor wants the logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)["out"]
        return out


def for_task(model: torch.nn.Module, spec: ModelSpec) -> torch.nn.Module:
    """The module whose output is the task's tensor: logits, per-pixel logits or features.

    For ``embed`` the classifier's last linear layer (the one producing the classes)
    becomes the identity, so the output is the pooled feature vector it reads.
    """
    if spec.task == "segment":
        return _SegmentationLogits(model)
    if spec.task != "embed":
        return model
    parent, name = _head(model, spec)
    setattr(parent, name, torch.nn.Identity())
    return model


def _head(model: torch.nn.Module, spec: ModelSpec) -> tuple[torch.nn.Module, str]:
    heads = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m.out_features == spec.num_classes
    ]
    if not heads:
        raise ConfigError(
            f"--task embed: {spec.arch} has no linear classifier to take features from; "
            "choose a model with one (e.g. resnet50, vit_b_16, convnext_tiny)"
        )
    name = heads[-1][0]
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name), attr


register_source(TorchvisionSource())


def _check_arch(arch: str) -> str:
    valid = _all_archs()
    if arch in valid:
        return arch
    close = difflib.get_close_matches(arch, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"unknown torchvision model {arch!r}{hint}; valid: {', '.join(valid)}")


def _default_weights(arch: str) -> WeightsEnum | None:
    try:
        enum = tvm.get_model_weights(arch)
    except (ValueError, KeyError):
        return None
    return enum["DEFAULT"]


def _qualname(w: Enum) -> str:
    return f"{type(w).__name__}.{w.name}"


def parse_weights(arch: str, weights: str) -> WeightsEnum:
    """``DEFAULT``, ``IMAGENET1K_V2`` or ``ResNet50_Weights.IMAGENET1K_V2`` to a weights enum."""
    try:
        enum = tvm.get_model_weights(arch)
    except (ValueError, KeyError):
        raise ConfigError(
            f"torchvision has no pretrained weights for {arch!r}; use --weights random "
            "or --weights PATH to a checkpoint"
        ) from None
    members = [m for m in enum.__members__ if m != "DEFAULT"]
    enum_name, dot, member = weights.rpartition(".")
    if dot and enum_name != enum.__name__:
        raise ConfigError(
            f"weights {weights!r} do not belong to {arch!r}; valid: DEFAULT, "
            + ", ".join(f"{enum.__name__}.{m}" for m in members)
            + ", random, or a checkpoint path"
        )
    try:
        return enum[member if dot else weights]
    except KeyError:
        raise ConfigError(
            f"unknown weights {weights!r} for {arch!r}; valid: DEFAULT, "
            + ", ".join(members)
            + ", random, or a checkpoint path (.pt/.pth/.safetensors)"
        ) from None


def preprocess_from_weights(weights: WeightsEnum) -> PreprocessConfig:
    """Read the weights' own ``transforms()`` into our config.

    ``ImageClassification`` resizes the shorter side and crops; ``SemanticSegmentation``
    resizes the shorter side only, so its inputs vary in size.
    """
    t = weights.transforms()
    resize = list(t.resize_size)
    if not hasattr(t, "crop_size"):
        return PreprocessConfig(
            resize_size=int(resize[0]),
            crop_size=(int(resize[0]), int(resize[0])),
            interpolation=_INTERPOLATIONS[t.interpolation.name],
            mean=tuple(t.mean),
            std=tuple(t.std),
            resize_mode="shorter",
        )
    crop = list(t.crop_size)
    return PreprocessConfig(
        resize_size=int(resize[0]),
        crop_size=(int(crop[0]), int(crop[-1])),
        interpolation=_INTERPOLATIONS[t.interpolation.name],
        mean=tuple(t.mean),
        std=tuple(t.std),
    )


def _labels_for_random(default: WeightsEnum | None, labels_path: str | None) -> tuple[str, ...]:
    if labels_path:
        return read_labels(labels_path, None)
    if default is not None and default.meta.get("categories"):
        return tuple(default.meta["categories"])
    return tuple(f"class_{i}" for i in range(_HEAD_PROBE_CLASSES))


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


def _looks_like_path(weights: str) -> bool:
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
    for key in _WRAPPER_KEYS:
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


def _checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
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


def checkpoint_num_classes(arch: str, path: str) -> int:
    """Read the number of classes off the checkpoint's classifier head.

    The head is found by building the architecture on the meta device with 1000 classes
    and looking for the tensors whose first dimension is that 1000.
    """
    shapes = _checkpoint_shapes(path)
    try:
        with torch.device("meta"):
            probe = _get_model(arch, _HEAD_PROBE_CLASSES, **_aux_kwargs(arch, shapes))
    except (NotImplementedError, RuntimeError):
        # Some builders compute their layout with real tensor math (RegNet's block widths),
        # which the meta device cannot run; build those for real, once.
        probe = _get_model(arch, _HEAD_PROBE_CLASSES, **_aux_kwargs(arch, shapes))
    return head_classes(probe, shapes, path, repr(arch))


def head_classes(
    probe: torch.nn.Module, shapes: dict[str, tuple[int, ...]], path: str, what: str
) -> int:
    """A checkpoint's class count: its size of the last tensor whose leading dimension in
    ``probe`` (the architecture built with ``_HEAD_PROBE_CLASSES`` classes on the meta
    device) is the class count, i.e. the classifier head's output."""
    heads = [
        k
        for k, v in probe.state_dict().items()
        if v.ndim >= 1 and v.shape[0] == _HEAD_PROBE_CLASSES and k in shapes
    ]
    if not heads:
        raise ModelLoadError(
            f"checkpoint {path!r} has no classifier head for {what}; "
            "is it a state_dict of this architecture?"
        )
    return int(shapes[heads[-1]][0])


def _builder_kwargs(spec: ModelSpec, state_keys: Iterable[str]) -> dict[str, Any]:
    """Constructor arguments that make the module match the weights' layout.

    Inception-style models switch on auxiliary heads and input re-scaling only when
    torchvision builds them with pretrained weights; a state_dict alone does not say so.
    """
    if spec.arch in _segmentation_archs():
        return _aux_kwargs(spec.arch, state_keys)
    if spec.arch not in ("inception_v3", "googlenet"):
        return {}
    return {
        "aux_logits": any("aux" in k.lower() for k in state_keys),
        "transform_input": spec.weights_kind == "pretrained",
        "init_weights": False,
    }


def _aux_kwargs(arch: str, state_keys: Iterable[str]) -> dict[str, Any]:
    """Segmentation checkpoints may carry an auxiliary classifier (unused at inference)."""
    if arch not in _segmentation_archs() or arch.startswith("lraspp"):
        return {}
    return {"aux_loss": any(k.startswith("aux_classifier.") for k in state_keys)}


def _check_fits(spec: ModelSpec, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse, on the driver and before any output is written, weights that do not fit.

    Loads into a meta-device model (no memory, no compute); builders the meta device cannot
    run are checked when the model is really built.
    """
    try:
        with torch.device("meta"):
            model = _get_model(spec.arch, spec.num_classes, **_builder_kwargs(spec, state.keys()))
    except (NotImplementedError, RuntimeError):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op"
        _load_into(model, state, spec.weights, assign=True)


def _load_into(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str, assign: bool = False
) -> None:
    if getattr(state, "_metadata", None) is None:
        # Module versions travel in a state_dict's ``_metadata``, which safetensors files and
        # unwrapped dicts lack; some modules refuse to load without it (MNASNet raises).
        # A checkpoint without it was saved by the current layout: use the fresh model's.
        with_meta = collections.OrderedDict(state)
        with_meta._metadata = model.state_dict()._metadata  # type: ignore[attr-defined]
        state = with_meta
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()
        raise ModelLoadError(
            f"checkpoint {where!r} does not fit {type(model).__name__}: {' '.join(first[:3])[:400]}"
        ) from e


def _download_pretrained(arch: str, weights: WeightsEnum) -> torch.nn.Module:
    """The pretrained model: from the torch hub cache, else downloaded once if the host
    answers; offline, one line saying how to supply the weights."""
    name = Path(weights.url).name
    cache = Path(torch.hub.get_dir()) / "checkpoints" / name
    fix = (
        "Fix: pass --weights PATH to a local checkpoint, --weights random (meaningless "
        f"predictions, for testing only), or put the file {name} at {cache} (the torch hub "
        "cache)"
    )

    def offline(e: BaseException) -> ModelLoadError:
        return ModelLoadError(
            f"cannot download {_qualname(weights)}: {hub.host(weights.url)} cannot be reached "
            f"(this machine may be offline) and the torch hub cache has no copy. {fix}"
        )

    try:
        return hub.cache_first(
            lambda: tvm.get_model(arch, weights=weights),
            url=weights.url,
            offline=offline,
            cached=cache.is_file(),
        )
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"cannot download {_qualname(weights)} ({type(e).__name__}: {_short(e)}); "
            f"this machine may be offline. {fix}"
        ) from e


def _short(e: BaseException) -> str:
    text = str(getattr(e, "reason", None) or e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
