"""Model registry and sources."""

from batchvision.models.registry import (
    ModelInfo,
    build_model,
    list_models,
    parse_model_name,
    register_source,
    resolve_model,
)
from batchvision.models.spec import ModelSpec

__all__ = [
    "ModelInfo",
    "ModelSpec",
    "build_model",
    "list_models",
    "parse_model_name",
    "register_source",
    "resolve_model",
]
