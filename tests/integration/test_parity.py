"""Acceptance parity: batchvision's predictions against plain PyTorch/torchvision.

The reference is what a user would write by hand: ``PIL.Image.open``, EXIF transpose, RGB
(alpha composited on white, batchvision's documented handling), ``ToTensor()``, the
weights' own ``transforms()``, the same model in fp32, ``log_softmax``.

batchvision is run through its public API with ``top_k`` = all 1000 classes, so the full
probability vector of every image can be rebuilt from the parquet output.

Random-weight models give nearly the same output for every image, which would make any
comparison pass, so both sides are centred on the *reference's* mean log-probability vector
before the per-image cosine is taken: what is compared is how each image moves the output
away from the average image. Deliberately wrong pipelines must score clearly lower, which
shows the metric can fail.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from PIL import Image, ImageOps

import batchvision
from batchvision.config import PreprocessOverrides, RunConfig
from batchvision.demo import synth

NUM_CLASSES = 1000
PASS_MEAN = 0.99  # mean centred cosine a correct pipeline must reach
FAIL_MEAN = 0.90  # a wrong pipeline must stay below this
LARGE = (2000, 1500)  # big enough that draft JPEG decoding (1/2 scale) engages
DRAFT_MIN_SIDE = 1024  # below this shorter side, no 1/2 draft scale keeps 2 x 256 px
ORIENTATION = 0x0112


# ---------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class Images:
    root: Path
    ids: list[str]  # sorted relative paths, POSIX separators
    sizes: dict[str, tuple[int, int]]  # id -> (width, height) as displayed
    large: set[str]  # ids of images whose shorter side allows draft decoding


def _save_exif_rotated(img: Image.Image, path: Path, orientation: int) -> None:
    """Store ``img`` so that applying EXIF ``orientation`` displays it as ``img``."""
    undo = {
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    img.transpose(undo).save(path, quality=90, exif=exif)


@pytest.fixture(scope="module")
def images(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Images:
    """photo_dir's 24 JPEGs plus large JPEGs, EXIF-rotated JPEGs, an RGBA PNG and a grey JPEG."""
    root = tmp_path_factory.mktemp("parity_images")
    for sub in ("a", "b"):
        shutil.copytree(photo_dir / sub, root / sub)
    extra = root / "extra"
    extra.mkdir()
    rng = np.random.default_rng(99)
    synth.photo_like(rng, LARGE).save(extra / "large_landscape.jpg", quality=90)
    synth.photo_like(rng, LARGE[::-1]).save(extra / "large_portrait.jpg", quality=90)
    # Displayed 1500x2000 but stored 2000x1500 with orientation 6: draft + EXIF together.
    _save_exif_rotated(synth.photo_like(rng, (1500, 2000)), extra / "large_rot6.jpg", 6)
    _save_exif_rotated(synth.photo_like(rng, (320, 480)), extra / "small_rot8.jpg", 8)
    _save_exif_rotated(synth.photo_like(rng, (400, 300)), extra / "small_rot3.jpg", 3)
    rgba = synth.photo_like(rng, (420, 300)).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 420, dtype=np.uint8), (300, 1))
    alpha[100:200, 150:300] = 0  # a fully transparent hole
    rgba.putalpha(Image.fromarray(alpha, "L"))
    rgba.save(extra / "alpha.png")
    synth.photo_like(rng, (360, 280)).convert("L").save(extra / "grey.jpg", quality=90)

    ids = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    sizes = {}
    for i in ids:
        with Image.open(root / i) as img:
            sizes[i] = ImageOps.exif_transpose(img).size
    large = {i for i in ids if min(sizes[i]) >= DRAFT_MIN_SIDE and i.endswith(".jpg")}
    assert len(ids) == 31
    assert {
        "extra/large_landscape.jpg",
        "extra/large_portrait.jpg",
        "extra/large_rot6.jpg",
    } <= large
    return Images(root=root, ids=ids, sizes=sizes, large=large)


# ---------------------------------------------------------------------------------------
# Models


def _random_model(arch: str, seed: int) -> torch.nn.Module:
    """A seeded random-weight model whose logits have a photo-model-like spread.

    Freshly initialised heads give logits within ~1e-9 of each other for MobileNetV3, so
    the last linear layer is rescaled (deterministically) to a within-image logit std of 2
    on a few calibration images that are not among the test images.
    """
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=NUM_CLASSES).eval()
    rng = np.random.default_rng(seed + 1000)
    calib = torch.stack(
        [
            torchvision.transforms.functional.to_tensor(synth.photo_like(rng, (224, 224)))
            for _ in range(4)
        ]
    )
    calib = torchvision.transforms.functional.normalize(
        calib, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    )
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        scale = 2.0 / model(calib).std(dim=1).mean()
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    return model


