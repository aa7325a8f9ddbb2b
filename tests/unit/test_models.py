"""The model registry and the torchvision source: names, weights, preprocessing, checkpoints."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
import torchvision.models as tvm

import batchvision
from batchvision.config import PreprocessConfig, PreprocessOverrides, RunConfig
from batchvision.errors import ConfigError, ModelLoadError
from batchvision.models import hub
from batchvision.models.checkpoints import read_checkpoint
from batchvision.models.registry import (
    build_model,
    list_models,
    load_state_dict,
    parse_model_name,
    resolve_model,
)
from batchvision.models.torchvision import preprocess_from_weights

CLASSES = 7


# ---------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet50", ("torchvision", "resnet50")),
        ("torchvision:resnet50", ("torchvision", "resnet50")),
        ("  resnet50 ", ("torchvision", "resnet50")),
        ("foo:bar", ("foo", "bar")),
    ],
)
def test_parse_model_name(name, expected) -> None:
    assert parse_model_name(name) == expected


def test_empty_model_name_is_config_error() -> None:
    with pytest.raises(ConfigError, match="--model is empty"):
        parse_model_name("  ")


def test_unknown_source_lists_sources() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown model source 'foo'.*valid sources: .*torchvision"
    ):
        resolve_model("foo:bar")


def test_qualified_and_bare_names_resolve_the_same() -> None:
    a = resolve_model("resnet50")
    b = resolve_model("torchvision:resnet50")
    assert a == b
    assert a.name == "torchvision:resnet50" and a.source == "torchvision"


def test_unknown_arch_suggests_and_lists() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_model("resnet5")
    msg = str(info.value)
    assert "unknown torchvision model 'resnet5'" in msg
    assert "did you mean" in msg and "resnet50" in msg.split("did you mean")[1].split(";")[0]
    valid = msg.split("valid: ")[1]
    assert {"resnet18", "mobilenet_v3_small", "vit_b_16"} <= set(valid.split(", "))


def test_detection_models_detect_and_keypoints_are_unknown() -> None:
    spec = resolve_model("fasterrcnn_resnet50_fpn")
    assert spec.tasks == ("detect",) and spec.labels[0] == "__background__"
    pre = spec.preprocess
    assert (pre.resize_mode, pre.resize_size, pre.max_size) == ("model", 800, 1333)
    ssd = resolve_model("ssd300_vgg16").preprocess
    assert (ssd.resize_mode, ssd.resize_hw, ssd.max_size) == ("model", (300, 300), None)
    # Keypoint R-CNN's output is keypoints, not a detector's.
    with pytest.raises(ConfigError, match="unknown torchvision model"):
        resolve_model("keypointrcnn_resnet50_fpn")


# ---------------------------------------------------------------------------------------
# Weights names (resolving never downloads)


def test_default_weights() -> None:
    spec = resolve_model("resnet50", "DEFAULT")
    assert spec.weights == "ResNet50_Weights.IMAGENET1K_V2"
    assert spec.weights_kind == "pretrained"
    assert spec.num_classes == 1000 and len(spec.labels) == 1000
    assert spec.labels[0] == "tench"
    assert spec.labels == tuple(tvm.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


@pytest.mark.parametrize(
    ("model", "weights", "expected"),
    [
        ("resnet50", "IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V2"),
        ("resnet50", "IMAGENET1K_V1", "ResNet50_Weights.IMAGENET1K_V1"),
        ("resnet50", "ResNet50_Weights.IMAGENET1K_V1", "ResNet50_Weights.IMAGENET1K_V1"),
        ("resnet152", "ResNet152_Weights.IMAGENET1K_V1", "ResNet152_Weights.IMAGENET1K_V1"),
        ("resnet152", "ResNet152_Weights.DEFAULT", "ResNet152_Weights.IMAGENET1K_V2"),
    ],
)
def test_weights_names(model, weights, expected) -> None:
    spec = resolve_model(model, weights)
    assert spec.weights == expected
    assert spec.arch == model and spec.weights_kind == "pretrained"


def test_weights_of_another_model_is_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_model("resnet152", "ResNet50_Weights.IMAGENET1K_V1")
    msg = str(info.value)
    assert "do not belong to 'resnet152'" in msg
    assert "ResNet152_Weights.IMAGENET1K_V1" in msg and "ResNet152_Weights.IMAGENET1K_V2" in msg


def test_unknown_weights_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_model("resnet50", "IMAGENET1K_V9")
    msg = str(info.value)
    assert "unknown weights 'IMAGENET1K_V9' for 'resnet50'" in msg
    assert "IMAGENET1K_V1" in msg and "IMAGENET1K_V2" in msg and "random" in msg


# ---------------------------------------------------------------------------------------
# Preprocessing comes from the weights


def _expected(weights: tvm.WeightsEnum) -> PreprocessConfig:
    t = weights.transforms()
    return PreprocessConfig(
        resize_size=t.resize_size[0],
        crop_size=(t.crop_size[0], t.crop_size[0]),
        interpolation=t.interpolation.value,
        mean=tuple(t.mean),
        std=tuple(t.std),
    )


def test_resnet50_default_preprocess() -> None:
    p = resolve_model("resnet50").preprocess
    assert p == PreprocessConfig(
        resize_size=232,
        crop_size=(224, 224),
        interpolation="bilinear",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )


@pytest.mark.parametrize(
    ("arch", "weights", "resize", "crop", "interp"),
    [
        ("resnet50", "IMAGENET1K_V1", 256, 224, "bilinear"),
        ("vit_b_16", "DEFAULT", 256, 224, "bilinear"),
        ("efficientnet_b3", "DEFAULT", 320, 300, "bicubic"),
        ("inception_v3", "DEFAULT", 342, 299, "bilinear"),
    ],
)
def test_preprocess_taken_from_weights(arch, weights, resize, crop, interp) -> None:
    spec = resolve_model(arch, weights)
    w = tvm.get_weight(spec.weights)
    assert spec.preprocess == _expected(w)
    assert preprocess_from_weights(w) == spec.preprocess
    p = spec.preprocess
    assert (p.resize_size, p.crop_size, p.interpolation) == (resize, (crop, crop), interp)


def test_random_weights_use_the_default_weights_preprocess() -> None:
    expected = _expected(tvm.EfficientNet_B3_Weights.DEFAULT)
    assert resolve_model("efficientnet_b3", "random").preprocess == expected


def test_overrides_apply() -> None:
    overrides = PreprocessOverrides(
        resize_size=300,
        crop_size=288,
        interpolation="bicubic",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    p = resolve_model("resnet50", overrides=overrides).preprocess
    assert p == PreprocessConfig(300, (288, 288), "bicubic", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    # A partial override keeps the weights' other values.
    p = resolve_model("resnet50", overrides=PreprocessOverrides(crop_size=200)).preprocess
    assert (p.resize_size, p.crop_size, p.interpolation) == (232, (200, 200), "bilinear")


# ---------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def resnet18_7() -> torch.nn.Module:
    torch.manual_seed(11)
    return torchvision.models.get_model("resnet18", weights=None, num_classes=CLASSES).eval()


@pytest.fixture(scope="module")
def checkpoints(resnet18_7, tmp_path_factory) -> dict[str, Path]:
    """The same 7-class resnet18 saved four ways."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("ckpts")
    state = resnet18_7.state_dict()
    paths = {
        "pt": root / "plain.pt",
        "pth": root / "wrapped.pth",
        "safetensors": root / "model.safetensors",
        "legacy": root / "legacy.pth",  # PyTorch's pre-1.6 format, which mmap cannot read
    }
    torch.save(state, paths["pt"])
    wrapped = {"module." + k: v for k, v in state.items()}
    torch.save({"epoch": 3, "state_dict": wrapped, "optimizer": {"lr": 0.1}}, paths["pth"])
    torch.save(
        {"epoch": 3, "state_dict": wrapped}, paths["legacy"], _use_new_zipfile_serialization=False
    )
    save_file({k: v.contiguous() for k, v in state.items()}, str(paths["safetensors"]))
    return paths


