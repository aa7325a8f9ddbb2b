"""Ray engine options and driver-side helpers, without starting Ray."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from batchvision.config import PreprocessConfig, RunConfig, parse_concurrency
from batchvision.engines.ray import actor_resources, pool_size
from batchvision.errors import ConfigError
from batchvision.io.sources import InputItem, items_to_batch, read_batch
from batchvision.stages.preprocess import decode_batch


def _cfg(**kw: object) -> RunConfig:
    return RunConfig(inputs=("x",), output="o", model="resnet18", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", (3, 3)), ("1,4", (1, 4)), (" 2 , 2 ", (2, 2)), (5, (5, 5)), ((1, 8), (1, 8))],
)
def test_parse_concurrency(value: object, expected: tuple[int, int]) -> None:
    assert parse_concurrency(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0", "4,2", "a", "1,2,3", "", "-1,2"])
def test_parse_concurrency_errors_name_the_value(value: str) -> None:
    with pytest.raises(ConfigError, match=rf"--concurrency {value!r} is not valid; give N"):
        parse_concurrency(value)


def test_ray_options_need_the_ray_engine() -> None:
    with pytest.raises(ConfigError, match="--num-cpus only apply to --engine ray"):
        _cfg(num_cpus=2.0)
    cfg = _cfg(engine="ray", concurrency="1,3", num_gpus=0.5, ray_address="auto")
    assert cfg.concurrency == (1, 3) and cfg.num_gpus == 0.5
    with pytest.raises(ConfigError, match="--workers 2 applies to --engine local only"):
        _cfg(engine="ray", workers=2)
    with pytest.raises(ConfigError, match="no resources"):
        _cfg(engine="ray", num_cpus=0.0, num_gpus=0.0)


def test_actor_resources_default_to_a_gpu_where_there_is_one() -> None:
    assert actor_resources(_cfg(engine="ray"), {"CPU": 8, "GPU": 2}) == (1.0, 1.0)
    assert actor_resources(_cfg(engine="ray"), {"CPU": 2}) == (0.0, 1.0)
    # A runtime that runs on the CPU (onnxruntime, openvino) takes no GPU by default.
    assert actor_resources(_cfg(engine="ray"), {"CPU": 8, "GPU": 2}, cpu_runtime=True) == (0.0, 1.0)
    assert actor_resources(_cfg(engine="ray", num_cpus=3.0), {"CPU": 8}) == (0.0, 3.0)
    with pytest.raises(ConfigError, match=r"--num-gpus 1 per actor, but the cluster has 0 GPU"):
        actor_resources(_cfg(engine="ray", num_gpus=1.0), {"CPU": 2})


def test_ray_refuses_a_gpu_index_it_would_not_honour() -> None:
    # An actor sees only the GPU(s) Ray assigned it, as cuda:0: cuda:1 would fail in every
    # actor (or, were it mapped, run somewhere the user did not ask for).
    with pytest.raises(ConfigError, match=r"^--device cuda:1: Ray gives each actor its own GPU"):
        _cfg(engine="ray", device="cuda:1")
    for device in ("cuda", "cuda:0", "auto", "cpu"):
        assert _cfg(engine="ray", device=device).device == device
    assert _cfg(device="cuda:1").device == "cuda:1"  # the local engine uses that GPU


def test_actor_resources_follow_the_device() -> None:
    gpus = {"CPU": 8, "GPU": 2}
    # --device cpu reserves no GPU it would leave idle; cuda and auto take one each.
    assert actor_resources(_cfg(engine="ray", device="cpu"), gpus) == (0.0, 1.0)
    assert actor_resources(_cfg(engine="ray", device="cuda"), gpus) == (1.0, 1.0)
    assert actor_resources(_cfg(engine="ray", device="cuda:0", num_gpus=0.5), gpus) == (0.5, 1.0)
    # Ray hides the GPUs from an actor that reserves none: refused on the driver, up front.
    with pytest.raises(ConfigError, match=r"--device cuda: .*the cluster has none"):
        actor_resources(_cfg(engine="ray", device="cuda"), {"CPU": 8})
    with pytest.raises(ConfigError, match=r"--device cuda:0: .*--num-gpus 0"):
        actor_resources(_cfg(engine="ray", device="cuda:0", num_gpus=0.0), gpus)


def test_a_missing_gpu_index_names_what_is_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from batchvision.stages.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # what Ray sets in an actor given GPU 3
    seen = r"only 1 GPU\(s\) visible here \(CUDA_VISIBLE_DEVICES='3'\)"
    with pytest.raises(ConfigError, match=seen):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_pool_size_defaults() -> None:
    ray_cfg = _cfg(engine="ray")
    assert pool_size(ray_cfg, {"CPU": 2}, 0) == (1, 1)  # 2 cores: 1 actor, 2 threads
    assert pool_size(ray_cfg, {"CPU": 16}, 0) == (1, 4)
    assert pool_size(ray_cfg, {"CPU": 16, "GPU": 4}, 1) == (1, 4)
    assert pool_size(ray_cfg, {"CPU": 16, "GPU": 4}, 0.5) == (1, 8)
    assert pool_size(_cfg(engine="ray", concurrency="2"), {"CPU": 16}, 0) == (2, 2)


def test_decoder_pickles_and_matches_decode_batch(photo_dir: Path) -> None:
    bvr = pytest.importorskip("batchvision.ray")
    pre = PreprocessConfig(resize_size=64, crop_size=(56, 56))
    decoder = pickle.loads(pickle.dumps(bvr.Decoder(pre)))
    paths = sorted(str(p) for p in photo_dir.rglob("*.jpg"))[:3]
    batch = {"id": np.array(["x", "y", "z"], dtype=object), "path": np.array(paths, dtype=object)}
    got = decoder(batch)
    want = decode_batch(
        read_batch(items_to_batch([InputItem(i, p) for i, p in zip("xyz", paths, strict=True)])),
        pre,
    )
    assert got["image"].shape == (3, 56, 56, 3) and got["image"].dtype == np.uint8
    np.testing.assert_array_equal(got["image"], want["image"])
    assert got["status"].tolist() == ["ok"] * 3
    assert "_t_read" not in got  # timing columns only on request (the engine's)


def test_an_unreachable_cluster_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from batchvision.engines.ray import RayEngine

    def refuse(**kwargs: object) -> None:
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConfigError, match=r"--ray-address 'auto': cannot attach to a Ray cluster"):
        RayEngine()._connect(_cfg(engine="ray", ray_address="auto"))


def test_actor_threads() -> None:
    from batchvision.engines.ray import actor_threads

    assert actor_threads(1, 1, {"CPU": 2}, 2) == 2  # 2-core local instance, one actor
    assert actor_threads(1, 4, {"CPU": 16}, 16) == 4
    assert actor_threads(1, 1, {"CPU": 64}, 8) == 8  # no more than one node has
    assert actor_threads(1, 4, {"CPU": 32, "GPU": 4}, 8) == 8  # GPU actors decode on theirs
    assert actor_threads(3, 8, {"CPU": 8}, 8) == 3  # at least what the actor reserves
