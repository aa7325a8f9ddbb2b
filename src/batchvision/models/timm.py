"""timm models (an optional extra): ``timm:resnet50.a1_in1k``.

Preprocessing comes from the model's pretrained config (input size, crop_pct, crop mode,
interpolation, mean, std), as ``timm.data.resolve_model_data_config`` reads it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from batchvision.config import Interpolation, PreprocessConfig, PreprocessOverrides
from batchvision.errors import ConfigError, ModelLoadError
from batchvision.models import hub
from batchvision.models.registry import ModelInfo, register_source
from batchvision.models.spec import ModelSpec, Task, WeightsKind

INSTALL_HINT = "pip install 'batchvision[timm]'"
_INTERPOLATIONS: dict[str, Interpolation] = {
    "bilinear": "bilinear",
    "bicubic": "bicubic",
    "nearest": "nearest",
}


def require_timm() -> Any:
    """The ``timm`` module, or a one-line error with the install command."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"timm: models need the optional package timm; install it: {INSTALL_HINT}"
        ) from None
    return timm


class TimmSource:
    """Classification models from timm, with their pretrained configs' preprocessing."""

    name = "timm"
    naming = (
        "timm:NAME or timm:NAME.TAG, e.g. timm:resnet50.a1_in1k; "
        "--weights DEFAULT (downloads), random or a checkpoint file"
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
        timm = require_timm()
        from batchvision.models.checkpoints import looks_like_path, read_labels

        if not timm.is_model(arch):
            import difflib

            close = difflib.get_close_matches(arch, timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(
                f"unknown timm model {arch!r}{hint}; see timm.list_models() for the names"
            )
        weights = weights.strip()
        with torch.device("meta"):
            probe = timm.create_model(arch, pretrained=False)
        data = timm.data.resolve_model_data_config(probe)
        kind: WeightsKind
        if looks_like_path(weights):
            num_classes = _checkpoint_num_classes(timm, arch, weights)
            kind, desc = "checkpoint", str(Path(weights).resolve())
        elif weights in ("DEFAULT", "random"):
            num_classes = int(probe.pretrained_cfg.get("num_classes") or probe.num_classes)
            kind = "random" if weights == "random" else "pretrained"
            desc = kind
        else:
            raise ConfigError(
                f"--weights {weights!r} is not valid for timm models; choose DEFAULT, random "
                "or a checkpoint file (.pt/.pth/.safetensors)"
            )
        labels = (
            read_labels(labels_path, num_classes)
            if labels_path
            else _labels(timm, probe, num_classes)
        )
        tasks: tuple[Task, ...] = ("classify", "embed")
        return ModelSpec(
            source=self.name,
            arch=arch,
            weights=desc,
            weights_kind=kind,
            num_classes=num_classes,
            labels=labels,
            preprocess=overrides.apply(preprocess_from_data_config(data)),
            seed=seed,
            task=tasks[0],
            tasks=tasks,
        )

    def load_state_dict(self, spec: ModelSpec) -> dict[str, torch.Tensor] | None:
        if spec.weights_kind == "random":
            return None
        if spec.weights_kind == "checkpoint":
            from batchvision.models.checkpoints import read_checkpoint

            return read_checkpoint(spec.weights)
        timm = require_timm()
        url, cached = _weights_location(timm, spec.arch)
        fix = (
            "pass --weights PATH to a local checkpoint (.pth/.safetensors), or --weights "
            "random (meaningless predictions, for testing only)"
        )

        def offline(e: BaseException) -> ModelLoadError:
            return ModelLoadError(
                f"cannot download timm weights for {spec.arch!r}: {hub.host(url)} cannot be "
                "reached (this machine may be offline) and they are not in the local cache; " + fix
            )

        try:
            model = hub.cache_first(
                lambda: timm.create_model(spec.arch, pretrained=True),
                url=url,
                offline=offline,
                cached=cached,
            )
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(
                f"cannot download timm weights for {spec.arch!r} ({type(e).__name__}: "
                f"{_first_line(e)}); this machine may be offline: {fix}"
            ) from e
        return model.state_dict()

    def build(
        self, spec: ModelSpec, state_dict: dict[str, torch.Tensor] | None = None
    ) -> torch.nn.Module:
        timm = require_timm()
        if state_dict is None and spec.weights_kind != "random":
            state_dict = self.load_state_dict(spec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = timm.create_model(spec.arch, pretrained=False, num_classes=spec.num_classes)
        if state_dict is not None:
            try:
                model.load_state_dict(state_dict, strict=True)
            except RuntimeError as e:
                first = " ".join(str(e).strip().splitlines()[:3])[:400]
                raise ModelLoadError(
                    f"checkpoint {spec.weights!r} does not fit {spec.arch}: {first}"
                ) from e
        return TimmEmbedding(model) if spec.task == "embed" else model

    def list_models(self) -> list[ModelInfo]:
        try:
            timm = require_timm()
        except ConfigError:
            return [ModelInfo(name=f"(not installed: {INSTALL_HINT})", task="-", weights=())]
        return [
            ModelInfo(name=n, task="classify|embed", weights=("DEFAULT",))
            for n in timm.list_models(pretrained=True)
        ]


class TimmEmbedding(torch.nn.Module):
    """Pooled features before the classifier: ``forward_head(..., pre_logits=True)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)  # type: ignore[operator]
        out: torch.Tensor = self.model.forward_head(feats, pre_logits=True)  # type: ignore[operator]
        return torch.flatten(out, 1)


register_source(TimmSource())


def preprocess_from_data_config(data: dict[str, Any]) -> PreprocessConfig:
    """timm's eval transform (``transforms_imagenet_eval``) as batchvision preprocessing."""
    _, h, w = (int(v) for v in data["input_size"])
    crop_pct = float(data.get("crop_pct") or 0.875)
    mode = data.get("crop_mode") or "center"
    interp = str(data.get("interpolation", "bilinear"))
    if interp not in _INTERPOLATIONS:
        raise ConfigError(
            f"timm interpolation {interp!r} is not supported; batchvision resizes with "
            f"{', '.join(_INTERPOLATIONS)} (override with --interpolation)"
        )
    scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    common: dict[str, Any] = {
        "crop_size": (h, w),
        "interpolation": _INTERPOLATIONS[interp],
        "mean": tuple(data["mean"]),
        "std": tuple(data["std"]),
    }
    if mode == "squash":
        return PreprocessConfig(
            resize_size=min(scale), resize_mode="squash_crop", resize_hw=scale, **common
        )
    if mode != "center" or scale[0] != scale[1]:
        raise ConfigError(
            f"timm crop mode {mode!r} with input size {(h, w)} is not supported; "
            "batchvision does center (square inputs) and squash"
        )
    return PreprocessConfig(resize_size=scale[0], **common)


def _labels(timm: Any, model: torch.nn.Module, num_classes: int) -> tuple[str, ...]:
    subset = timm.data.infer_imagenet_subset(model)
    if subset:
        # Human-readable names ("tench, Tinca tinca"), as torchvision's categories are.
        names = timm.data.ImageNetInfo(subset).label_descriptions()
        if len(names) == num_classes:
            return tuple(str(n) for n in names)
    return tuple(f"class_{i}" for i in range(num_classes))


def _weights_location(timm: Any, arch: str) -> tuple[str, bool]:
    """Where timm downloads ``arch``'s weights from, and whether a cache-only load can be
    tried first (hub downloads can; plain URLs only when torch hub has the file)."""
    with torch.device("meta"):
        cfg = timm.create_model(arch, pretrained=False).pretrained_cfg
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants

        return constants.ENDPOINT, True
    url = str(cfg.get("url") or "")
    if not url:
        raise ConfigError(
            f"timm has no pretrained weights for {arch!r}; pass --weights PATH to a local "
            "checkpoint, or --weights random"
        )
    return url, (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def _checkpoint_num_classes(timm: Any, arch: str, path: str) -> int:
    from batchvision.models.checkpoints import (
        HEAD_PROBE_CLASSES,
        checkpoint_shapes,
        head_classes,
    )

    shapes = checkpoint_shapes(path)
    with torch.device("meta"):
        probe = timm.create_model(arch, pretrained=False, num_classes=HEAD_PROBE_CLASSES)
    return head_classes(probe, shapes, path, f"timm {arch!r}")
