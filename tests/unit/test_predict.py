"""The predictor stage: uint8 NHWC batches in, logits / top-k out, exactly as by hand."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from batchvision.errors import ConfigError
from batchvision.models.registry import load_state_dict, resolve_model
from batchvision.models.spec import ModelSpec
from batchvision.stages.device import native_bf16, resolve_device, resolve_precision
from batchvision.stages.fuse import fold_batch_norms
from batchvision.stages.predict import PredictOptions, Predictor
from batchvision.tasks.classify import label_batch, topk
from batchvision.tasks.segment import _upsample

ARCH = "resnet18"
CLASSES = 10
SIZE = 64  # small inputs keep resnet18 fast; it pools adaptively
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random resnet18 with 10 classes (logits of order 1, so tolerances bite)."""
    torch.manual_seed(7)
    model = torchvision.models.get_model(ARCH, weights=None, num_classes=CLASSES)
    path = tmp_path_factory.mktemp("predict_model") / "resnet18_10.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def spec(checkpoint: Path) -> ModelSpec:
    return resolve_model(ARCH, str(checkpoint))


@pytest.fixture(scope="module")
def hand_model(checkpoint: Path) -> torch.nn.Module:
    model = torchvision.models.get_model(ARCH, weights=None, num_classes=CLASSES)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    # Smooth-ish random images: a random low-res pattern upsampled, plus noise.
    low = rng.integers(0, 256, (6, 8, 8, 3)).repeat(8, axis=1).repeat(8, axis=2)
    noise = rng.integers(-20, 21, low.shape)
    return np.clip(low + noise, 0, 255).astype(np.uint8)


_CACHE: dict[tuple[object, ...], Predictor] = {}


def _predictor(
    spec: ModelSpec,
    state_dict: dict[str, torch.Tensor] | None = None,
    *,
    top_k: int = 3,
    channels_last: bool = True,
    precision: str = "fp32",
    fuse: bool = True,
) -> Predictor:
    """A CPU predictor; those built from the checkpoint file are shared between tests."""
    opts = PredictOptions(
        device="cpu",
        precision=precision,  # type: ignore[arg-type]
        top_k=top_k,
        channels_last=channels_last,
        fuse=fuse,
    )
    if state_dict is not None:
        return Predictor(spec, opts, state_dict)
    key = (spec, opts)
    if key not in _CACHE:
        _CACHE[key] = Predictor(spec, opts)
    return _CACHE[key]


def _by_hand(model: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div(255.0).permute(0, 3, 1, 2)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x)


def _batch(images: np.ndarray, status: list[str]) -> dict[str, np.ndarray]:
    n = len(status)
    return {
        "id": np.array([f"img{i}" for i in range(n)], dtype=object),
        "path": np.array([f"/x/img{i}.jpg" for i in range(n)], dtype=object),
        "status": np.array(status, dtype=object),
        "error": np.array([None if s == "ok" else "corrupt: bad" for s in status], dtype=object),
        "width": np.full(n, 640, dtype=np.int32),
        "height": np.full(n, 480, dtype=np.int32),
        "image": images,
    }


@pytest.mark.parametrize("channels_last", [False, True])
def test_fp32_logits_equal_model_on_hand_normalised_input(
    spec, hand_model, images, channels_last
) -> None:
    assert spec.preprocess.mean == MEAN and spec.preprocess.std == STD
    expected = _by_hand(hand_model, images)
    assert expected.std() > 0.1  # the check below is not trivially satisfied
    got = _predictor(spec, channels_last=channels_last).logits(images)
    assert got.dtype == torch.float32 and got.shape == (len(images), CLASSES)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_channels_last_on_and_off_agree(spec, images) -> None:
    a = _predictor(spec, channels_last=True)
    b = _predictor(spec, channels_last=False)
    assert next(a.model.parameters()).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a.logits(images), b.logits(images), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(topk(a, images)[0], topk(b, images)[0])


