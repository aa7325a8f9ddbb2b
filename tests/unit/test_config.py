"""Validation of configuration values that the CLI passes through unchanged."""

from __future__ import annotations

import math

import pytest

from batchvision.config import PreprocessConfig, PreprocessOverrides, RunConfig
from batchvision.errors import ConfigError


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("std", (math.nan, math.nan, math.nan), "--std nan,nan,nan is not valid"),
        ("std", (0.2, math.inf, 0.2), "--std 0.2,inf,0.2 is not valid"),
        ("std", (0.2, 0.0, 0.2), "--std 0.2,0,0.2 is not valid"),
        ("std", (0.2, -0.1, 0.2), "--std 0.2,-0.1,0.2 is not valid"),
        ("mean", (0.5, math.nan, 0.5), "--mean 0.5,nan,0.5 is not valid"),
        ("mean", (-math.inf, 0.5, 0.5), "--mean -inf,0.5,0.5 is not valid"),
        ("std", (0.5, 0.5), "--std needs 3 values"),
    ],
)
def test_bad_mean_or_std_override_is_refused(field: str, value: tuple, needle: str) -> None:
    with pytest.raises(ConfigError, match="^" + needle.replace("+", r"\+").replace(".", r"\.")):
        PreprocessOverrides(**{field: value})


def test_good_mean_and_std_overrides_are_kept() -> None:
    o = PreprocessOverrides(mean=(0, -0.5, 1), std=(0.5, 2, 1e-3))
    assert o.mean == (0.0, -0.5, 1.0) and o.std == (0.5, 2.0, 1e-3)
    cfg = o.apply(PreprocessConfig())
    assert cfg.mean == (0.0, -0.5, 1.0) and cfg.std == (0.5, 2.0, 1e-3)


@pytest.mark.parametrize(
    ("field", "value"), [("std", (math.nan, 1, 1)), ("mean", (math.inf, 0, 0)), ("std", (1, 0, 1))]
)
def test_preprocess_config_refuses_non_finite_mean_std(field: str, value: tuple) -> None:
    # A model's own config (e.g. a Hugging Face processor file) is checked the same way.
    with pytest.raises(ConfigError, match=f"^{field} .* is not valid"):
        PreprocessConfig(**{field: value})


def test_batch_size_and_workers_default_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import batchvision.config as config

    monkeypatch.setattr(config, "usable_cores", lambda: 16)
    cfg = RunConfig(inputs=("x",), output="y", model="resnet50")
    assert cfg.batch_size is None
    assert cfg.batch_size_for("cpu") == 32
    assert cfg.batch_size_for("cuda") == "auto"  # 32 leaves a large GPU idle
    assert (
        RunConfig(inputs=("x",), output="y", model="m", batch_size=64).batch_size_for("cuda") == 64
    )
    # The model's thread and the pin-memory thread keep a core each beside a GPU.
    assert cfg.num_workers("cpu") == 16
    assert cfg.num_workers("cuda") == 14
    monkeypatch.setattr(config, "usable_cores", lambda: 2)
    assert cfg.num_workers("cuda") == 1
    assert RunConfig(inputs=("x",), output="y", model="m", workers=3).num_workers("cuda") == 3
