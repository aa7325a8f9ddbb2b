"""Engines decide where the stages run."""

from batchvision.engines.base import Engine, EngineResult, Job, ProgressUpdate, get_engine

__all__ = ["Engine", "EngineResult", "Job", "ProgressUpdate", "get_engine"]
