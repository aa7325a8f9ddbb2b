"""Hugging Face transformers vision models: ``hf:org/name`` from the hub or ``hf:/local/dir``.

Everything a worker needs is resolved on the driver: the model config and the image
processor config travel in the spec as plain dicts, and the weights are read once by
``load_state_dict``; ``build`` then needs no network and no files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from batchvision.config import Interpolation, PreprocessConfig, PreprocessOverrides
from batchvision.errors import ConfigError, ModelLoadError
from batchvision.models import hub
from batchvision.models.detectors import HFDetector
from batchvision.models.registry import ModelInfo, register_source
from batchvision.models.spec import ModelSpec, Task

INSTALL_HINT = "pip install 'batchvision[hf]'"
# PIL resampling codes used by image processors.
_RESAMPLE: dict[int, Interpolation] = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_HEADS = {"classify": "image-classification", "segment": "semantic-segmentation"}
#: What a CLIP-style dual encoder (an image and a text tower in one space) can do.
IMAGE_TEXT_TASKS: tuple[Task, ...] = ("embed", "zero-shot")
#: Prompts embedded at once on the driver (``zero-shot``).
TEXT_BATCH = 256
# ConvNeXT-style processors resize to shortest_edge / crop_pct and crop below this size.
_CROP_PCT_BELOW = 384
_HF_WEIGHTS = ("DEFAULT", "random")
_T = TypeVar("_T")


def require_transformers() -> Any:
    """The ``transformers`` module, or a one-line error with the install command."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            f"hf: models need the optional package transformers; install it: {INSTALL_HINT}"
        ) from None
    # Weights load once per run; a per-tensor progress bar on stderr is noise in batch jobs.
    transformers.utils.logging.disable_progress_bar()
    return transformers