def test_batched_equals_one_by_one(spec, images) -> None:
    pred = _predictor(spec)
    whole = pred.logits(images)
    single = torch.cat([pred.logits(images[i : i + 1]) for i in range(len(images))])
    torch.testing.assert_close(whole, single, atol=1e-4, rtol=0)
    ids = topk(pred, images)[0]
    ids1 = np.concatenate([topk(pred, images[i : i + 1])[0] for i in range(len(images))])
    np.testing.assert_array_equal(ids, ids1)


def test_topk_is_softmax_of_logits(spec, images) -> None:
    pred = _predictor(spec, top_k=4)
    probs = torch.softmax(pred.logits(images), dim=1).numpy()
    ids, scores = topk(pred, images)
    assert ids.dtype == np.int32 and scores.dtype == np.float32
    assert ids.shape == scores.shape == (len(images), 4)
    np.testing.assert_array_equal(ids, np.argsort(-probs, axis=1, kind="stable")[:, :4])
    np.testing.assert_allclose(scores, np.take_along_axis(probs, ids, axis=1), atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_tensor_input_equals_numpy_input(spec, images) -> None:
    pred = _predictor(spec)
    torch.testing.assert_close(pred.logits(torch.from_numpy(images)), pred.logits(images))


def test_empty_batch_gives_zero_rows(spec) -> None:
    pred = _predictor(spec, top_k=5)
    empty = np.zeros((0, SIZE, SIZE, 3), dtype=np.uint8)
    ids, scores = topk(pred, empty)
    assert ids.shape == scores.shape == (0, 5)
    assert ids.dtype == np.int32 and scores.dtype == np.float32
    out = pred(_batch(empty, []))
    assert out["topk_ids"].shape == out["topk_scores"].shape == (0, 5)
    assert "image" not in out


def test_error_rows_get_zeros_and_do_not_affect_ok_rows(spec, images) -> None:
    pred = _predictor(spec, top_k=3)
    status = ["ok", "error", "ok", "error", "ok", "ok"]
    garbage = images.copy()
    garbage[[1, 3]] = 255  # whatever sits in error rows must not matter
    out = pred(_batch(garbage, status))
    ok = np.array([s == "ok" for s in status])
    np.testing.assert_array_equal(out["topk_ids"][~ok], 0)
    np.testing.assert_array_equal(out["topk_scores"][~ok], 0.0)
    alone_ids, alone_scores = topk(pred, images[ok])
    np.testing.assert_array_equal(out["topk_ids"][ok], alone_ids)
    np.testing.assert_allclose(out["topk_scores"][ok], alone_scores, atol=1e-6)
    # Everything else passes through untouched, the pixels are dropped.
    assert "image" not in out
    assert list(out["id"]) == [f"img{i}" for i in range(6)]
    assert list(out["status"]) == status
    np.testing.assert_array_equal(out["width"], 640)
    assert out["error"][1] == "corrupt: bad" and out["error"][0] is None


def test_all_error_batch(spec, images) -> None:
    out = _predictor(spec, top_k=2)(_batch(images[:3], ["error"] * 3))
    assert out["topk_ids"].shape == (3, 2)
    assert not out["topk_ids"].any() and not out["topk_scores"].any()


@pytest.mark.parametrize("top_k", [0, -1, CLASSES + 1, 1000])
def test_top_k_out_of_range_is_config_error(spec, top_k) -> None:
    with pytest.raises(ConfigError, match=rf"--top-k {top_k}.*1\.\.{CLASSES}"):
        _predictor(spec, top_k=top_k)


def test_top_k_equal_to_num_classes_is_valid(spec, images) -> None:
    ids, scores = topk(_predictor(spec, top_k=CLASSES), images)
    assert ids.shape == (len(images), CLASSES)
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.tile(np.arange(CLASSES), (6, 1)))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_resolve_device_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_resolve_device_cuda_without_gpu_is_config_error(device) -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device(device)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "banana", "meta", ""])
def test_resolve_device_invalid_is_config_error(device) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        resolve_device(device)


