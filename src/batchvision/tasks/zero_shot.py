"""``zero-shot``: classes named at run time, scored by an image-text model (CLIP, SigLIP).

The prompts (``--prompt`` filled with each class name) are embedded once, on the driver,
and travel to the workers in the spec (:class:`~batchvision.models.spec.TextHead`); a
worker only runs the image tower. Rows are the classification schema: softmax over the
classes for CLIP-style models, SigLIP's own sigmoid per class (its scores do not sum to 1:
each says how well the image matches that one text).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from batchvision.config import DEFAULT_PROMPT
from batchvision.errors import ConfigError
from batchvision.models.registry import encode_text
from batchvision.models.spec import TextHead
from batchvision.tasks import register_task
from batchvision.tasks.classify import LabelTask, topk_columns

if TYPE_CHECKING:
    from batchvision.config import RunConfig
    from batchvision.models.spec import ModelSpec
    from batchvision.stages.predict import Predictor

#: Longest ``--classes-file`` read (a million class names is about 20 MB).
MAX_CLASSES_FILE_BYTES = 64 * 2**20


def read_classes(config: RunConfig) -> tuple[str, ...]:
    """The class names of ``--classes`` or ``--classes-file`` (exactly one of them)."""
    if config.classes and config.classes_file:
        raise ConfigError("--classes and --classes-file exclude each other; give one")
    if config.classes_file:
        try:
            with open(config.classes_file, "rb") as f:
                data = f.read(MAX_CLASSES_FILE_BYTES + 1)
            if len(data) > MAX_CLASSES_FILE_BYTES:
                raise ConfigError(f"--classes-file {config.classes_file!r} is over 64 MB")
            text = data.decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--classes-file {config.classes_file!r}: {e}") from e
        names = tuple(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    else:
        names = config.classes
    if not names:
        raise ConfigError(
            "--task zero-shot needs class names: --classes 'cat,dog,car' or --classes-file FILE"
        )
    return names


def prompts(prompt: str, classes: tuple[str, ...]) -> tuple[str, ...]:
    """``prompt`` with ``{}`` filled by each class name."""
    if prompt.count("{}") != 1:
        raise ConfigError(f"--prompt {prompt!r} must hold {{}} once, where the class name goes")
    return tuple(prompt.replace("{}", name) for name in classes)


def with_classes(
    spec: ModelSpec,
    state_dict: dict[str, torch.Tensor] | None,
    classes: tuple[str, ...],
    prompt: str = DEFAULT_PROMPT,
) -> ModelSpec:
    """``spec`` (an image-text model) set up to score ``classes``: their prompts embedded
    once, here, by the model's text tower; the labels are the class names."""
    if not classes:
        raise ConfigError("--task zero-shot needs at least one class name")
    texts = prompts(prompt, classes)
    embeddings, scores = encode_text(spec, state_dict, list(texts))
    head = TextHead(
        prompt=prompt,
        prompts=texts,
        embeddings=np.asarray(embeddings, dtype=np.float32),
        scores="sigmoid" if scores == "sigmoid" else "softmax",
    )
    return dataclasses.replace(spec, labels=classes, num_classes=len(classes), text_head=head)


@torch.inference_mode()
def class_scores(predictor: Predictor, images: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k class ids and scores: softmax over the classes, or sigmoid per class (on the
    model's device)."""
    head = predictor.spec.text_head
    logits = predictor.logits(images)
    if head is not None and head.scores == "sigmoid":
        scores = torch.sigmoid(logits)
    else:
        scores = torch.softmax(logits, dim=1)
    top, ids = scores.topk(predictor.top_k, dim=1)
    return ids.to(torch.int32), top


@register_task
class ZeroShot(LabelTask):
    """The classification schema over classes given as text."""

    name = "zero-shot"
    options = (
        ("classes", "--classes"),
        ("classes_file", "--classes-file"),
        ("prompt", "--prompt"),
    )
    resume_fields = ("prompt", "class_scores")

    def prepare(
        self, spec: ModelSpec, config: RunConfig, state_dict: dict[str, torch.Tensor] | None
    ) -> ModelSpec:
        return with_classes(spec, state_dict, read_classes(config), config.prompt)

    def setup(self, predictor: Predictor) -> None:
        # Fewer classes than --top-k (e.g. 'cat,dog,car' with the default 5): all of them.
        predictor.top_k = min(predictor.top_k, predictor.spec.num_classes)

    def predict(self, predictor: Predictor, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return topk_columns(batch, predictor.top_k, lambda im: class_scores(predictor, im))

    def manifest_fields(self, spec: ModelSpec, config: RunConfig) -> dict[str, Any]:
        head = spec.text_head
        return {
            "labels": list(spec.labels),
            "prompt": head.prompt if head else None,
            "class_scores": head.scores if head else None,
        }
