"""torchvision classification, segmentation and detection models, through torchvision's own
registry."""

from __future__ import annotations

import collections
import difflib
import functools
import warnings
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
from torchvision.models import WeightsEnum

from batchvision.config import Interpolation, PreprocessConfig, PreprocessOverrides
from batchvision.errors import ConfigError, ModelLoadError
from batchvision.models import hub
from batchvision.models.checkpoints import (
    HEAD_PROBE_CLASSES,
    checkpoint_shapes,
    head_classes,
    looks_like_path,
    read_checkpoint,
    read_labels,
)
from batchvision.models.detectors import TorchvisionDetector, transform_of
from batchvision.models.registry import ModelInfo, register_source
from batchvision.models.spec import ModelSpec, Task, WeightsKind

_INTERPOLATIONS: dict[str, Interpolation] = {
    "BILINEAR": "bilinear",
    "BICUBIC": "bicubic",
    "NEAREST": "nearest",
}


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
        if arch in _detection_archs():
            base = detection_preprocess(arch)
        else:
            base = preprocess_from_weights(default) if default else PreprocessConfig()
        kind: WeightsKind
        if looks_like_path(weights) and labels_path and arch in _detection_archs():
            labels = read_labels(labels_path, None)  # one per class, background included
            num_classes = len(labels)
            kind, desc = "checkpoint", str(Path(weights).resolve())
        elif looks_like_path(weights):
            num_classes = checkpoint_num_classes(arch, weights)
            labels = read_labels(labels_path, num_classes)
            kind, desc = "checkpoint", str(Path(weights).resolve())
        elif weights.lower() == "random":
            labels = _labels_for_random(default, labels_path)
            num_classes = len(labels)
            kind, desc = "random", "random"
        else:
            w = parse_weights(arch, weights)
            base = base if arch in _detection_archs() else preprocess_from_weights(w)
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
        if state_dict is None and spec.weights_kind == "random":  # said by build_model
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


# torchvision's registry is filled at import: each list is read once, not per lookup
# (`batchvision models` asks for every architecture's tasks).
@functools.cache
def _segmentation_archs() -> tuple[str, ...]:
    return tuple(tvm.list_models(module=tvm.segmentation))


@functools.cache
def _detection_archs() -> tuple[str, ...]:
    # Keypoint R-CNN's output is keypoints; its boxes alone would be a poor detector.
    return tuple(a for a in tvm.list_models(module=tvm.detection) if not a.startswith("keypoint"))


def _all_archs() -> list[str]:
    return [*tvm.list_models(module=tvm), *_segmentation_archs(), *_detection_archs()]


def _tasks(arch: str) -> tuple[Task, ...]:
    if arch in _detection_archs():
        return ("detect",)
    return ("segment",) if arch in _segmentation_archs() else ("classify", "embed")


def _get_model(arch: str, num_classes: int, **kwargs: Any) -> torch.nn.Module:
    if arch in _segmentation_archs() or arch in _detection_archs():
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
    if spec.task == "detect":
        return TorchvisionDetector(model, spec.preprocess)
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


def detection_preprocess(arch: str) -> PreprocessConfig:
    """A detector's preprocessing, read off the model's own ``GeneralizedRCNNTransform``.

    The weights' ``transforms()`` only scale to [0, 1]; the resize (shorter side to
    ``min_size``, longer at most ``max_size``; or SSD's ``fixed_size``), mean and std live
    in the model. The image crosses to the device as decoded (uint8) and the model's
    transform resizes it there, in float, as in the reference (``resize_mode`` ``model``);
    only the normalisation moves to the predictor (``detectors._Normalised``).
    """
    try:
        with torch.device("meta"):
            model = _get_model(arch, HEAD_PROBE_CLASSES)
    except (NotImplementedError, RuntimeError):
        model = _get_model(arch, HEAD_PROBE_CLASSES)
    t = transform_of(model)
    common: dict[str, Any] = {
        "mean": tuple(t.image_mean),
        "std": tuple(t.image_std),
        "resize_mode": "model",
    }
    if t.fixed_size is not None:  # SSD: squashed to (width, height)
        hw = (int(t.fixed_size[1]), int(t.fixed_size[0]))
        return PreprocessConfig(resize_size=min(hw), resize_hw=hw, crop_size=hw, **common)
    size = int(t.min_size[-1])
    return PreprocessConfig(
        resize_size=size, crop_size=(size, size), max_size=int(t.max_size), **common
    )


def _labels_for_random(default: WeightsEnum | None, labels_path: str | None) -> tuple[str, ...]:
    if labels_path:
        return read_labels(labels_path, None)
    if default is not None and default.meta.get("categories"):
        return tuple(default.meta["categories"])
    return tuple(f"class_{i}" for i in range(HEAD_PROBE_CLASSES))


def checkpoint_num_classes(arch: str, path: str) -> int:
    """Read the number of classes off the checkpoint's classifier head.

    The head is found by building the architecture on the meta device with 1000 classes
    and looking for the tensors whose first dimension is that 1000.
    """
    if arch in _detection_archs():
        # Detection heads interleave classes with anchors (RetinaNet, SSD), so their size
        # does not name the class count: the weights' categories do (the load checks it).
        default = _default_weights(arch)
        return len(default.meta["categories"]) if default else 91
    shapes = checkpoint_shapes(path)
    try:
        with torch.device("meta"):
            probe = _get_model(arch, HEAD_PROBE_CLASSES, **_aux_kwargs(arch, shapes))
    except (NotImplementedError, RuntimeError):
        # Some builders compute their layout with real tensor math (RegNet's block widths),
        # which the meta device cannot run; build those for real, once.
        probe = _get_model(arch, HEAD_PROBE_CLASSES, **_aux_kwargs(arch, shapes))
    return head_classes(probe, shapes, path, repr(arch))


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
