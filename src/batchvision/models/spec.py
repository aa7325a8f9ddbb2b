"""What a resolved model is: everything needed to build it anywhere, without a network."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from batchvision.config import PreprocessConfig, TaskName

Task = TaskName
WeightsKind = Literal["pretrained", "random", "checkpoint"]


@dataclass(frozen=True)
class TextHead:
    """``zero-shot``: the classes as text, embedded once on the driver.

    Attributes:
        prompt: ``--prompt``, with ``{}`` where each class name went.
        prompts: the texts embedded, one per class (the prompt filled with its name).
        embeddings: ``(classes, d)`` float32, L2-normalised, in the image embeddings' space.
        scores: ``softmax`` over the classes (CLIP) or ``sigmoid`` per class (SigLIP: its
            training loss scores each image-text pair on its own).
    """

    prompt: str
    prompts: tuple[str, ...]
    embeddings: np.ndarray = field(repr=False, compare=False, hash=False)
    scores: Literal["softmax", "sigmoid"] = "softmax"


@dataclass(frozen=True)
class ModelSpec:
    """A model resolved on the driver: picklable, so engines can ship it to workers.

    Attributes:
        source: registry source name, e.g. ``"torchvision"``.
        arch: architecture name within the source, e.g. ``"resnet50"``.
        weights: what the weights are: a qualified enum name
            (``"ResNet50_Weights.IMAGENET1K_V2"``), ``"random"``, or a checkpoint path.
        weights_kind: ``"pretrained"``, ``"random"`` or ``"checkpoint"``.
        num_classes: size of the classifier output.
        labels: one name per class.
        preprocess: the resolved preprocessing (weights' own, with user overrides applied).
        task: what this run asks of the model (``classify``, ``segment`` or ``embed``).
        tasks: the tasks the model supports, its natural one first (the ``--task`` default).
        seed: seed for ``random`` initialisation.
        source_config: what the source needs to build the model without a network (e.g. a
            Hugging Face config as a dict); resolved on the driver, plain picklable data.
        embedding_dim: size of the pooled features (``embed``), found on the driver.
        text_head: ``zero-shot`` only: the classes' text embeddings, made on the driver.
    """

    source: str
    arch: str
    weights: str
    weights_kind: WeightsKind
    num_classes: int
    labels: tuple[str, ...]
    preprocess: PreprocessConfig
    task: Task = "classify"
    seed: int = 0
    tasks: tuple[Task, ...] = ("classify", "embed")
    source_config: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    embedding_dim: int | None = None
    text_head: TextHead | None = field(default=None, hash=False, compare=False)

    @property
    def name(self) -> str:
        """The fully qualified model name, ``source:arch``."""
        return f"{self.source}:{self.arch}"