class HuggingFaceSource:
    """Image classification, semantic segmentation, object detection and image-text
    (CLIP-style) models from transformers."""

    name = "hf"
    naming = (
        "hf:ORG/NAME from the Hugging Face hub (e.g. hf:microsoft/resnet-50, "
        "hf:nvidia/segformer-b0-finetuned-ade-512-512) or hf:/path/to/dir saved with "
        "save_pretrained; --weights DEFAULT or random"
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
        tf = require_transformers()
        if not arch:
            raise ConfigError("--model hf: needs a hub name or folder, e.g. hf:microsoft/resnet-50")
        weights = weights.strip()
        if weights not in ("DEFAULT", "random"):
            raise ConfigError(
                f"--weights {weights!r} is not valid for hf: models; choose DEFAULT (the "
                "model's own weights) or random"
            )

        def configs() -> tuple[Any, dict[str, Any]]:
            config = tf.AutoConfig.from_pretrained(arch)
            return config, tf.AutoImageProcessor.from_pretrained(arch).to_dict()

        try:
            config, processor = _from_hub(arch, configs, ConfigError)
        except ConfigError:
            raise
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load Hugging Face model {arch!r}: {_first_line(e)}") from e
        tasks = _tasks(config)
        labels: tuple[str, ...] = ()
        if tasks[0] != "embed":
            id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
            labels = tuple(id2label.get(i, f"class_{i}") for i in range(config.num_labels))
        if labels_path:
            from batchvision.models.checkpoints import read_labels

            labels = read_labels(labels_path, len(labels) or None)
        if tasks[0] == "detect":
            _processor(tf, processor)  # refused here, before any output, if it cannot
            base = detection_preprocess_from_processor(processor)
        else:
            base = preprocess_from_processor(processor)
        local = os.path.isdir(arch)
        return ModelSpec(
            source=self.name,
            arch=os.path.abspath(arch) if local else arch,
            weights="random" if weights == "random" else "pretrained",
            weights_kind="random" if weights == "random" else "pretrained",
            num_classes=len(labels),
            labels=labels,
            preprocess=overrides.apply(base),
            seed=seed,
            task=tasks[0],
            tasks=tasks,
            source_config={"config": _plain(config.to_dict()), "processor": _plain(processor)},
        )

    def load_state_dict(self, spec: ModelSpec) -> dict[str, torch.Tensor] | None:
        if spec.weights_kind == "random":
            return None
        tf = require_transformers()
        auto = _auto_class(tf, spec.tasks[0])
        try:
            model = _from_hub(spec.arch, lambda: auto.from_pretrained(spec.arch), ModelLoadError)
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"cannot load the weights of {spec.arch!r}: {_first_line(e)}; this machine may "
                "be offline: save the model with save_pretrained and pass hf:/that/folder"
            ) from e
        return {k: v.detach() for k, v in model.state_dict().items()}

    def build(
        self, spec: ModelSpec, state_dict: dict[str, torch.Tensor] | None = None
    ) -> torch.nn.Module:
        tf = require_transformers()
        model, config = self._loaded(tf, spec, state_dict)
        if _image_text(config):
            return HFImageTextModel(model, spec).eval()
        if spec.task == "detect":
            return HFDetector(model, _processor(tf, spec.source_config["processor"])).eval()
        return HFTaskModel(model, spec.task).eval()

    def _loaded(
        self, tf: Any, spec: ModelSpec, state_dict: dict[str, torch.Tensor] | None
    ) -> tuple[torch.nn.Module, Any]:
        """The transformers model of ``spec`` (its auto class) with its weights, and its
        config: built from the config in the spec, no network."""
        cfg = dict(spec.source_config["config"])
        config = tf.CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)
        auto = _auto_class(tf, spec.tasks[0])
        if state_dict is None and spec.weights_kind != "random":
            state_dict = self.load_state_dict(spec)
        with torch.random.fork_rng(devices=[]), _skip_init(tf, state_dict is not None):
            torch.manual_seed(spec.seed)
            model = auto.from_config(config)
        if state_dict is not None:
            try:
                model.load_state_dict(state_dict, strict=True)
            except RuntimeError as e:
                raise ModelLoadError(f"weights do not fit {spec.arch!r}: {_first_line(e)}") from e
        return model, config

    def encode_text(
        self, spec: ModelSpec, state_dict: dict[str, torch.Tensor] | None, texts: list[str]
    ) -> tuple[np.ndarray, str]:
        """L2-normalised text embeddings ``(len(texts), d)`` of an image-text model, and how
        its logits become scores (``softmax`` for CLIP, ``sigmoid`` for SigLIP).

        Tokenized as each model's own recipe does: SigLIP pads to the tokenizer's
        ``model_max_length`` (it was trained so, and pools the last position); CLIP pads to
        the longest text. Embedded in batches of ``TEXT_BATCH`` on the driver, once a run.
        """
        tf = require_transformers()
        try:
            tokenizer = _from_hub(
                spec.arch, lambda: tf.AutoTokenizer.from_pretrained(spec.arch), ModelLoadError
            )
        except (OSError, ValueError, ImportError) as e:
            raise ConfigError(
                f"cannot load the tokenizer of {spec.arch!r}: {_first_line(e)}"
            ) from e
        model: Any = self._loaded(tf, spec, state_dict)[0].eval()
        sigmoid = hasattr(model, "logit_bias")
        padding = {"padding": "max_length", "truncation": True} if sigmoid else {"padding": True}
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), TEXT_BATCH):
                tokens = tokenizer(
                    texts[start : start + TEXT_BATCH], return_tensors="pt", **padding
                )
                feats = model.get_text_features(**tokens)
                feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
                out.append(torch.nn.functional.normalize(feats.float(), dim=-1))
        return torch.cat(out).numpy(), "sigmoid" if sigmoid else "softmax"

    def list_models(self) -> list[ModelInfo]:
        # The hub has no offline list; describe what is accepted instead.
        return [
            ModelInfo(name="…ForImageClassification", task="classify|embed", weights=_HF_WEIGHTS),
            ModelInfo(name="…ForSemanticSegmentation", task="segment", weights=_HF_WEIGHTS),
            ModelInfo(name="…ForObjectDetection", task="detect", weights=_HF_WEIGHTS),
            ModelInfo(name="other vision backbones", task="embed", weights=_HF_WEIGHTS),
            ModelInfo(
                name="image-text models (CLIP, SigLIP)", task="embed|zero-shot", weights=_HF_WEIGHTS
            ),
        ]