def test_resolve_precision() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p, cpu) == p  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fp64"):
        resolve_precision("fp64", cpu)  # type: ignore[arg-type]
    # int8 is a runtime's (post-training quantization), never torch's: a Predictor given
    # int8 options and plain weights refuses, naming the runtimes.
    with pytest.raises(ConfigError, match="int8 needs --runtime onnxruntime or openvino"):
        resolve_precision("int8", cpu)


def test_native_bf16_asks_the_models_gpu_not_the_current_one(monkeypatch) -> None:
    # A Volta cuda:0 (the current device) beside an Ampere cuda:1: the model's GPU decides.
    capability = {0: (7, 0), 1: (8, 0)}
    asked: list[object] = []

    def get_device_capability(device=None):  # type: ignore[no-untyped-def]
        asked.append(device)
        index = torch.device(device).index if device is not None else 0
        return capability[0 if index is None else index]

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kw: capability[0] >= (8, 0))
    assert native_bf16(torch.device("cuda:1")) is True
    assert resolve_precision("auto", torch.device("cuda:1")) == "bf16"
    assert native_bf16(torch.device("cuda:0")) is False
    assert resolve_precision("auto", torch.device("cuda:0")) == "fp32"
    assert asked == [torch.device("cuda:1")] * 2 + [torch.device("cuda:0")] * 2
    monkeypatch.setattr(torch.version, "hip", "6.2")  # ROCm GPUs run bf16 natively
    assert native_bf16(torch.device("cuda:0")) is True


def test_fp32_on_cuda_runs_on_tf32_within_the_model_call_only(monkeypatch) -> None:
    from batchvision.stages.device import autocast, uses_tf32

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    assert matmul.fp32_precision != "tf32"  # PyTorch's default: IEEE fp32 matmuls
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    # Entering the CUDA context touches no GPU: only the backends' settings.
    with autocast(torch.device("cuda:1"), "fp32"):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    assert (matmul.fp32_precision, conv.fp32_precision) == before  # restored after the call
    for device, precision in (("cpu", "fp32"), ("cuda", "bf16"), ("cuda", "fp16")):
        assert not uses_tf32(device, precision)
    with autocast(torch.device("cpu"), "fp32"):
        assert (matmul.fp32_precision, conv.fp32_precision) == before  # never on the CPU
    assert uses_tf32("cuda:0", "fp32")
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")  # NVIDIA's opt-out: IEEE fp32 throughout
    assert not uses_tf32("cuda:0", "fp32")
    with autocast(torch.device("cuda"), "fp32"):
        assert matmul.fp32_precision == before[0]


def test_bf16_predictor_is_close_to_fp32(spec, images) -> None:
    fp32 = _predictor(spec).logits(images)
    bf16 = _predictor(spec, precision="bf16")
    assert bf16.precision == "bf16"
    got = bf16.logits(images)
    assert got.dtype == torch.float32  # logits come back as fp32 whatever the compute
    assert (got - fp32).abs().max() < 0.1 * fp32.abs().max()


def test_label_batch(spec, images) -> None:
    labels = [f"thing_{i}" for i in range(CLASSES)]
    status = ["ok", "error", "ok"]
    out = label_batch(_predictor(spec, top_k=3)(_batch(images[:3], status)), labels)
    ids, scores = out["topk_ids"], out["topk_scores"]
    for i in (0, 2):
        assert out["label"][i] == labels[ids[i, 0]]
        assert out["score"][i] == pytest.approx(scores[i, 0])
        assert list(out["topk_labels"][i]) == [labels[j] for j in ids[i]]
    assert out["label"][1] is None
    assert np.isnan(out["score"][1])
    assert out["score"].dtype == np.float32
    assert out["topk_labels"].shape == (3, 3)