@dataclass
class Reference:
    arch: str
    ckpt: Path
    model: torch.nn.Module
    inputs: torch.Tensor  # (N, 3, H, W) normalised, in Images.ids order
    logp: np.ndarray  # (N, 1000) fp32 reference log-probabilities

    def logp_of(self, inputs: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return torch.log_softmax(self.model(inputs).float(), dim=1).numpy()


def _reference_rgb(path: Path) -> Image.Image:
    with Image.open(path) as raw:
        img = ImageOps.exif_transpose(raw)
        img.load()
    if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _reference(arch: str, seed: int, ckpt: Path, images: Images) -> Reference:
    model = _random_model(arch, seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if ckpt.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(ckpt))
    else:
        torch.save(state, ckpt)
    transform = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    to_tensor = torchvision.transforms.ToTensor()
    inputs = torch.stack(
        [transform(to_tensor(_reference_rgb(images.root / i))) for i in images.ids]
    )
    ref = Reference(arch=arch, ckpt=ckpt, model=model, inputs=inputs, logp=np.empty(0))
    ref.logp = ref.logp_of(inputs)
    return ref


@pytest.fixture(scope="module")
def references(images: Images, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reference]:
    root = tmp_path_factory.mktemp("parity_models")
    return {
        "resnet18": _reference("resnet18", 0, root / "resnet18.pt", images),
        "mobilenet_v3_small": _reference(
            "mobilenet_v3_small", 1, root / "mobilenet_v3_small.safetensors", images
        ),
    }


# ---------------------------------------------------------------------------------------
# batchvision runs


@dataclass
class Output:
    table: pa.Table
    logp: np.ndarray  # (N, 1000) rebuilt from topk, rows in Images.ids order


def _read_output(out_dir: Path, images: Images) -> Output:
    parts = sorted(out_dir.glob("part-*.parquet"))
    assert parts, f"no part files in {out_dir}: {sorted(p.name for p in out_dir.iterdir())}"
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    rows = {r["id"]: r for r in table.to_pylist()}
    assert sorted(rows) == images.ids
    assert table.num_rows == len(images.ids)
    logp = np.full((len(images.ids), NUM_CLASSES), np.nan, dtype=np.float64)
    for n, i in enumerate(images.ids):
        row = rows[i]
        assert row["status"] == "ok", row["error"]
        ids = np.asarray(row["topk_ids"])
        scores = np.asarray(row["topk_scores"], dtype=np.float64)
        assert len(ids) == NUM_CLASSES
        np.testing.assert_array_equal(np.sort(ids), np.arange(NUM_CLASSES))
        assert np.all(np.diff(scores) <= 0), "top-k scores must be sorted descending"
        assert np.all(scores > 0), f"{i}: a probability underflowed to 0"
        assert abs(scores.sum() - 1.0) < 1e-3
        assert row["score"] == pytest.approx(scores[0])
        assert row["label"] == f"class_{ids[0]}"
        logp[n, ids] = np.log(scores)
    return Output(table=table, logp=logp)


@pytest.fixture(scope="module")
def run_bv(images: Images, references: dict[str, Reference], tmp_path_factory):
    """``run_bv(arch, precision=, draft=, **preprocess)``: batchvision's output, cached."""
    cache: dict[tuple[object, ...], Output] = {}

    def run(
        arch: str, precision: str = "fp32", draft: bool = True, workers: int = 0, **overrides
    ) -> Output:
        key = (arch, precision, draft, workers, tuple(sorted(overrides.items())))
        if key not in cache:
            out_dir = tmp_path_factory.mktemp("parity_out") / "out"
            summary = batchvision.run(
                RunConfig(
                    inputs=(str(images.root),),
                    output=str(out_dir),
                    model=arch,
                    weights=str(references[arch].ckpt),
                    device="cpu",
                    precision=precision,  # type: ignore[arg-type]
                    batch_size=8,
                    workers=workers,
                    top_k=NUM_CLASSES,
                    format="parquet",
                    draft=draft,
                    preprocess=PreprocessOverrides(**overrides),
                )
            )
            assert summary.exit_code == 0
            assert (summary.ok, summary.error) == (len(images.ids), 0)
            assert summary.precision == precision
            cache[key] = _read_output(out_dir, images)
        return cache[key]

    return run


def centred_cosine(
    got: np.ndarray, ref: np.ndarray, centre: np.ndarray | None = None
) -> np.ndarray:
    """Per-image cosine of both log-prob matrices, centred on the reference's mean image."""
    if centre is None:
        centre = ref.mean(axis=0, keepdims=True)
    a, b = got - centre, ref - centre
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _check_parity(name: str, got: np.ndarray, ref: np.ndarray, per_image_min: float) -> None:
    cos = centred_cosine(got, ref)
    print(f"{name}: centred cosine mean {cos.mean():.5f} min {cos.min():.5f}")
    assert cos.mean() >= PASS_MEAN, f"{name}: mean {cos.mean():.4f} min {cos.min():.4f}"
    assert cos.min() >= per_image_min, f"{name}: min {cos.min():.4f} (mean {cos.mean():.4f})"


# ---------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_fp32_matches_torchvision_reference(arch, references, run_bv, images) -> None:
    ref = references[arch]
    # workers=1 sends decoded batches through the DataLoader's worker process.
    out = run_bv(arch, precision="fp32", draft=True, workers=1)
    _check_parity(f"{arch} fp32 draft", out.logp, ref.logp, per_image_min=0.97)
    # Top-1 agrees with the reference on nearly every image.
    agree = np.mean(out.logp.argmax(1) == ref.logp.argmax(1))
    assert agree >= 0.9, f"top-1 agreement {agree:.2f}"


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_bf16_matches_fp32_reference(arch, references, run_bv) -> None:
    out = run_bv(arch, precision="bf16", draft=True)
    _check_parity(f"{arch} bf16 draft", out.logp, references[arch].logp, per_image_min=0.95)


def test_no_draft_matches_reference_and_draft_only_changes_large_jpegs(
    references, run_bv, images
) -> None:
    ref = references["resnet18"]
    full = run_bv("resnet18", precision="fp32", draft=False)
    draft = run_bv("resnet18", precision="fp32", draft=True, workers=1)
    _check_parity("resnet18 fp32 no-draft", full.logp, ref.logp, per_image_min=0.98)

    large = np.array([i in images.large for i in images.ids])
    # Small images decode identically either way: same pixels, same batches, same output.
    np.testing.assert_allclose(draft.logp[~large], full.logp[~large], atol=1e-4)
    # Large JPEGs really were decoded at reduced scale (otherwise this test proves nothing)...
    assert np.all(np.abs(draft.logp[large] - full.logp[large]).max(axis=1) > 1e-4)
    # ...and still match the full-resolution reference image by image.
    cos = centred_cosine(draft.logp, ref.logp)[large]
    print(f"draft on large JPEGs: centred cosine min {cos.min():.5f}")
    assert cos.min() >= 0.97


def test_width_height_and_ids(run_bv, images) -> None:
    out = run_bv("resnet18", precision="fp32", draft=True, workers=1)
    rows = {r["id"]: r for r in out.table.to_pylist()}
    for i in images.ids:
        assert (rows[i]["width"], rows[i]["height"]) == images.sizes[i], i
        assert rows[i]["path"] == str(images.root / i)
    # Displayed sizes, not stored ones: orientation 6/8 swaps width and height.
    assert images.sizes["extra/large_rot6.jpg"] == (1500, 2000)
    assert images.sizes["extra/small_rot8.jpg"] == (320, 480)
    assert images.sizes["extra/large_landscape.jpg"] == LARGE
    assert {"a/img_01.jpg", "b/img_00.jpg", "extra/alpha.png"} <= set(rows)


def test_wrong_pipelines_score_clearly_lower(references, run_bv) -> None:
    ref = references["resnet18"]
    good = run_bv("resnet18", precision="fp32", draft=True, workers=1)
    good_mean = centred_cosine(good.logp, ref.logp).mean()

    # Skipping normalisation (--mean 0,0,0 --std 1,1,1) through the real pipeline.
    raw = run_bv("resnet18", precision="fp32", draft=True, mean=(0, 0, 0), std=(1, 1, 1))
    raw_mean = centred_cosine(raw.logp, ref.logp).mean()
    # Channels swapped (RGB -> BGR): the reference itself fed BGR, scored against the truth.
    bgr_mean = centred_cosine(ref.logp_of(ref.inputs[:, [2, 1, 0]]), ref.logp).mean()
    print(f"good {good_mean:.4f}  no-normalisation {raw_mean:.4f}  BGR {bgr_mean:.4f}")
    assert raw_mean < FAIL_MEAN
    assert bgr_mean < FAIL_MEAN
    assert good_mean - max(raw_mean, bgr_mean) > 0.1


def test_alpha_is_composited_on_white(references, run_bv, images) -> None:
    """The RGBA PNG matches a white-background reference better than a black one."""
    ref = references["resnet18"]
    out = run_bv("resnet18", precision="fp32", draft=True, workers=1)
    n = images.ids.index("extra/alpha.png")
    with Image.open(images.root / "extra/alpha.png") as img:
        black = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img)
    transform = torchvision.models.get_model_weights("resnet18").DEFAULT.transforms()
    x = transform(torchvision.transforms.ToTensor()(black.convert("RGB")))[None]
    centre = ref.logp.mean(axis=0, keepdims=True)
    white_cos = centred_cosine(out.logp[n : n + 1], ref.logp[n : n + 1], centre)[0]
    black_cos = centred_cosine(out.logp[n : n + 1], ref.logp_of(x), centre)[0]
    print(f"alpha.png: white {white_cos:.4f} black {black_cos:.4f}")
    assert white_cos >= 0.98
    assert black_cos < white_cos - 0.05
