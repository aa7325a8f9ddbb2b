"""What a resolved model is: everything needed to build it anywhere, without a network."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from batchvision.config import PreprocessConfig, TaskName

Task = TaskName
WeightsKind = Literal["pretrained", "random", "checkpoint"]


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

    @property
    def name(self) -> str:
        """The fully qualified model name, ``source:arch``."""
        return f"{self.source}:{self.arch}"
