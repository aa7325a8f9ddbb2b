"""Parity of the new tasks and sources against what a user would write by hand.

Every model is a tiny random-weight model built from its config, saved to a temporary
folder and loaded back by path, so the real loading code runs. Random-weight outputs are
nearly the same for every image; classification and embeddings are therefore compared
*centred* on the reference's mean over images, and the segmentation heads are given large
weights so that class maps have several classes. Wrong pipelines (swapped channels, no
normalisation) are scored with the same metric and must come out clearly lower, which
shows each check can fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

import batchvision
from batchvision.config import PreprocessOverrides, RunConfig
from batchvision.demo import synth
from batchvision.tasks.segment import decode_mask
from tests.task_models import SEG_CLASSES, save_tiny_segformer

tf = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

CLS_CLASSES = 10
SEG_PASS = 0.97  # pixel agreement, any valid resize
SEG_PASS_SAME_RESIZE = 0.99  # pixel agreement, the processor's own (Pillow) resize
COS_PASS = 0.99  # centred cosine of log-probabilities
EMB_PASS = 0.999  # centred cosine of embeddings
WRONG_BELOW = 0.9  # what a wrong pipeline must stay under (all metrics)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 photo-like JPEGs of varied sizes and aspect ratios."""
    root = tmp_path_factory.mktemp("task_images")
    rng = np.random.default_rng(4321)
    for i in range(12):
        w, h = int(rng.integers(100, 600)), int(rng.integers(100, 600))
        synth.photo_like(rng, (w, h)).save(root / f"img_{i:02d}.jpg", quality=90)
    return root