class HFImageTextModel(torch.nn.Module):
    """The image side of a CLIP-style model (CLIP, SigLIP, ...): ``get_image_features``.

    ``embed``: the projected image embedding, the one that compares with text embeddings.
    ``zero-shot``: its cosine similarity with each class's text embedding, times the model's
    ``logit_scale`` (plus SigLIP's ``logit_bias``): ``logits_per_image`` as transformers
    computes it. The text tower is dropped after loading (its output travels in the spec).
    """

    model: Any  # a transformers model: get_image_features, logit_scale, logit_bias

    def __init__(self, model: torch.nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        if hasattr(model, "text_model"):
            del model.text_model
        self.model = model
        self.zero_shot = spec.task == "zero-shot"
        if self.zero_shot:
            if spec.text_head is None:
                raise ConfigError("--task zero-shot: the classes were not embedded (no --classes)")
            text = torch.from_numpy(np.ascontiguousarray(spec.text_head.embeddings))
            self.register_buffer("text", text, persistent=False)
            self.bias = hasattr(model, "logit_bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=x)
        emb: torch.Tensor = out if isinstance(out, torch.Tensor) else out.pooler_output
        if not self.zero_shot:
            return emb
        emb = emb / emb.norm(p=2, dim=-1, keepdim=True)
        text: torch.Tensor = self.get_buffer("text")
        logits = (emb @ text.t().to(emb.dtype)) * self.model.logit_scale.exp()
        if self.bias:
            logits = logits + self.model.logit_bias
        return logits


class HFTaskModel(torch.nn.Module):
    """A transformers model as a function of ``pixel_values`` returning the task's tensor.

    ``embed`` on a classifier reads the input of its ``classifier`` head (the pooled
    features, e.g. ResNet's pooler output or ViT's [CLS] token), by making the head the
    identity; a model without a head gives its ``pooler_output``.
    """

    def __init__(self, model: torch.nn.Module, task: Task) -> None:
        super().__init__()
        self.task = task
        self.pooled = task == "embed" and not hasattr(model, "classifier")
        if self.pooled and type(model).__name__.endswith("ForImageClassification"):
            raise ConfigError(
                f"--task embed: {type(model).__name__} has no `classifier` head to read "
                "features from; use --task classify"
            )
        if task == "embed" and not self.pooled:
            model.classifier = torch.nn.Identity()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        if self.pooled:
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                pooled = out.last_hidden_state.mean(dim=1)
            return torch.flatten(pooled, 1)
        logits: torch.Tensor = out.logits
        return torch.flatten(logits, 1) if self.task == "embed" else logits


register_source(HuggingFaceSource())


def _from_hub(
    arch: str, load: Callable[[], _T], error: type[ConfigError] | type[ModelLoadError]
) -> _T:
    """``load()`` from a local folder, or from the hub cache, or once from the hub when it
    answers; offline and not cached, ``error`` in one line saying what to do."""
    if os.path.isdir(arch):
        return load()
    from huggingface_hub import constants

    def offline(e: BaseException) -> Exception:
        return error(
            f"cannot load Hugging Face model {arch!r}: {hub.host(constants.ENDPOINT)} cannot "
            f"be reached (this machine may be offline) and the model is not in the local "
            f"cache ({constants.HF_HUB_CACHE}). Fix: on a connected machine, save it with "
            "save_pretrained (model and image processor) and pass hf:/that/folder, or fill "
            "that cache (HF_HUB_CACHE)"
        )

    return hub.cache_first(load, url=constants.ENDPOINT, offline=offline)


def _skip_init(tf: Any, skip: bool) -> contextlib.AbstractContextManager[Any]:
    """Skip random initialisation when every weight is loaded next (big models build
    several times faster); the strict load that follows proves nothing was left out."""
    if not skip:
        return contextlib.nullcontext()
    try:  # an internal helper of transformers: without it, initialising is only slower
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


def _image_text(config: Any) -> bool:
    """A CLIP-style dual encoder: a text and a vision tower in one config."""
    return hasattr(config, "text_config") and hasattr(config, "vision_config")


def _tasks(config: Any) -> tuple[Task, ...]:
    archs = config.architectures or []
    if _image_text(config):
        return IMAGE_TEXT_TASKS
    if any(a.endswith("ForSemanticSegmentation") for a in archs):
        return ("segment",)
    if any(a.endswith("ForObjectDetection") for a in archs):
        return ("detect",)
    if any(a.endswith("ForImageClassification") for a in archs):
        return ("classify", "embed")
    return ("embed",)


def _auto_class(tf: Any, task: Task) -> Any:
    if task == "segment":
        return tf.AutoModelForSemanticSegmentation
    if task == "classify":
        return tf.AutoModelForImageClassification
    if task == "detect":
        return tf.AutoModelForObjectDetection
    return tf.AutoModel


def preprocess_from_processor(p: dict[str, Any]) -> PreprocessConfig:
    """An image processor's config as batchvision preprocessing.

    Handles ``size`` as ``{"height", "width"}`` (resize to exactly that) or
    ``{"shortest_edge"}`` (shorter side, then ``crop_size`` when ``do_center_crop``),
    ConvNeXT's and PoolFormer's ``crop_pct``, ``resample``, ``rescale_factor``, ``do_normalize`` and
    ``image_mean``/``image_std``. Anything else is refused rather than approximated.
    """
    kind = p.get("image_processor_type", "?")
    for flag in ("do_flip_channel_order", "do_pad"):  # BGR input (MobileViT), padding
        if p.get(flag):
            raise ConfigError(f"{kind} with {flag}=True is not supported by batchvision")
    if not p.get("do_resize", True):
        raise ConfigError(f"{kind} with do_resize=False gives inputs of any size; not supported")
    size = dict(p.get("size") or {})
    resample = int(p.get("resample", 2))
    if resample not in _RESAMPLE:
        raise ConfigError(
            f"{kind}: resample={resample} is not supported; batchvision resizes with "
            "nearest (0), bilinear (2) or bicubic (3)"
        )
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if p.get("do_normalize", True):
        mean, std = _rgb(p.get("image_mean", 0.5)), _rgb(p.get("image_std", 0.5))
    common: dict[str, Any] = {
        "interpolation": _RESAMPLE[resample],
        "mean": mean,
        "std": std,
        "rescale_factor": float(p.get("rescale_factor", 1 / 255))
        if p.get("do_rescale", True)
        else 1.0,
        "crop_offset": "floor",
    }
    crop = p.get("crop_size") if p.get("do_center_crop") else None
    crop_hw = (int(crop["height"]), int(crop["width"])) if crop else None
    crop_pct = p.get("crop_pct")
    if crop_pct is not None and crop_hw is not None:
        # PoolFormer-style: the shorter side to size / crop_pct, then crop_size.
        edge = size.get("shortest_edge") or (
            size["height"] if size.get("height") == size.get("width") else None
        )
        if not edge:
            raise ConfigError(f"{kind}: crop_pct with size {size} is not supported")
        return PreprocessConfig(
            resize_size=int(int(edge) / float(crop_pct)), crop_size=crop_hw, **common
        )
    if "height" in size and "width" in size and size["height"] and size["width"]:
        hw = (int(size["height"]), int(size["width"]))
        return PreprocessConfig(
            resize_size=min(hw),
            resize_mode="squash_crop",
            resize_hw=hw,
            crop_size=crop_hw or hw,
            **common,
        )
    edge = size.get("shortest_edge")
    if not edge or size.get("longest_edge"):
        raise ConfigError(f"{kind}: size {size} is not supported (height+width or shortest_edge)")
    edge = int(edge)
    if crop_pct is not None:
        # ConvNeXT-style: shorter side to edge / crop_pct, crop edge x edge; squash from 384.
        if edge >= _CROP_PCT_BELOW:
            return PreprocessConfig(
                resize_size=edge,
                resize_mode="squash_crop",
                resize_hw=(edge, edge),
                crop_size=(edge, edge),
                **common,
            )
        return PreprocessConfig(
            resize_size=int(edge / float(crop_pct)), crop_size=(edge, edge), **common
        )
    if crop_hw is None:
        return PreprocessConfig(
            resize_size=edge, crop_size=(edge, edge), resize_mode="shorter", **common
        )
    return PreprocessConfig(resize_size=edge, crop_size=crop_hw, **common)


def detection_preprocess_from_processor(p: dict[str, Any]) -> PreprocessConfig:
    """A detection processor's config: ``shortest_edge`` + ``longest_edge`` (DETR, YOLOS;
    no crop, padded in the batch with a pixel mask) or ``height`` + ``width`` (RT-DETR);
    the rest as :func:`preprocess_from_processor` reads it."""
    size = dict(p.get("size") or {})
    rest = {**p, "do_pad": False, "do_center_crop": False}
    if size.get("shortest_edge") and size.get("longest_edge"):
        edge = int(size["shortest_edge"])
        flat = preprocess_from_processor({**rest, "size": {"height": edge, "width": edge}})
        return dataclasses.replace(
            flat,
            resize_mode="edges",
            resize_hw=None,
            crop_size=(edge, edge),
            max_size=int(size["longest_edge"]),
            # YOLOS' processors round both sides down to a multiple of its patch size.
            size_multiple=16 if str(p.get("image_processor_type", "")).startswith("Yolos") else 1,
        )
    return preprocess_from_processor(rest)


def _processor(tf: Any, config: dict[str, Any]) -> Any:
    """The image processor named in ``config``, for its ``post_process_object_detection``
    (which reads no configuration)."""
    kind = str(config.get("image_processor_type", ""))
    cls = getattr(tf, kind, None)
    if cls is None or not hasattr(cls, "post_process_object_detection"):
        raise ConfigError(f"--task detect: {kind or 'this processor'} has no object detection "
                          "post-processing")  # fmt: skip
    return cls()


def _rgb(value: Any) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    vals = [float(v) for v in value]
    return (vals[0], vals[1], vals[2]) if len(vals) == 3 else (vals[0],) * 3


def _plain(value: Any) -> Any:
    """Config dicts as plain JSON-like data, so the spec pickles and prints cleanly."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)  # IntEnum (PIL resampling) to int
    if isinstance(value, float):
        return float(value)
    return str(value)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
