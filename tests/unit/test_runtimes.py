"""--runtime and --precision int8: choosing the runtime and precision, missing packages,
the agreement measure, and the export and its cache (tiny models only)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from batchvision.config import PreprocessOverrides, RunConfig
from batchvision.errors import ConfigError
from batchvision.models.registry import build_model, load_state_dict, resolve_model
from batchvision.runtimes import install_hint, resolve_runtime
from batchvision.runtimes.export import Exported, weights_digest
from batchvision.runtimes.prepare import first_images, prepare, resolve_precision
from batchvision.runtimes.quantize import agreement
from tests.conftest import run_cli, tiny_config, tiny_run_args

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

SIZE = 64  # model input side: small exports, fast sessions


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh export cache for this test (never ~/.cache)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("BATCHVISION_CACHE_DIR", str(folder))
    return folder


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError


def _tiny(photo_dir: Path, tmp_path: Path, tiny: tuple[Path, Path], **kw: object) -> RunConfig:
    pre = PreprocessOverrides(resize_size=SIZE, crop_size=SIZE)
    return tiny_config(photo_dir, tmp_path / "out", tiny, preprocess=pre, **kw)


def _spec(config: RunConfig):  # type: ignore[no-untyped-def]
    return resolve_model(
        config.model, config.weights, labels_path=config.labels,
        overrides=config.preprocess, seed=config.seed, task=config.task,
    )  # fmt: skip


# --- resolve_precision / RunConfig ----------------------------------------------------------


def test_resolve_precision_choices() -> None:
    with pytest.raises(ConfigError, match="--runtime onnxruntime or openvino"):
        resolve_precision("torch", "int8", native_bf16=True)
    assert resolve_precision("torch", "fp16", native_bf16=False) == "fp16"
    assert resolve_precision("onnxruntime", "auto", native_bf16=True) == "fp32"
    assert resolve_precision("onnxruntime", "auto", native_bf16=False) == "fp32"
    assert resolve_precision("openvino", "auto", native_bf16=True) == "bf16"
    assert resolve_precision("openvino", "auto", native_bf16=False) == "fp32"
    assert resolve_precision("openvino", "bf16", native_bf16=False) == "bf16"
    assert resolve_precision("onnxruntime", "int8", native_bf16=False) == "int8"
    assert resolve_precision("openvino", "int8", native_bf16=True) == "int8"
    for bad in ("bf16", "fp16"):
        with pytest.raises(ConfigError) as e:
            resolve_precision("onnxruntime", bad, native_bf16=True)
        assert f"--precision {bad}" in str(e.value)
        assert "choose auto, fp32 or int8" in str(e.value)
    with pytest.raises(ConfigError, match="choose auto, fp32, bf16 or int8"):
        resolve_precision("openvino", "fp16", native_bf16=True)


def test_runconfig_refuses_int8_on_torch_and_bad_agreement() -> None:
    with pytest.raises(ConfigError, match="--precision int8 needs --runtime"):
        RunConfig(inputs=("x",), output="o", model="resnet18", runtime="torch", precision="int8")
    with pytest.raises(ConfigError, match="--min-agreement"):
        RunConfig(inputs=("x",), output="o", model="resnet18", min_agreement=1.5)
    with pytest.raises(ConfigError, match="--runtime"):
        RunConfig(inputs=("x",), output="o", model="resnet18", runtime="tensorrt")  # type: ignore[arg-type]
    ok = RunConfig(
        inputs=("x",), output="o", model="resnet18", runtime="openvino", precision="int8"
    )
    assert (ok.calibration_images, ok.agreement_images, ok.min_agreement) == (300, 200, 0.99)


# --- resolve_runtime and missing packages ---------------------------------------------------


def test_resolve_runtime_installed() -> None:
    assert resolve_runtime("onnxruntime", "cpu") == "onnxruntime"
    assert resolve_runtime("openvino", "cpu") == "openvino"
    assert resolve_runtime("torch", "cuda") == "torch"
    assert resolve_runtime("auto", "cpu") == "openvino"  # the fastest installed first
    assert resolve_runtime("auto", "cuda") == "torch"
    with pytest.raises(ConfigError, match="not valid"):
        resolve_runtime("tensorrt", "cpu")


def test_named_runtime_on_cuda_names_torch() -> None:
    for runtime in ("onnxruntime", "openvino"):
        with pytest.raises(ConfigError) as e:
            resolve_runtime(runtime, "cuda")
        assert "--runtime torch" in str(e.value) and "cuda" in str(e.value)


def test_missing_runtime_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert install_hint("onnxruntime") == "pip install 'batchvision[onnx]'"
    assert install_hint("openvino") == "pip install 'batchvision[openvino]'"
    _hide(monkeypatch, "openvino")
    with pytest.raises(ConfigError) as e:
        resolve_runtime("openvino", "cpu")
    assert "pip install 'batchvision[openvino]'" in str(e.value)
    assert resolve_runtime("auto", "cpu") == "onnxruntime"  # the next installed one
    assert resolve_runtime("onnxruntime", "cpu") == "onnxruntime"

    _hide(monkeypatch, "onnxruntime")
    with pytest.raises(ConfigError) as e:
        resolve_runtime("onnxruntime", "cpu")
    assert "pip install 'batchvision[onnx]'" in str(e.value)
    assert "--runtime torch" in str(e.value)
    assert resolve_runtime("auto", "cpu") == "torch"  # nothing else is installed
    assert resolve_runtime("torch", "cpu") == "torch"


def test_missing_nncf_for_openvino_int8(
    photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path, cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    _hide(monkeypatch, "nncf")
    config = _tiny(photo_dir, tmp_path, tiny_checkpoint, runtime="openvino", precision="int8",
                   calibration_images=4, agreement_images=4)  # fmt: skip
    spec = _spec(config)
    with pytest.raises(ConfigError) as e:
        prepare(config, spec, load_state_dict(spec), "cpu", False)
    assert "nncf" in str(e.value) and "pip install 'batchvision[openvino]'" in str(e.value)


def test_cli_missing_package_is_one_line(
    photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path, cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A CLI run with onnxruntime unimportable (a package that raises ImportError first on
    the path): exit 2, one line naming the install command, the output never made."""
    hide = tmp_path / "hide" / "onnxruntime"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text('raise ImportError("hidden by a test")\n')
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(hide.parent), path) if p))
    out = tmp_path / "out"
    proc = run_cli(*tiny_run_args(photo_dir, out, tiny_checkpoint, "--runtime", "onnxruntime"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "pip install 'batchvision[onnx]'" in lines[0] and "hidden by a test" in lines[0]
    assert not out.exists()
    assert not cache_dir.exists()  # refused before any export


# --- agreement ------------------------------------------------------------------------------


def test_agreement_classify() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(200, 7)).astype(np.float32)
    assert agreement("classify", reference, reference.copy()) == 1.0
    other = reference + rng.normal(scale=1e-6, size=reference.shape).astype(np.float32)
    top = reference.argmax(1)
    changed = rng.choice(200, size=13, replace=False)
    other[changed, (top[changed] + 1) % 7] = reference[changed].max(1) + 1.0  # new argmax
    assert (other.argmax(1) != top).sum() == 13
    assert agreement("classify", reference, other) == pytest.approx(1 - 13 / 200)
    assert agreement("classify", reference[:0], other[:0]) == 1.0


def test_agreement_segment_counts_pixels() -> None:
    reference = np.zeros((2, 3, 4, 5), np.float32)
    reference[:, 0] = 1.0  # class 0 everywhere
    other = reference.copy()
    other[0, 2, 1, :] = 5.0  # 5 of 40 pixels become class 2
    assert agreement("segment", reference, other) == pytest.approx(35 / 40)


def test_agreement_embed_is_mean_cosine() -> None:
    reference = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 2.0]], np.float32)
    other = np.array([[1.0, 1.0], [6.0, 8.0], [0.0, -1.0]], np.float32)
    expected = (1 / np.sqrt(2) + 1.0 - 1.0) / 3
    assert agreement("embed", reference, other) == pytest.approx(expected, abs=1e-9)
    assert agreement("embed", reference, reference * 0.5) == pytest.approx(1.0)
    # an embedding int8 collapsed to zeros is no agreement; zeros on both sides are
    collapsed = reference.copy()
    collapsed[1] = 0.0
    assert agreement("embed", reference, collapsed) == pytest.approx(2 / 3)
    assert agreement("embed", np.zeros((2, 3)), np.zeros((2, 3))) == 1.0