@pytest.mark.parametrize("kind", ["pt", "pth", "safetensors", "legacy"])
def test_checkpoint_num_classes_and_weights(kind, checkpoints, resnet18_7) -> None:
    path = checkpoints[kind]
    spec = resolve_model("resnet18", str(path))
    assert spec.weights_kind == "checkpoint"
    assert spec.weights == str(path.resolve())
    assert spec.num_classes == CLASSES
    assert spec.labels == tuple(f"class_{i}" for i in range(CLASSES))
    # resnet18's own recipe (IMAGENET1K_V1), not some generic default.
    assert spec.preprocess == _expected(tvm.ResNet18_Weights.DEFAULT)

    state = load_state_dict(spec)
    assert state is not None
    assert set(state) == set(resnet18_7.state_dict())  # unwrapped, "module." stripped
    model = build_model(spec, state)
    assert model.training is False
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), resnet18_7(x))
        # Building without a state_dict reads the checkpoint itself.
        torch.testing.assert_close(build_model(spec)(x), resnet18_7(x))


def test_checkpoint_with_labels_file(checkpoints, tmp_path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"L{i}" for i in range(CLASSES)) + "\n\n")
    spec = resolve_model("resnet18", str(checkpoints["pt"]), labels_path=str(labels))
    assert spec.labels == tuple(f"L{i}" for i in range(CLASSES))