def test_label_batch_empty() -> None:
    batch = {
        "status": np.array([], dtype=object),
        "topk_ids": np.zeros((0, 3), np.int32),
        "topk_scores": np.zeros((0, 3), np.float32),
    }
    out = label_batch(batch, ["a", "b", "c"])
    assert len(out["label"]) == 0 and len(out["score"]) == 0
    assert out["topk_labels"].shape == (0, 3)


def test_predictor_from_spec_and_state_dict_equals_from_checkpoint(spec, images) -> None:
    """The Ray path: the driver resolves spec + weights once and ships both (pickled)."""
    state = load_state_dict(spec)
    assert state is not None and state["fc.weight"].shape == (CLASSES, 512)
    shipped_spec, shipped_state = pickle.loads(pickle.dumps((spec, state)))
    from_state = _predictor(shipped_spec, shipped_state)
    from_file = _predictor(spec)
    torch.testing.assert_close(from_state.logits(images), from_file.logits(images))
    assert from_state.model.training is False and from_file.model.training is False


def _batch_norms(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.fixture(scope="module")
def trained_bn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet18 whose BatchNorm layers hold non-trivial statistics and affine parameters,
    as a trained model's do (fresh ones are the identity, which folds to nothing)."""
    torch.manual_seed(11)
    model = torchvision.models.get_model(ARCH, weights=None, num_classes=CLASSES)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    path = tmp_path_factory.mktemp("predict_bn") / "resnet18_bn.pt"
    torch.save(model.state_dict(), path)
    return path


def test_folded_batch_norms_give_the_same_logits(trained_bn_checkpoint, images) -> None:
    spec = resolve_model(ARCH, str(trained_bn_checkpoint))
    fused = _predictor(spec, fuse=True)
    plain = _predictor(spec, fuse=False)
    assert fused.folded_batch_norms == 20 and _batch_norms(fused.model) == 0
    assert plain.folded_batch_norms == 0 and _batch_norms(plain.model) == 20
    hand = torchvision.models.get_model(ARCH, weights=None, num_classes=CLASSES)
    hand.load_state_dict(torch.load(trained_bn_checkpoint, weights_only=True))
    expected = _by_hand(hand.eval(), images)
    assert expected.std() > 0.1
    torch.testing.assert_close(plain.logits(images), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(fused.logits(images), expected, atol=1e-4, rtol=0)
    # bf16 compute: folding happens in fp32 first, so it adds no error of its own.
    fused16 = _predictor(spec, fuse=True, precision="bf16").logits(images)
    plain16 = _predictor(spec, fuse=False, precision="bf16").logits(images)
    scale = expected.abs().max()
    assert (fused16 - expected).abs().max() < 0.1 * scale
    assert (fused16 - expected).abs().max() < 2 * (plain16 - expected).abs().max() + 1e-3


class _DataDependent(torch.nn.Module):
    """Control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def test_fold_leaves_untraceable_training_and_bn_free_models_alone() -> None:
    untraceable = _DataDependent().eval()
    model, folded = fold_batch_norms(untraceable)
    assert model is untraceable and folded == 0 and _batch_norms(model) == 1
    training = torchvision.models.get_model(ARCH, weights=None, num_classes=CLASSES).train()
    model, folded = fold_batch_norms(training)
    assert model is training and folded == 0
    no_bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    assert fold_batch_norms(no_bn) == (no_bn, 0)
    # BatchNorm layers that do not follow a convolution (densenet's norm-relu-conv order)
    # stay; those that do still fold.
    model, folded = fold_batch_norms(
        torchvision.models.get_model("densenet121", weights=None).eval()
    )
    assert folded > 0 and _batch_norms(model) > 0


def test_out_of_memory_while_upsampling_halves_the_bands(spec, monkeypatch, caplog) -> None:
    import batchvision.stages.upsample as upsample_module
    import batchvision.tasks.segment as predict_module

    real = predict_module.upsample_argmax
    mib = 2**20
    tried: list[int] = []

    def short_of_memory(logits: torch.Tensor, size: tuple[int, int], max_bytes: int, out=None):
        tried.append(max_bytes)
        if max_bytes > 40 * mib:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real(logits, size, max_bytes, out=out)

    monkeypatch.setattr(predict_module, "upsample_argmax", short_of_memory)
    pred = Predictor(spec, PredictOptions(device="cpu", precision="fp32"))
    logits = torch.randn(5, 7, 9)
    expected = real(logits, (60, 80), 1 << 30)
    with caplog.at_level("WARNING", logger="batchvision.tasks.segment"):
        got = _upsample(pred, logits, (60, 80))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert tried == [256 * mib, 128 * mib, 64 * mib, 32 * mib]
    assert pred.upsample_bytes == 32 * mib  # kept: the next map goes straight to 32 MiB
    assert "retrying in bands of at most 32 MiB" in caplog.text
    torch.testing.assert_close(_upsample(pred, logits, (60, 80)), expected, rtol=0, atol=0)
    assert tried[-1] == 32 * mib and len(tried) == 5

    def never_fits(logits: torch.Tensor, size: tuple[int, int], max_bytes: int, out=None):
        tried.append(max_bytes)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(predict_module, "upsample_argmax", never_fits)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _upsample(pred, logits, (60, 80))  # halves down to the floor, then the error is real
    assert pred.upsample_bytes == upsample_module.MIN_UPSAMPLE_BYTES
    assert tried[-1] == upsample_module.MIN_UPSAMPLE_BYTES

    def broken(logits: torch.Tensor, size: tuple[int, int], max_bytes: int, out=None):
        raise ValueError("not a memory problem")

    monkeypatch.setattr(predict_module, "upsample_argmax", broken)
    pred.upsample_bytes = 64 * mib
    with pytest.raises(ValueError, match="not a memory problem"):
        _upsample(pred, logits, (60, 80))
    assert pred.upsample_bytes == 64 * mib  # other errors are not retried


# --- a GPU's fixed shapes, tested on the CPU ------------------------------------------------


def test_padded_batches_give_the_same_rows_and_one_input_shape(
    spec: ModelSpec, images: np.ndarray
) -> None:
    plain = Predictor(spec, PredictOptions(device="cpu", precision="fp32", top_k=3))
    assert not plain.pad_batches  # only on CUDA, where cuDNN's autotuner is switched on
    padded = Predictor(spec, PredictOptions(device="cpu", precision="fp32", top_k=3))
    padded.pad_batches = True
    shapes: list[tuple[int, ...]] = []
    model = padded._forward
    padded._forward = lambda x: (shapes.append(tuple(x.shape)), model(x))[1]
    want = plain.logits(images)
    got_full = padded.logits(images)  # 6 images: the largest so far
    got_last = padded.logits(images[:4])  # a last batch of 4 is run as 6
    got_one = padded.logits(images[2:3])
    torch.testing.assert_close(got_full, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_last, want[:4], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_one, want[2:3], rtol=1e-4, atol=1e-4)
    assert shapes == [(6, 3, SIZE, SIZE)] * 3
    # Within an out-of-memory limit, pieces pad to the limit, not past it.
    padded.batch_limit = 4
    torch.testing.assert_close(padded.logits(images[:5]), want[:5], rtol=1e-4, atol=1e-4)
    assert [s[0] for s in shapes[3:]] == [4, 4]


def test_the_batch_size_search_runs_uncompiled_and_unpadded(spec: ModelSpec) -> None:
    pred = Predictor(spec, PredictOptions(device="cpu", precision="fp32", top_k=3))
    pred.pad_batches = True

    def compiled(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the search compiled the model at a trial size")

    pred._forward = compiled
    search = pred.find_batch_size(start=1, limit=4, budget_s=5)
    assert [b for b, _ in search.trials][:1] == [1]
    assert pred._largest == 0  # the trials set no padding size for the run
