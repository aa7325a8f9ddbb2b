"""What a bench run measures: a frozen, validated config, and the option parsing behind it.

``--smoke`` only changes defaults (a tiny image set, one batch size, the local engine and
the two cheapest seed strategies); an option given explicitly always wins.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields
from typing import Any

from batchvision.config import ENGINES, PRECISIONS, RUNTIMES, TORCH_PRECISIONS, Precision
from batchvision.errors import ConfigError

#: The seeds' five ways of running inference on Ray (shared/seeds/004), in the seeds' order.
STRATEGIES: tuple[str, ...] = ("sequential", "ray_tasks", "ray_actors", "actor_pool", "ray_data")
#: Strategies that need Ray installed.
RAY_STRATEGIES = frozenset(STRATEGIES) - {"sequential"}

DEFAULT_IMAGE_SIZE = (500, 375)  # Imagenette-like (width, height)

#: Defaults of a full run and of ``--smoke`` for the options whose default depends on it.
FULL_DEFAULTS: dict[str, Any] = {
    "synthetic": 1000,
    "batch_sizes": (32,),
    "engines": ENGINES,
    "strategies": STRATEGIES,
    "parity_images": 32,
    "warmup": 2,
    "image_size": DEFAULT_IMAGE_SIZE,
    "memory_sizes": (1000, 20000),
}
SMOKE_DEFAULTS: dict[str, Any] = {
    "synthetic": 24,
    "batch_sizes": (8,),
    "engines": ("local",),
    "strategies": ("sequential", "ray_data"),
    "parity_images": 8,
    "warmup": 1,
    "image_size": (320, 240),
    "memory_sizes": (40, 120),
}


@dataclass(frozen=True)
class BenchConfig:
    """One ``batchvision bench`` invocation; validated on construction.

    Exactly one of ``input`` (a local folder, image file list or manifest) and
    ``synthetic`` (generate that many photo-like JPEGs) gives the images.
    """

    model: str
    input: str | None = None
    synthetic: int | None = None
    weights: str = "DEFAULT"
    labels: str | None = None
    batch_sizes: tuple[int, ...] = FULL_DEFAULTS["batch_sizes"]
    engines: tuple[str, ...] = FULL_DEFAULTS["engines"]
    strategies: tuple[str, ...] = FULL_DEFAULTS["strategies"]
    precision: Precision = "auto"
    #: Extra rows per runtime: ``RUNTIME[:PRECISION]`` (e.g. ``openvino:int8``), each
    #: measured model-only and end to end (local engine), with its parity figure.
    runtimes: tuple[str, ...] = ()
    device: str = "auto"
    images: int | None = None
    workers: int | None = None
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    parity_images: int = 32
    warmup: int = 2
    seed: int = 0
    memory_check: bool = False
    memory_sizes: tuple[int, ...] = FULL_DEFAULTS["memory_sizes"]
    out: str = "bench-output"
    smoke: bool = False
    #: Seconds between memory samples of a measurement's process tree. A sample reads every
    #: process's smaps_rollup: about 20 ms of CPU for a 2 GB tree, so sampling every 0.25 s
    #: took ~4% of a 2-core machine away from the measurement itself.
    mem_interval: float = 1.0
    #: Longest a single measurement may run (seconds).
    timeout: float = 3600.0

    def __post_init__(self) -> None:
        if (self.input is None) == (self.synthetic is None):
            raise ConfigError(
                "give either INPUT (a folder of images) or --synthetic N (generate N images), "
                "not both or neither"
            )
        if self.input is not None and "://" in self.input:
            raise ConfigError(
                f"bench reads local images only (the seed strategies open files), "
                f"not {self.input!r}; copy a sample to a local folder"
            )
        if not self.model:
            raise ConfigError("--model is required")
        for name, value in (("--synthetic", self.synthetic), ("--images", self.images)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        _check_sizes("--batch-sizes", self.batch_sizes)
        _check_sizes("--memory-sizes", self.memory_sizes)
        _check_subset("--engines", self.engines, ENGINES)
        _check_subset("--strategies", self.strategies, STRATEGIES)
        if self.precision not in TORCH_PRECISIONS:
            raise ConfigError(
                f"--precision {self.precision!r} is not valid; choose one of: "
                f"{', '.join(TORCH_PRECISIONS)} (int8 is a --runtimes entry's, e.g. "
                "openvino:int8)"
            )
        for entry in self.runtimes:
            given = runtime_params(entry)
            if given["runtime"] not in RUNTIMES or given["precision"] not in PRECISIONS:
                raise ConfigError(
                    f"--runtimes: {entry!r} is not RUNTIME[:PRECISION] with RUNTIME one of "
                    f"{', '.join(RUNTIMES)} and PRECISION one of {', '.join(PRECISIONS)}"
                )
        if len(set(self.runtimes)) != len(self.runtimes):
            raise ConfigError(f"--runtimes {','.join(self.runtimes)} repeats a value")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.parity_images < 0 or self.warmup < 0:
            raise ConfigError("--parity-images and --warmup must be >= 0")
        if min(self.image_size) < 16:
            raise ConfigError(f"--image-size must be at least 16x16, got {self.image_size}")
        if not self.memory_check and not (self.engines or self.strategies):
            raise ConfigError("nothing to measure: give --engines or --strategies")
        if self.mem_interval <= 0 or self.timeout <= 0:
            raise ConfigError("the memory interval and the timeout must be > 0")

    @property
    def uses_ray(self) -> bool:
        return not self.memory_check and (
            "ray" in self.engines or bool(RAY_STRATEGIES & set(self.strategies))
        )


def runtime_params(entry: str) -> dict[str, str]:
    """``RUNTIME[:PRECISION]`` as measurement parameters (precision ``auto`` if not given)."""
    runtime, _, precision = entry.partition(":")
    return {"runtime": runtime, "precision": precision or "auto"}


def parse_ints(name: str, value: str | None) -> tuple[int, ...] | None:
    """``"8,32,128"`` -> ``(8, 32, 128)``; ``None`` stays ``None`` (the default applies)."""
    if value is None:
        return None
    try:
        nums = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"{name} {value!r} is not comma-separated whole numbers, e.g. 8,32,128"
        ) from None
    if not nums:
        raise ConfigError(f"{name} is empty; give comma-separated whole numbers, e.g. 8,32,128")
    return nums


def parse_names(name: str, value: str | None, valid: tuple[str, ...]) -> tuple[str, ...] | None:
    """``"a,b"`` -> ``("a", "b")``; ``all`` is every valid name, ``none`` is none."""
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if names == ("all",):
        return valid
    if names in ((), ("none",)):
        return ()
    _check_subset(name, names, valid)
    return names


def parse_size(value: str | None) -> tuple[int, int] | None:
    """``"500x375"`` -> ``(500, 375)`` (width, height)."""
    if value is None:
        return None
    w, sep, h = value.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(w), int(h)
    except ValueError:
        raise ConfigError(f"--image-size {value!r} is not WIDTHxHEIGHT, e.g. 500x375") from None


def make_config(*, smoke: bool = False, **options: Any) -> BenchConfig:
    """A BenchConfig from CLI-style options: ``None`` means "not given", so the default of a
    full run (or of ``--smoke``) applies; ``--synthetic``'s default applies only without INPUT.
    """
    known = {f.name for f in fields(BenchConfig)}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown bench options: {sorted(unknown)}")
    defaults = SMOKE_DEFAULTS if smoke else FULL_DEFAULTS
    given = {k: v for k, v in options.items() if v is not None}
    for key, value in defaults.items():
        if key == "synthetic" and given.get("input") is not None:
            continue
        given.setdefault(key, value)
    if smoke and given.get("input") is not None:
        given.setdefault("images", SMOKE_DEFAULTS["synthetic"])
    return BenchConfig(smoke=smoke, **given)


def check_installed(config: BenchConfig) -> None:
    """Fail before any work when an optional dependency the run needs is missing."""
    needs = [("matplotlib", "bench")]
    if config.uses_ray:
        needs.append(("ray", "ray"))
    for module, extra in needs:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"batchvision bench needs {module} here; install it with "
                f"pip install 'batchvision[{extra}]'"
            )


def _check_sizes(name: str, values: tuple[int, ...]) -> None:
    if not values:
        raise ConfigError(f"{name} is empty; give comma-separated whole numbers >= 1")
    bad = [v for v in values if v < 1]
    if bad:
        raise ConfigError(f"{name}: every value must be >= 1, got {bad[0]}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{name} {','.join(map(str, values))} repeats a value")


def _check_subset(name: str, values: tuple[str, ...], valid: tuple[str, ...]) -> None:
    bad = [v for v in values if v not in valid]
    if bad:
        raise ConfigError(
            f"{name}: {bad[0]!r} is not valid; choose from {', '.join(valid)} "
            "(comma-separated), all or none"
        )
    if len(set(values)) != len(values):
        raise ConfigError(f"{name} {','.join(values)} repeats a value")