def test_labels_count_mismatch_is_config_error(checkpoints, tmp_path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    with pytest.raises(ConfigError, match="has 3 names but the model has 7 classes"):
        resolve_model("resnet18", str(checkpoints["pt"]), labels_path=str(labels))


def test_missing_labels_file_is_config_error(checkpoints, tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read --labels"):
        resolve_model("resnet18", str(checkpoints["pt"]), labels_path=str(tmp_path / "nope.txt"))


@pytest.mark.parametrize("name", ["missing.pt", "missing.safetensors", "sub/missing.pth"])
def test_missing_checkpoint_is_config_error(tmp_path, name) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model("resnet18", str(tmp_path / name))


def test_unreadable_checkpoint_is_model_load_error(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot read checkpoint"):
        resolve_model("resnet18", str(bad))


def test_checkpoint_of_another_arch_without_matching_head(checkpoints) -> None:
    with pytest.raises(ModelLoadError, match="no classifier head for 'mobilenet_v3_small'"):
        resolve_model("mobilenet_v3_small", str(checkpoints["safetensors"]))


def test_checkpoint_of_another_arch_with_same_head_name(checkpoints) -> None:
    # resnet34 has the same `fc` head as resnet18: resolving works, reading the weights
    # (on the driver, before any output is written) says why they do not fit.
    spec = resolve_model("resnet34", str(checkpoints["pt"]))
    with pytest.raises(ModelLoadError) as info:
        load_state_dict(spec)
    msg = str(info.value)
    assert "does not fit ResNet" in msg and str(checkpoints["pt"].resolve()) in msg
    assert "Missing key" in msg
    # Building from a state_dict that skipped the check fails the same way.
    with pytest.raises(ModelLoadError, match="does not fit ResNet"):
        build_model(spec, read_checkpoint(spec.weights))


def test_checkpoint_that_does_not_fit_leaves_no_output(checkpoints, photo_dir, tmp_path) -> None:
    out = tmp_path / "out"
    config = RunConfig(
        inputs=(str(photo_dir),),
        output=str(out),
        model="resnet34",
        weights=str(checkpoints["pt"]),
        device="cpu",
        workers=0,
    )
    with pytest.raises(ModelLoadError, match="does not fit"):
        batchvision.run(config)
    assert not out.exists()  # so the corrected command can reuse the same --output


@pytest.mark.parametrize(
    ("arch", "suffix"),
    [
        ("squeezenet1_0", ".pt"),  # a convolutional head: classifier.1 is a Conv2d
        ("mnasnet0_5", ".pt"),  # refuses a state_dict without version metadata
        ("mnasnet0_5", ".safetensors"),  # ...which safetensors files never carry
        ("regnet_y_400mf", ".pth"),  # its builder cannot run on the meta device
    ],
)
def test_checkpoint_round_trip_other_architectures(arch, suffix, tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(5)
    original = torchvision.models.get_model(arch, weights=None, num_classes=CLASSES).eval()
    path = tmp_path / f"model{suffix}"
    state = original.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    spec = resolve_model(arch, str(path))
    assert spec.num_classes == CLASSES
    model = build_model(spec, load_state_dict(spec))
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = original(x)
        torch.testing.assert_close(model(x), expected)
    assert expected.std() > 0


# ---------------------------------------------------------------------------------------
# Random weights


def _params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_random_weights_are_seeded_and_warn(caplog) -> None:
    a_spec = resolve_model("mobilenet_v3_small", "random", seed=1)
    assert a_spec.weights_kind == "random" and a_spec.weights == "random"
    assert a_spec.num_classes == 1000 and a_spec.labels[0] == "tench"
    assert load_state_dict(a_spec) is None
    with caplog.at_level(logging.WARNING, logger="batchvision"):
        a = build_model(a_spec)
    assert any("RANDOM WEIGHTS" in r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    b = build_model(resolve_model("mobilenet_v3_small", "random", seed=1))
    c = build_model(resolve_model("mobilenet_v3_small", "random", seed=2))
    # Seeded building leaves the caller's global random stream where it was.
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.equal(_params(a), _params(b))
    assert not torch.equal(_params(a), _params(c))


def test_random_weights_with_labels_file(tmp_path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nfish\n")
    spec = resolve_model("resnet18", "random", labels_path=str(labels))
    assert spec.num_classes == 3 and spec.labels == ("cat", "dog", "fish")
    model = build_model(spec)
    assert model.fc.out_features == 3


def test_legacy_format_checkpoint_through_timm(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    path = tmp_path / "legacy.pth"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    spec = resolve_model("timm:resnet10t", str(path))
    assert spec.num_classes == 5
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(build_model(spec)(x), model(x))


# ---------------------------------------------------------------------------------------
# Offline: a pretrained download that cannot happen


def test_offline_pretrained_download_is_model_load_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # TORCH_HOME decides, not set_dir()

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "urlopen", offline)  # torch.hub binds its own name
    monkeypatch.setattr(hub, "reachable", lambda url: True)  # the host answers, then fails

    spec = resolve_model("resnet18", "DEFAULT")  # resolving never downloads
    assert calls == []
    with pytest.raises(ModelLoadError) as info:
        load_state_dict(spec)
    assert calls, "the download was never attempted"
    msg = str(info.value)
    expected_cache = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "ResNet18_Weights.IMAGENET1K_V1" in msg
    assert "--weights PATH" in msg
    assert str(expected_cache) in msg
    assert "name resolution" in msg
    with pytest.raises(ModelLoadError, match="--weights PATH"):
        build_model(spec)


def test_unreachable_host_is_one_error_without_a_download(monkeypatch, tmp_path, capfd) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    calls = []
    monkeypatch.setattr(torch.hub, "urlopen", lambda *a, **k: calls.append(a))
    asked = []
    monkeypatch.setattr(hub, "reachable", lambda url: asked.append(url) or False)
    spec = resolve_model("resnet18", "DEFAULT")
    with pytest.raises(ModelLoadError) as info:
        load_state_dict(spec)
    assert calls == [] and asked == [tvm.ResNet18_Weights.IMAGENET1K_V1.url]
    msg = str(info.value)
    assert "cannot download ResNet18_Weights.IMAGENET1K_V1: download.pytorch.org cannot be " in msg
    assert "--weights PATH" in msg and "--weights random" in msg
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert capfd.readouterr().err == ""  # no "Downloading:" line


def test_pretrained_weights_in_the_torch_hub_cache_need_no_network(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    weights = tvm.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "torch_home" / "hub" / "checkpoints" / Path(weights.url).name
    cache.parent.mkdir(parents=True)
    torch.manual_seed(3)
    model = tvm.resnet18(weights=None)
    torch.save(model.state_dict(), cache)

    def no_network(url: str) -> bool:
        raise AssertionError(f"asked for {url} though the file is cached")

    monkeypatch.setattr(hub, "reachable", no_network)
    spec = resolve_model("resnet18", "DEFAULT")
    state = load_state_dict(spec)
    assert state is not None
    torch.testing.assert_close(state["fc.weight"], model.state_dict()["fc.weight"])


# ---------------------------------------------------------------------------------------
# Listing


def test_list_models() -> None:
    models = list_models()
    assert list(models) == ["hf", "timm", "torchvision"]
    infos = {m.name: m for m in models["torchvision"]}
    assert infos["resnet50"].task == "classify|embed"
    assert infos["deeplabv3_mobilenet_v3_large"].task == "segment"
    assert set(infos["resnet50"].weights) == {
        "ResNet50_Weights.IMAGENET1K_V1",
        "ResNet50_Weights.IMAGENET1K_V2",
    }
    assert "MobileNet_V3_Small_Weights.IMAGENET1K_V1" in infos["mobilenet_v3_small"].weights
    assert infos["fasterrcnn_resnet50_fpn"].task == "detect"
    assert (
        len(infos)
        == len(tvm.list_models(module=tvm))
        + len(tvm.list_models(module=tvm.segmentation))
        + len(tvm.list_models(module=tvm.detection))
        - 1
    )  # keypoint R-CNN