# --- export, its cache and first_images -----------------------------------------------------


def test_weights_digest() -> None:
    torch.manual_seed(0)
    weights = {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "bn.num_batches_tracked": torch.tensor(7),  # 0-d int64, as every BatchNorm has
        "half": torch.randn(5).to(torch.bfloat16),
    }
    base = weights_digest(weights)
    assert base == weights_digest({k: v.clone() for k, v in reversed(weights.items())})
    assert weights_digest(None) == "none"
    changed = {k: v.clone() for k, v in weights.items()}
    changed["conv.weight"][1, 2, 0, 1] += 1e-3
    assert weights_digest(changed) != base
    tracked = {**weights, "bn.num_batches_tracked": torch.tensor(8)}
    assert weights_digest(tracked) != base
    renamed = {("x." + k if k == "half" else k): v for k, v in weights.items()}
    assert weights_digest(renamed) != base
    reshaped = {**weights, "conv.weight": weights["conv.weight"].reshape(4, 27)}
    assert weights_digest(reshaped) != base


def test_export_cache_and_parity_with_torch(
    photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path, cache_dir: Path
) -> None:
    from batchvision.runtimes.sessions import load

    config = _tiny(photo_dir, tmp_path, tiny_checkpoint, runtime="onnxruntime", precision="fp32")
    spec = _spec(config)
    weights = load_state_dict(spec)
    first = prepare(config, spec, weights, "cpu", False)
    assert isinstance(first, Exported)
    assert (first.runtime, first.precision) == ("onnxruntime", "fp32")
    assert first.record["export_cached"] is False
    assert (cache_dir / "exports" / first.key / "model.onnx").read_bytes() == first.files[
        "model.onnx"
    ]
    second = prepare(config, spec, weights, "cpu", False)
    assert second is not None and second.record["export_cached"] is True
    assert second.key == first.key and second.files == first.files
    # openvino reads the same ONNX file: the same export, from the cache
    ov = prepare(
        _tiny(photo_dir, tmp_path, tiny_checkpoint, runtime="openvino", precision="fp32"),
        spec, weights, "cpu", False,
    )  # fmt: skip
    assert ov is not None and ov.runtime == "openvino" and ov.key == first.key
    assert ov.record["export_cached"] is True

    other = {k: v.clone() for k, v in weights.items()}
    other["classifier.3.weight"][0, 0] += 0.5
    third = prepare(config, spec, other, "cpu", False)
    assert third is not None and third.key != first.key
    assert third.record["export_cached"] is False
    unfused = prepare(
        _tiny(photo_dir, tmp_path, tiny_checkpoint, runtime="onnxruntime", precision="fp32",
              fuse=False),
        spec, weights, "cpu", False,
    )  # fmt: skip
    assert unfused is not None and unfused.key != first.key
    assert prepare(_tiny(photo_dir, tmp_path, tiny_checkpoint), spec, weights, "cpu", False) is None

    # The exported graph takes the uint8 NHWC batch and gives the torch model's logits.
    _, images = first_images(config, spec, 6)
    assert images.shape == (6, SIZE, SIZE, 3) and images.dtype == np.uint8
    got = load(first, threads=1)(images)
    model = build_model(spec, weights).eval()
    pre = spec.preprocess
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() * pre.rescale_factor
    x = (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        want = model(x).numpy()
    assert got.shape == want.shape == (6, 10)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert len(set(want.argmax(1).tolist())) > 1  # images are told apart: the check can fail
    changed = load(third, threads=1)(images)
    assert not np.allclose(changed[:, 0], got[:, 0], atol=1e-3)


def test_first_images_in_input_order(
    photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    bad = tmp_path / "in" / "a_broken.jpg"
    bad.write_bytes(b"not a jpeg")
    for p in sorted(photo_dir.rglob("*.jpg"))[:5]:
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    config = _tiny(tmp_path / "in", tmp_path, tiny_checkpoint)
    spec = _spec(config)
    ids, images = first_images(config, spec, 3)
    names = sorted(p.name for p in (tmp_path / "in").iterdir() if p != bad)
    assert ids == names[:3]  # the undecodable first file is passed over
    assert images.shape == (3, SIZE, SIZE, 3)
    ids, images = first_images(config, spec, 50)  # fewer there than asked
    assert len(ids) == len(images) == 5


def test_model_that_cannot_export_is_one_clear_error(
    photo_dir: Path, tiny_checkpoint: tuple[Path, Path], tmp_path: Path, cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """torch's exporter failing (an operator ONNX lacks, say) is a ConfigError naming the
    model, the cause and --runtime torch; nothing is cached."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Exporting the operator 'aten::made_up' to ONNX is not supported.\n"
                           "more detail on the next line")  # fmt: skip

    monkeypatch.setattr(torch.onnx, "export", refuse)
    config = _tiny(photo_dir, tmp_path, tiny_checkpoint, runtime="onnxruntime", precision="fp32")
    spec = _spec(config)
    with pytest.raises(ConfigError) as err:
        prepare(config, spec, load_state_dict(spec), "cpu", False)
    message = str(err.value)
    assert "cannot be exported to ONNX" in message and spec.name in message
    assert "aten::made_up" in message and "more detail" not in message
    assert message.endswith("use --runtime torch")
    assert not (cache_dir / "exports").exists() or not any((cache_dir / "exports").iterdir())


def test_export_loads_where_the_cache_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose cache folder cannot be written (a file where the folder should be)
    still loads the export, from a temporary folder."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("BATCHVISION_CACHE_DIR", str(blocker))
    exported = Exported("onnxruntime", "fp32", "k" * 32, {"model.onnx": b"bytes"})
    folder = exported.materialize()
    assert (folder / "model.onnx").read_bytes() == b"bytes"
    assert not str(folder).startswith(str(blocker))


def test_a_second_writer_of_one_export_keeps_the_first(cache_dir: Path) -> None:
    """Two processes exporting the same model race to the same cache key: the loser's
    rename fails on the winner's complete folder, which stays whole and is used."""
    from batchvision.runtimes.export import read_cached, write_cache

    key = "a" * 32
    write_cache(key, {"model.onnx": b"first"})
    write_cache(key, {"model.onnx": b"second"})  # the race's loser: no error
    assert read_cached(key) == {"model.onnx": b"first"}
    leftovers = [p.name for p in (cache_dir / "exports").iterdir() if p.name != key]
    assert leftovers == []  # the loser's temporary folder is gone
    exported = Exported("onnxruntime", "fp32", key, {"model.onnx": b"second"})
    assert (exported.materialize() / "model.onnx").read_bytes() == b"first"


def test_export_key_of_a_zero_shot_model_follows_its_prompts() -> None:
    """The class embeddings are constants of a zero-shot graph: other classes (or another
    prompt) are another export; the same prompts by the same weights are the same one."""
    import dataclasses

    from batchvision.models.registry import resolve_model
    from batchvision.models.spec import TextHead
    from batchvision.runtimes.export import cache_key

    spec = resolve_model("mobilenet_v3_small", "random")

    def key(prompts: tuple[str, ...], fill: float) -> str:
        emb = np.full((len(prompts), 4), fill, np.float32)
        head = TextHead(prompt="{}", prompts=prompts, embeddings=emb)
        return cache_key(dataclasses.replace(spec, text_head=head), "w", {})

    assert key(("cat", "dog"), 0.0) == key(("cat", "dog"), 1.0)
    assert key(("cat", "dog"), 0.0) != key(("cat", "car"), 0.0)
    assert key(("cat", "dog"), 0.0) != cache_key(spec, "w", {})