def _pil(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _run(images: Path, out: Path, model: str, **kwargs: object) -> list[dict[str, object]]:
    config = RunConfig(
        inputs=(str(images),),
        output=str(out),
        model=model,
        workers=0,
        precision="fp32",
        draft=False,
        **kwargs,  # type: ignore[arg-type]
    )
    summary = batchvision.run(config)
    assert summary.error == 0 and summary.ok == len(list(images.glob("*.jpg")))
    return sorted(pq.read_table(out).to_pylist(), key=lambda r: str(r["id"]))


def _calibrate_bn(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Batch-norm statistics from real-looking inputs, so activations do not vanish."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def _calibration_batch(size: int = 96) -> torch.Tensor:
    rng = np.random.default_rng(7)
    to_tensor = torchvision.transforms.functional.to_tensor
    batch = torch.stack([to_tensor(synth.photo_like(rng, (size, size))) for _ in range(16)])
    return (batch - 0.45) / 0.226


def centred_cosine(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-row cosine after subtracting the reference's mean row from both."""
    mean = ref.mean(axis=0, keepdims=True)
    a, b = ours - mean, ref - mean
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------------------------------
# SegFormer (Hugging Face)


@dataclass(frozen=True)
class Saved:
    path: Path
    model: torch.nn.Module


@pytest.fixture(scope="module")
def segformer(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    path = tmp_path_factory.mktemp("segformer")
    return Saved(path, save_tiny_segformer(path))


def _segformer_reference(
    saved: Saved, img: Image.Image, backend: str, swap: bool = False
) -> np.ndarray:
    processor = tf.AutoImageProcessor.from_pretrained(saved.path, backend=backend)
    inputs = processor(img, return_tensors="pt")
    if swap:
        inputs["pixel_values"] = inputs["pixel_values"].flip(1)
    with torch.no_grad():
        out = saved.model(**inputs)
    sizes = [(img.height, img.width)]
    return processor.post_process_semantic_segmentation(out, target_sizes=sizes)[0].numpy()


def test_segformer_matches_transformers(segformer: Saved, images: Path, tmp_path: Path) -> None:
    rows = _run(images, tmp_path / "out", f"hf:{segformer.path}")
    same, other, wrong = [], [], []
    for row in rows:
        img = _pil(images / str(row["id"]))
        ours = decode_mask(row["mask"])  # type: ignore[arg-type]
        assert ours.shape == (img.height, img.width) == (row["mask_height"], row["mask_width"])
        same.append((ours == _segformer_reference(segformer, img, "pil")).mean())
        other.append((ours == _segformer_reference(segformer, img, "torchvision")).mean())
        wrong.append((ours == _segformer_reference(segformer, img, "pil", swap=True)).mean())
        present = {c["id"]: c["fraction"] for c in row["classes"]}  # type: ignore[union-attr]
        counts = np.bincount(ours.reshape(-1), minlength=SEG_CLASSES) / ours.size
        assert present == pytest.approx({i: counts[i] for i in np.flatnonzero(counts)}, abs=1e-6)
        assert all(c["label"] == f"region_{c['id']}" for c in row["classes"])  # type: ignore[union-attr]
    assert min(same) >= SEG_PASS_SAME_RESIZE, same
    assert min(other) >= SEG_PASS, other
    assert np.mean(wrong) < WRONG_BELOW, wrong
    # The maps are not trivially one class, so agreement means something.
    assert np.mean([len(r["classes"]) for r in rows]) >= 2  # type: ignore[arg-type]
    manifest = batchvision.io.outdir.read_manifest(str(tmp_path / "out"))
    assert manifest is not None
    assert manifest["task"] == "segment" and manifest["num_classes"] == SEG_CLASSES
    assert manifest["labels"] == [f"region_{i}" for i in range(SEG_CLASSES)]


# ---------------------------------------------------------------------------------------
# torchvision segmentation


def test_torchvision_segmentation_matches_weights_transforms(images: Path, tmp_path: Path) -> None:
    arch = "lraspp_mobilenet_v3_large"
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        arch, weights=None, weights_backbone=None, num_classes=SEG_CLASSES
    )
    _calibrate_bn(model, _calibration_batch())
    for head in (model.classifier.low_classifier, model.classifier.high_classifier):
        torch.nn.init.normal_(head.weight, std=1.0)
    ckpt = tmp_path / "seg.pt"
    torch.save(model.state_dict(), ckpt)
    # The weights' own transform, at a smaller size on both sides (--resize-size 160 here)
    # so the test stays quick on a CPU: same class, interpolation, antialias, mean and std.
    rows = _run(
        images,
        tmp_path / "out",
        f"torchvision:{arch}",
        weights=str(ckpt),
        preprocess=PreprocessOverrides(resize_size=160),
    )
    transform = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    assert list(transform.resize_size) == [520]
    transform.resize_size = [160]
    agree, wrong = [], []
    for row in rows:
        img = _pil(images / str(row["id"]))
        x = transform(img)[None]
        ref_maps = []
        for inp in (x, x.flip(1)):
            with torch.no_grad():
                logits = model(inp)["out"]
            up = F.interpolate(
                logits, size=(img.height, img.width), mode="bilinear", align_corners=False
            )
            ref_maps.append(up[0].argmax(0).numpy())
        ours = decode_mask(row["mask"])  # type: ignore[arg-type]
        agree.append((ours == ref_maps[0]).mean())
        wrong.append((ours == ref_maps[1]).mean())
    assert min(agree) >= SEG_PASS, agree
    assert np.mean(wrong) < WRONG_BELOW, wrong
    assert np.mean([len(r["classes"]) for r in rows]) >= 2  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Hugging Face classification and embeddings


@pytest.fixture(scope="module")
def hf_resnet(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    torch.manual_seed(0)
    config = tf.ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        num_labels=CLS_CLASSES,
        id2label={i: f"kind_{i}" for i in range(CLS_CLASSES)},
        label2id={f"kind_{i}": i for i in range(CLS_CLASSES)},
    )
    model = tf.ResNetForImageClassification(config).eval()
    _calibrate_bn(model.resnet, _calibration_batch())
    torch.nn.init.normal_(model.classifier[1].weight, std=0.5)
    path = tmp_path_factory.mktemp("hf_resnet")
    model.save_pretrained(path)
    tf.ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875).save_pretrained(path)
    return Saved(path, model)


def _hf_reference(
    saved: Saved, paths: list[Path], *, normalize: bool = True
) -> dict[str, np.ndarray]:
    processor = tf.AutoImageProcessor.from_pretrained(saved.path, backend="pil")
    if not normalize:
        processor.do_normalize = False
    x = processor([_pil(p) for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = saved.model(pixel_values=x).logits
        pooled = saved.model.resnet(pixel_values=x).pooler_output.flatten(1)
    return {"logp": F.log_softmax(logits, 1).numpy(), "emb": pooled.numpy()}


def _logp_from_rows(rows: list[dict[str, object]], k: int) -> np.ndarray:
    out = np.full((len(rows), k), np.nan)
    for i, r in enumerate(rows):
        out[i, r["topk_ids"]] = np.log(np.asarray(r["topk_scores"], dtype=np.float64))  # type: ignore[index]
    return out


def test_hf_classification_matches_transformers(
    hf_resnet: Saved, images: Path, tmp_path: Path
) -> None:
    rows = _run(images, tmp_path / "out", f"hf:{hf_resnet.path}", top_k=CLS_CLASSES)
    ref = _hf_reference(hf_resnet, [images / str(r["id"]) for r in rows])
    cos = centred_cosine(_logp_from_rows(rows, CLS_CLASSES), ref["logp"])
    assert cos.min() >= COS_PASS, cos
    assert rows[0]["label"] == f"kind_{int(np.argmax(ref['logp'][0]))}"
    wrong = _hf_reference(hf_resnet, [images / str(r["id"]) for r in rows], normalize=False)
    assert centred_cosine(wrong["logp"], ref["logp"]).mean() < WRONG_BELOW


def test_hf_embeddings_match_pooler_output(hf_resnet: Saved, images: Path, tmp_path: Path) -> None:
    rows = _run(images, tmp_path / "out", f"hf:{hf_resnet.path}", task="embed")
    ours = np.array([r["embedding"] for r in rows])
    ref = _hf_reference(hf_resnet, [images / str(r["id"]) for r in rows])["emb"]
    assert ours.shape == ref.shape == (len(rows), 32)
    assert centred_cosine(ours, ref).min() >= EMB_PASS
    assert centred_cosine(ours[:, ::-1], ref).mean() < WRONG_BELOW  # the check can fail
    manifest = batchvision.io.outdir.read_manifest(str(tmp_path / "out"))
    assert manifest is not None and manifest["embedding_dim"] == 32 and manifest["task"] == "embed"


# ---------------------------------------------------------------------------------------
# timm classification and embeddings

TIMM_ARCH = "resnet10t.c3_in1k"


@pytest.fixture(scope="module")
def timm_model(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    torch.manual_seed(0)
    model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=CLS_CLASSES)
    _calibrate_bn(model, _calibration_batch())
    torch.nn.init.normal_(model.get_classifier().weight, std=0.3)
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return Saved(path, model)


def _timm_reference(saved: Saved, paths: list[Path], swap: bool = False) -> dict[str, np.ndarray]:
    config = timm.data.resolve_model_data_config(saved.model)
    transform = timm.data.create_transform(**config)
    x = torch.stack([transform(_pil(p)) for p in paths])
    if swap:
        x = x.flip(1)
    with torch.no_grad():
        feats = saved.model.forward_head(saved.model.forward_features(x), pre_logits=True)
        logits = saved.model(x)
    return {"logp": F.log_softmax(logits, 1).numpy(), "emb": feats.numpy()}


def test_timm_classification_and_embeddings_match(
    timm_model: Saved, images: Path, tmp_path: Path
) -> None:
    model = f"timm:{TIMM_ARCH}"
    rows = _run(images, tmp_path / "cls", model, weights=str(timm_model.path), top_k=CLS_CLASSES)
    paths = [images / str(r["id"]) for r in rows]
    ref = _timm_reference(timm_model, paths)
    assert centred_cosine(_logp_from_rows(rows, CLS_CLASSES), ref["logp"]).min() >= COS_PASS
    wrong = _timm_reference(timm_model, paths, swap=True)
    assert centred_cosine(wrong["logp"], ref["logp"]).mean() < WRONG_BELOW

    emb_rows = _run(
        images, tmp_path / "emb", model, weights=str(timm_model.path), task="embed", normalize=True
    )
    ours = np.array([r["embedding"] for r in emb_rows])
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    ref_unit = ref["emb"] / np.linalg.norm(ref["emb"], axis=1, keepdims=True)
    assert centred_cosine(ours, ref_unit).min() >= EMB_PASS


# ---------------------------------------------------------------------------------------
# torchvision embeddings


def test_torchvision_embeddings_match_classifier_input(
    tiny_checkpoint: tuple[Path, Path], images: Path, tmp_path: Path
) -> None:
    ckpt, labels = tiny_checkpoint
    rows = _run(
        images,
        tmp_path / "out",
        "mobilenet_v3_small",
        weights=str(ckpt),
        labels=str(labels),
        task="embed",
    )
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(ckpt)))
    model.eval()
    captured: list[torch.Tensor] = []
    model.classifier[-1].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    transform = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.transforms()
    with torch.no_grad():
        model(torch.stack([transform(_pil(images / str(r["id"]))) for r in rows]))
    ref = captured[0].numpy()
    ours = np.array([r["embedding"] for r in rows])
    assert ours.shape == ref.shape == (len(rows), 1024)
    assert centred_cosine(ours, ref).min() >= EMB_PASS


def test_hf_vit_classification_and_cls_embedding(
    images: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A ViT: a height/width processor (squash resize) and the [CLS] token as embedding."""
    torch.manual_seed(0)
    config = tf.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=CLS_CLASSES,
    )  # fmt: skip
    model = tf.ViTForImageClassification(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=2.0)
    path = tmp_path_factory.mktemp("vit")
    model.save_pretrained(path)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)

    rows = _run(images, tmp_path / "cls", f"hf:{path}", top_k=CLS_CLASSES)
    emb_rows = _run(images, tmp_path / "emb", f"hf:{path}", task="embed")
    processor = tf.AutoImageProcessor.from_pretrained(path, backend="pil")
    x = processor([_pil(images / str(r["id"])) for r in rows], return_tensors="pt")
    with torch.no_grad():
        logp = F.log_softmax(model(**x).logits, 1).numpy()
        cls = model.vit(**x).last_hidden_state[:, 0].numpy()
    assert centred_cosine(_logp_from_rows(rows, CLS_CLASSES), logp).min() >= COS_PASS
    ours = np.array([r["embedding"] for r in emb_rows])
    assert ours.shape == cls.shape == (len(rows), 32)
    assert centred_cosine(ours, cls).min() >= EMB_PASS


# ---------------------------------------------------------------------------------------
# The ONNX Runtime and OpenVINO runtimes on every source and task (issue 15)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("case", ["hf_classify", "hf_segment", "timm_embed"])
def test_runtimes_match_torch_on_every_source(
    case: str, runtime: str, images: Path, tmp_path: Path, request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The exported model gives the torch fp32 rows: Hugging Face classification and
    segmentation (SegFormer's inputs vary in size: dynamic height and width in the export),
    timm embeddings."""
    pytest.importorskip(runtime)
    monkeypatch.setenv("BATCHVISION_CACHE_DIR", str(tmp_path / "cache"))
    if case == "hf_classify":
        model, opts = f"hf:{request.getfixturevalue('hf_resnet').path}", {"top_k": CLS_CLASSES}
    elif case == "hf_segment":
        model, opts = f"hf:{request.getfixturevalue('segformer').path}", {}
    else:
        saved = request.getfixturevalue("timm_model")
        model, opts = f"timm:{TIMM_ARCH}", {"weights": str(saved.path), "task": "embed"}
    ref = _run(images, tmp_path / "torch", model, **opts)  # type: ignore[arg-type]
    got = _run(images, tmp_path / runtime, model, runtime=runtime, **opts)  # type: ignore[arg-type]
    assert [r["id"] for r in got] == [r["id"] for r in ref]
    manifest = batchvision.io.outdir.read_manifest(str(tmp_path / runtime))
    assert manifest is not None and manifest["runtime"]["runtime"] == runtime
    for r, g in zip(ref, got, strict=True):
        if case == "hf_classify":
            assert g["topk_ids"] == r["topk_ids"]
            np.testing.assert_allclose(g["topk_scores"], r["topk_scores"], atol=1e-4)
        elif case == "hf_segment":
            same = (decode_mask(g["mask"]) == decode_mask(r["mask"])).mean()  # type: ignore[arg-type]
            assert same >= 0.999, (r["id"], same)
        else:
            a, b = np.array(g["embedding"]), np.array(r["embedding"])
            assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.9999


# ---------------------------------------------------------------------------------------
# Zero-shot and projected embeddings of image-text models (issue 14)

ZS_CLASSES = ("cat", "dog", "car", "bird", "tree", "house")


@pytest.fixture(scope="module", params=["clip", "siglip"])
def image_text(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Saved:
    from tests.task_models import save_tiny_clip, save_tiny_siglip

    path = tmp_path_factory.mktemp(request.param)
    save = save_tiny_clip if request.param == "clip" else save_tiny_siglip
    return Saved(path, save(path))


def test_zero_shot_and_embed_match_transformers(
    image_text: Saved, images: Path, tmp_path: Path
) -> None:
    """CLIP and SigLIP from their saved folders: zero-shot scores are transformers'
    ``logits_per_image`` through softmax (CLIP) or sigmoid (SigLIP), from the documented
    recipe (processor with both texts and images, then the model); ``embed`` writes
    ``get_image_features`` (the projected embedding). A wrong class order scores low."""
    model = image_text.model
    siglip = hasattr(model, "logit_bias")
    k = len(ZS_CLASSES)
    rows = _run(
        images, tmp_path / "zs", f"hf:{image_text.path}", task="zero-shot",
        classes=ZS_CLASSES, top_k=k,
    )  # fmt: skip
    emb_rows = _run(images, tmp_path / "emb", f"hf:{image_text.path}", task="embed")
    processor = tf.AutoProcessor.from_pretrained(image_text.path, backend="pil")
    texts = [f"a photo of a {c}." for c in ZS_CLASSES]
    padding = "max_length" if siglip else True
    x = processor(
        text=texts, images=[_pil(images / str(r["id"])) for r in rows], padding=padding,
        return_tensors="pt",
    )  # fmt: skip
    with torch.no_grad():
        logits = model(**x).logits_per_image.double()
        feats = model.get_image_features(pixel_values=x["pixel_values"]).pooler_output
    ref = torch.sigmoid(logits) if siglip else torch.softmax(logits, 1)
    ours = np.full((len(rows), k), np.nan)
    for i, r in enumerate(rows):
        ours[i, r["topk_ids"]] = r["topk_scores"]  # type: ignore[index]
        assert r["label"] == ZS_CLASSES[int(np.argmax(ref[i]))]
    np.testing.assert_allclose(ours, ref.numpy(), atol=2e-3)
    # The image-dependent part too (random towers answer nearly alike for every image).
    to_logit = (lambda p: np.log(p / (1 - p))) if siglip else np.log
    score_ref = to_logit(ref.numpy())
    assert centred_cosine(to_logit(ours), score_ref).min() >= COS_PASS
    assert centred_cosine(to_logit(ours[:, ::-1]), score_ref).mean() < WRONG_BELOW
    got = np.array([r["embedding"] for r in emb_rows])
    assert got.shape == tuple(feats.shape) and got.shape[1] == (32 if siglip else 16)
    assert centred_cosine(got, feats.numpy()).min() >= EMB_PASS
    manifest = batchvision.io.outdir.read_manifest(str(tmp_path / "zs"))
    assert manifest is not None and manifest["labels"] == list(ZS_CLASSES)
    assert manifest["class_scores"] == ("sigmoid" if siglip else "softmax")
    assert manifest["prompt"] == "a photo of a {}."


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_zero_shot_runtimes_match_torch(
    runtime: str, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The zero-shot graph (image tower, class embeddings as constants) exports: the
    runtime's scores are torch's at fp32."""
    pytest.importorskip(runtime)
    from tests.task_models import save_tiny_clip

    monkeypatch.setenv("BATCHVISION_CACHE_DIR", str(tmp_path / "cache"))
    save_tiny_clip(tmp_path / "clip")
    opts = {"task": "zero-shot", "classes": ZS_CLASSES, "top_k": len(ZS_CLASSES)}
    ref = _run(images, tmp_path / "torch", f"hf:{tmp_path / 'clip'}", **opts)
    got = _run(images, tmp_path / runtime, f"hf:{tmp_path / 'clip'}", runtime=runtime, **opts)
    for r, g in zip(ref, got, strict=True):
        assert g["topk_ids"] == r["topk_ids"]
        np.testing.assert_allclose(g["topk_scores"], r["topk_scores"], atol=1e-5)
