"""Frozen, validated configuration objects shared by the CLI, the API and the engines."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from batchvision.errors import ConfigError
from batchvision.io.shards import DEFAULT_IMAGE_KEYS, ShardOptions
from batchvision.io.sources import DEFAULT_MAX_FILE_BYTES
from batchvision.io.storage import StorageOptions, env_endpoint, env_max_attempts

Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
OutputFormat = Literal["parquet", "csv", "jsonl", "lance"]
EngineName = Literal["local", "ray"]
Interpolation = Literal["bilinear", "bicubic", "nearest"]
ResizeMode = Literal["shorter_crop", "squash_crop", "shorter", "model", "edges"]
CropOffset = Literal["round", "floor"]
TaskName = Literal["classify", "segment", "embed", "zero-shot", "detect"]
DecodeDevice = Literal["cpu", "cuda", "auto"]
BatchSize = int | Literal["auto"]
#: ``--batch-size`` for a model on the CPU when none is given.
DEFAULT_BATCH_SIZE = 32
RuntimeName = Literal["torch", "onnxruntime", "openvino", "auto"]

PRECISIONS: tuple[str, ...] = get_args(Precision)
#: What torch itself runs (int8 is post-training quantization in a runtime).
TORCH_PRECISIONS: tuple[str, ...] = tuple(p for p in PRECISIONS if p != "int8")
INT8_NEEDS_RUNTIME = (
    "--precision int8 needs --runtime onnxruntime or openvino (post-training quantization); "
    "torch runs auto, fp32, bf16 or fp16"
)
RUNTIMES: tuple[str, ...] = get_args(RuntimeName)
#: ``--precision int8``: calibration images (NNCF's own default subset), held-apart images
#: (the issue's "at least 200"), and the least agreement with fp32 on them.
DEFAULT_CALIBRATION_IMAGES = 300
DEFAULT_AGREEMENT_IMAGES = 200
DEFAULT_MIN_AGREEMENT = 0.99
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
ENGINES: tuple[str, ...] = get_args(EngineName)
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)
TASKS: tuple[str, ...] = get_args(TaskName)
DECODE_DEVICES: tuple[str, ...] = get_args(DecodeDevice)
#: ``--prompt``: CLIP's own prompt for ImageNet class names, in its simplest form.
DEFAULT_PROMPT = "a photo of a {}."

#: ``--max-pixels``: twice Pillow's warning threshold (where Pillow itself refuses), so a
#: 100- or 150-megapixel camera photo is decoded; the decoded RGB image is at most 537 MB.
DEFAULT_MAX_PIXELS = 178_956_970
#: ``--max-input-pixels``: the most pixels the resize may make of one image (2048x2048).
#: Only uncropped inputs (segmentation's ``shorter`` resize) follow the aspect ratio and
#: can get near it: a 4:3 photo resized to 520 is 0.36 megapixels, a 15:1 panorama 4.1;
#: a 1x65000 strip would be 17,576 megapixels (and its logits 21 classes x 4 bytes each).
DEFAULT_MAX_INPUT_PIXELS = 4_194_304
#: ``--score-threshold`` (detect): boxes scoring less are dropped, as Hugging Face's
#: object-detection pipeline does by default.
DEFAULT_SCORE_THRESHOLD = 0.5
#: ``--max-detections`` (detect): the most boxes per image (torchvision's Faster R-CNN and
#: DETR's 100 queries).
DEFAULT_MAX_DETECTIONS = 100
#: Resize modes without a crop: inputs keep their aspect ratio and vary in size.
UNCROPPED_MODES = ("shorter", "model", "edges")
#: Seconds ``--ray-address`` may take to answer (``--ray-connect-timeout``).
DEFAULT_RAY_CONNECT_TIMEOUT = 30.0


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} {value!r} is not valid; choose one of: {', '.join(choices)}")


def _triple(name: str, value: tuple[float, ...]) -> tuple[float, float, float]:
    if len(value) != 3:
        raise ConfigError(f"{name} needs 3 values (R,G,B), got {len(value)}: {value}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _mean_std(name: str, value: tuple[float, ...], *, positive: bool) -> tuple[float, float, float]:
    """A normalisation triple: 3 finite numbers, and all > 0 for a std (NaN or inf would
    turn every score into NaN, 0 would divide by zero)."""
    triple = _triple(name, value)
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in triple):
        valid = "finite numbers > 0" if positive else "finite numbers"
        raise ConfigError(
            f"{name} {','.join(f'{v:g}' for v in triple)} is not valid: give 3 {valid} "
            "(R,G,B), e.g. " + ("0.229,0.224,0.225" if positive else "0.485,0.456,0.406")
        )
    return triple


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes model input: the recipe that travels with the weights.

    The default mirrors torchvision's ``ImageClassification`` transform: resize the shorter
    side to ``resize_size``, center-crop ``crop_size``, scale by ``rescale_factor`` (1/255),
    normalise with mean/std. ``resize_mode`` covers the other recipes in use:

    - ``shorter_crop``: shorter side to ``resize_size``, then center crop (torchvision,
      timm's ``center`` crop mode, Hugging Face ``shortest_edge`` + crop).
    - ``squash_crop``: resize to exactly ``resize_hw`` (aspect ratio not kept), then center
      crop ``crop_size`` (Hugging Face ``height``/``width`` sizes such as SegFormer's and
      ViT's, where the crop equals the resize; timm's ``squash`` crop mode).
    - ``shorter``: shorter side to ``resize_size`` and no crop, so inputs vary in size
      (torchvision's segmentation weights).
    - ``model``: the image as decoded; the model resizes it on the device, in float, as
      its own transform does (torchvision's detectors, ``GeneralizedRCNNTransform``: by
      ``min(resize_size / shorter, max_size / longer)``, or to ``resize_hw`` for SSD).
      Only the too-large check uses that size here.
    - ``edges``: no crop, shorter side to ``resize_size`` unless the longer would pass
      ``max_size`` (Hugging Face ``shortest_edge`` + ``longest_edge``, DETR's processors).

    ``crop_offset`` says how an odd margin is split: torchvision rounds, Hugging Face floors.
    """

    resize_size: int = 256
    crop_size: tuple[int, int] = (224, 224)
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize_mode: ResizeMode = "shorter_crop"
    resize_hw: tuple[int, int] | None = None
    crop_offset: CropOffset = "round"
    rescale_factor: float = 1 / 255
    #: ``edges`` and ``model``: the most pixels the longer side may have.
    max_size: int | None = None
    #: ``edges``: both sides rounded down to a multiple of this (YOLOS' processor: 16).
    size_multiple: int = 1

    @property
    def uncropped(self) -> bool:
        """Whether inputs keep their aspect ratio, so a batch's inputs differ in size."""
        return self.resize_mode in UNCROPPED_MODES

    def __post_init__(self) -> None:
        if self.resize_size < 1:
            raise ConfigError(f"resize size must be >= 1, got {self.resize_size}")
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ConfigError(f"crop size must be two positive ints, got {self.crop_size}")
        _choice("interpolation", self.interpolation, INTERPOLATIONS)
        _choice("resize mode", self.resize_mode, RESIZE_MODES)
        _choice("crop offset", self.crop_offset, ("round", "floor"))
        if self.resize_mode == "squash_crop":
            hw = self.resize_hw or self.crop_size
            if len(hw) != 2 or min(hw) < 1:
                raise ConfigError(f"resize_hw must be two positive ints, got {hw}")
            object.__setattr__(self, "resize_hw", (int(hw[0]), int(hw[1])))
        elif self.resize_hw is not None and self.resize_mode != "model":
            raise ConfigError(
                f"resize_hw is only used by resize_mode squash_crop, not {self.resize_mode}"
            )
        bounded = self.resize_mode == "edges" or (
            self.resize_mode == "model" and self.resize_hw is None
        )
        if (self.max_size is None) == bounded:
            raise ConfigError(
                f"max_size {self.max_size} does not fit resize_mode {self.resize_mode}: "
                "edges (and model without resize_hw) need it, the others take none"
            )
        if self.size_multiple < 1 or (self.size_multiple > 1 and self.resize_mode != "edges"):
            raise ConfigError(
                f"size_multiple {self.size_multiple} applies to resize_mode edges only"
            )
        if self.max_size is not None and self.max_size < self.resize_size:
            raise ConfigError(f"max_size {self.max_size} is below resize_size {self.resize_size}")
        if not self.rescale_factor > 0:
            raise ConfigError(f"rescale factor must be > 0, got {self.rescale_factor}")
        object.__setattr__(self, "mean", _mean_std("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _mean_std("std", self.std, positive=True))


@dataclass(frozen=True)
class PreprocessOverrides:
    """User overrides of the weights' own preprocessing; ``None`` keeps the weights' value."""

    resize_size: int | None = None
    crop_size: int | None = None
    interpolation: Interpolation | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        # Checked here, up front, so that a bad flag fails before any model is resolved.
        if self.mean is not None:
            object.__setattr__(self, "mean", _mean_std("--mean", self.mean, positive=False))
        if self.std is not None:
            object.__setattr__(self, "std", _mean_std("--std", self.std, positive=True))

    def apply(self, base: PreprocessConfig) -> PreprocessConfig:
        """The one place where flags override the weights' preprocessing."""
        changes: dict[str, object] = {}
        if self.resize_size is not None:
            changes["resize_size"] = self.resize_size
            if base.resize_hw is not None:  # squash_crop, and SSD's fixed size
                changes["resize_hw"] = (self.resize_size, self.resize_size)
            if base.max_size is not None:  # the longer side's bound scales with it
                changes["max_size"] = round(base.max_size * self.resize_size / base.resize_size)
        if self.crop_size is not None:
            changes["crop_size"] = (self.crop_size, self.crop_size)
        if self.interpolation is not None:
            changes["interpolation"] = self.interpolation
        if self.mean is not None:
            changes["mean"] = self.mean
        if self.std is not None:
            changes["std"] = self.std
        return replace(base, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; validated on construction so engines can trust it."""

    inputs: tuple[str, ...]
    output: str
    model: str
    weights: str = "DEFAULT"
    labels: str | None = None
    engine: EngineName = "local"
    device: str = "auto"
    precision: Precision = "auto"
    #: Images per batch, or ``auto``: the best-throughput size that fits, measured per run;
    #: ``None``: 32 on the CPU, ``auto`` on CUDA (see :meth:`batch_size_for`).
    batch_size: BatchSize | None = None
    workers: int | None = None
    top_k: int = 5
    format: OutputFormat = "parquet"
    resume: bool = False
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Larger resized images (model inputs, or crops) are error rows, decided from the header.
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    #: Larger files and objects are error rows, decided from their size before reading.
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_error_rate: float = 0.1
    preprocess: PreprocessOverrides = field(default_factory=PreprocessOverrides)
    #: Reduced-size JPEG decoding of large images: faster, not bit-true to the reference.
    draft: bool = False
    channels_last: bool = True
    #: Where JPEGs are decoded and resized: ``cpu`` (worker processes), ``cuda`` (batched on
    #: the GPU, with per-image CPU fallback) or ``auto`` (cuda when the model runs on CUDA).
    decode_device: DecodeDevice = "cpu"
    #: Local engine, CPU decoding: ``N`` decodes in the model's process on N threads between
    #: model batches (the workers only read bytes); ``0`` decodes in the worker processes;
    #: ``None``: one thread per core when the model runs on the CPU, else 0.
    decode_threads: int | None = None
    #: Run the model through ``torch.compile``.
    compile: bool = False
    #: What runs the model: ``torch``, ``onnxruntime`` or ``openvino`` (exported once per
    #: run, CPU only), or ``auto`` (the fastest installed for the device).
    runtime: RuntimeName = "torch"
    #: ``--precision int8``: images of the input the quantization is calibrated on ...
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    #: ... and the images after them, held apart, on which its agreement with fp32 is
    #: measured before the run ...
    agreement_images: int = DEFAULT_AGREEMENT_IMAGES
    #: ... which must reach this (top-1 agreement; mean cosine for embeddings).
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    #: Fold BatchNorm layers into the convolutions before them (same results within float
    #: rounding, faster); models torch.fx cannot trace run as they are.
    fuse: bool = True
    seed: int = 0
    part_rows: int = 10_000
    flush_seconds: float = 30.0
    #: S3-compatible endpoint URL for s3:// inputs and output; defaults to AWS_ENDPOINT_URL_S3
    #: or AWS_ENDPOINT_URL from the environment this config is made in.
    s3_endpoint: str | None = field(default_factory=env_endpoint)
    #: Tries per S3 request (the first included); defaults to AWS_MAX_ATTEMPTS, else 5.
    s3_max_attempts: int = field(default_factory=env_max_attempts)
    task: TaskName | None = None
    normalize: bool = False
    mask_dir: str | None = None
    #: ``zero-shot``: the class names (``--classes``) or a file of them, one per line.
    classes: tuple[str, ...] = ()
    classes_file: str | None = None
    #: ``zero-shot``: each class name fills the ``{}`` of this text.
    prompt: str = DEFAULT_PROMPT
    #: detect: boxes scoring less are dropped (in the model's own post-processing).
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    #: detect: the most boxes kept per image, best first.
    max_detections: int = DEFAULT_MAX_DETECTIONS
    #: WebDataset shards: member extensions that hold the image, in order of preference.
    image_key: tuple[str, ...] = DEFAULT_IMAGE_KEYS
    #: Parquet shards: the column of image bytes (``None``: the one plausible column).
    image_column: str | None = None
    #: Parquet shards: the column of row ids (``None``: ``FILE#ROW``).
    id_column: str | None = None
    #: Shard columns (Parquet) or member extensions (tar) copied into the output rows.
    keep_columns: tuple[str, ...] = ()
    #: Read ``.parquet`` inputs as manifests of paths even where they hold image bytes.
    manifest: bool = False
    #: Ray engine only. ``None``: RAY_ADDRESS, else a local instance; or ``auto``, ``ray://h:p``.
    ray_address: str | None = None
    #: Ray engine only: seconds to reach ``ray_address`` before giving up (``None``:
    #: ``DEFAULT_RAY_CONNECT_TIMEOUT``).
    ray_connect_timeout: float | None = None
    #: Ray engine only: predictor actors, ``(n, n)`` fixed or ``(min, max)`` autoscaling.
    concurrency: tuple[int, int] | None = None
    #: Ray engine only: GPUs per predictor actor (``None``: 1 where the cluster has GPUs).
    num_gpus: float | None = None
    #: Ray engine only: CPUs per predictor actor (``None``: 1).
    num_cpus: float | None = None
    #: Show the engine's own progress bars and logs (Ray Data's).
    verbose: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            object.__setattr__(self, "inputs", (self.inputs,))
        object.__setattr__(self, "inputs", tuple(str(i) for i in self.inputs))
        object.__setattr__(self, "output", str(self.output))
        if not self.inputs:
            raise ConfigError("no INPUT given: pass a folder, glob, image file or manifest")
        if not self.output:
            raise ConfigError("--output is required")
        _choice("--engine", self.engine, ENGINES)
        _choice("--precision", self.precision, PRECISIONS)
        _choice("--runtime", self.runtime, RUNTIMES)
        if self.precision == "int8" and self.runtime == "torch":
            raise ConfigError(INT8_NEEDS_RUNTIME)
        if self.compile and self.runtime not in ("torch", "auto"):
            raise ConfigError(f"--compile applies to --runtime torch, not {self.runtime}")
        _positive("--calibration-images", self.calibration_images)
        _positive("--agreement-images", self.agreement_images)
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"--min-agreement must lie in [0, 1], got {self.min_agreement}")
        _choice("--format", self.format, OUTPUT_FORMATS)
        if self.task is not None:
            _choice("--task", self.task, TASKS)
        object.__setattr__(self, "classes", _names(self.classes))
        if self.mask_dir is not None:
            object.__setattr__(self, "mask_dir", str(self.mask_dir))
            if "://" in self.mask_dir:
                raise ConfigError(
                    f"--mask-dir {self.mask_dir!r}: mask files go to a local folder; for "
                    "S3 output leave --mask-dir out and the masks go into the parts' mask column"
                )
        object.__setattr__(self, "keep_columns", _names(self.keep_columns))
        keys = tuple(k.lstrip(".").lower() for k in _names(self.image_key))
        object.__setattr__(self, "image_key", keys)
        if not self.image_key:
            raise ConfigError("--image-key needs at least one extension, e.g. jpg,png")
        reserved = set(KEEP_RESERVED) & set(self.keep_columns)
        if reserved:
            raise ConfigError(
                f"--keep-columns {sorted(reserved)[0]!r}: the output has a column of that "
                "name already; keep other columns"
            )
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other; pick one")
        _check_batch_size(self.batch_size)
        _choice("--decode-device", self.decode_device, DECODE_DEVICES)
        _positive("--top-k", self.top_k)
        _positive("--max-detections", self.max_detections)
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(f"--score-threshold must lie in [0, 1], got {self.score_threshold}")
        _positive("--max-pixels", self.max_pixels)
        _positive("--max-input-pixels", self.max_input_pixels)
        _positive("--max-file-bytes", self.max_file_bytes)
        _positive("--part-rows", self.part_rows)
        if self.decode_threads is not None and self.decode_threads < 0:
            raise ConfigError(f"--decode-threads must be >= 0, got {self.decode_threads}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ConfigError(f"--max-error-rate must be in [0, 1], got {self.max_error_rate}")
        if self.flush_seconds <= 0:
            raise ConfigError(f"flush interval must be > 0 s, got {self.flush_seconds}")
        if self.s3_endpoint == "":
            object.__setattr__(self, "s3_endpoint", None)
        self.storage  # noqa: B018 - validates the endpoint and attempts now, not mid-run
        self._check_ray_options()

    @property
    def shards(self) -> ShardOptions:
        """How samples are found in shard inputs: what engines pass to their workers."""
        return ShardOptions(
            image_keys=self.image_key,
            image_column=self.image_column,
            id_column=self.id_column,
            keep_columns=self.keep_columns,
        )

    @property
    def storage(self) -> StorageOptions:
        """How to reach ``s3://`` inputs and output: what engines pass to their workers."""
        return StorageOptions(endpoint=self.s3_endpoint, max_attempts=self.s3_max_attempts)

    def _check_ray_options(self) -> None:
        given = [
            flag
            for flag, value in (
                ("--ray-address", self.ray_address),
                ("--ray-connect-timeout", self.ray_connect_timeout),
                ("--concurrency", self.concurrency),
                ("--num-gpus", self.num_gpus),
                ("--num-cpus", self.num_cpus),
            )
            if value is not None
        ]
        kind, _, index = self.device.partition(":")
        if self.engine == "ray" and kind == "cuda" and index.strip() not in ("", "0"):
            raise ConfigError(
                f"--device {self.device}: Ray gives each actor its own GPU(s) (how many: "
                "--num-gpus), which the actor sees as cuda:0; use --device cuda or auto"
            )
        if self.engine == "ray" and self.decode_device == "cuda":
            raise ConfigError(
                "--decode-device cuda applies to --engine local only; the Ray engine's actors "
                "decode on their CPU threads (use cpu or auto)"
            )
        if self.engine == "ray" and self.decode_threads is not None:
            raise ConfigError(
                f"--decode-threads {self.decode_threads} applies to --engine local only; with "
                "--engine ray, each actor decodes on its share of the cores (see --num-cpus)"
            )
        if self.engine == "ray" and self.workers is not None:
            raise ConfigError(
                f"--workers {self.workers} applies to --engine local only; with --engine ray, "
                "each actor decodes on its share of the cores (see --concurrency, --num-cpus)"
            )
        if given and self.engine != "ray":
            raise ConfigError(
                f"{', '.join(given)} only apply to --engine ray, not --engine {self.engine!r}"
            )
        if self.concurrency is not None:
            object.__setattr__(self, "concurrency", parse_concurrency(self.concurrency))
        for flag, value in (("--num-gpus", self.num_gpus), ("--num-cpus", self.num_cpus)):
            if value is not None and not value >= 0:
                raise ConfigError(f"{flag} must be >= 0, got {value}")
        if self.num_cpus == 0 and self.num_gpus == 0:
            raise ConfigError("--num-cpus 0 with --num-gpus 0 gives the predictor no resources")
        if self.ray_connect_timeout is not None and not self.ray_connect_timeout > 0:
            raise ConfigError(
                f"--ray-connect-timeout must be > 0 seconds, got {self.ray_connect_timeout}"
            )
        if self.ray_address is not None and not self.ray_address.strip():
            raise ConfigError("--ray-address is empty; give auto, HOST:PORT or ray://HOST:PORT")

    def batch_size_for(self, model_device: str) -> BatchSize:
        """``--batch-size``, or its default for a model on ``model_device`` (``cpu``...):
        32 on the CPU; ``auto`` on CUDA, where 32 images leave a large GPU mostly idle
        between batches and the size that fits depends on the GPU and the model."""
        if self.batch_size is not None:
            return self.batch_size
        return "auto" if model_device == "cuda" else DEFAULT_BATCH_SIZE

    def num_workers(self, model_device: str = "cpu") -> int:
        """Reader (and decoder) worker processes: ``--workers``, or one per usable core;
        with the model on CUDA two fewer (at least one), leaving a core each to the
        model's thread, which feeds the GPU, and to the loader's pin-memory thread."""
        if self.workers is not None:
            return self.workers
        cores = usable_cores()
        return max(1, cores - 2) if model_device == "cuda" else cores

    def num_decode_threads(self, model_device: str) -> int:
        """``--decode-threads``, or its default for a model on ``model_device`` (``cpu``...).

        On the CPU, decoding between model batches on every core beat decoding in worker
        processes alongside inference: the model's threads no longer wait for a core taken
        by a decoder at every layer (resnet50 on 2 cores: +4% images/s, -6% CPU per image;
        docs/benchmarks.md). On a GPU the workers' decoding overlaps the device's work.
        """
        if self.decode_threads is not None:
            return self.decode_threads
        return usable_cores() if model_device == "cpu" else 0


def usable_cores() -> int:
    """Cores this process may run on."""
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )


def parse_concurrency(value: str | int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    """``N`` (a fixed pool) or ``MIN,MAX`` (an autoscaling pool) as ``(min, max)``."""
    parts: list[object]
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, int):
        parts = [value]
    else:
        parts = list(value)
    try:
        nums = [int(p) for p in parts]  # type: ignore[call-overload]
    except (TypeError, ValueError):
        nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or nums[0] < 1 or nums[1] < nums[0]:
        raise ConfigError(
            f"--concurrency {value!r} is not valid; give N (a fixed pool of N >= 1 actors) "
            "or MIN,MAX with 1 <= MIN <= MAX (an autoscaling pool), e.g. 2 or 1,4"
        )
    return nums[0], nums[1]


def _check_batch_size(value: object) -> None:
    if value == "auto" or value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--batch-size {value!r} is not valid; choose a positive integer or auto")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class PredictOptions:
    """How to run the model; resolved values are recorded in the manifest."""

    device: str = "auto"
    precision: Precision = "auto"
    top_k: int = 5
    channels_last: bool = True
    normalize: bool = False
    #: Run the model through ``torch.compile`` (compiled on the first batch).
    compile: bool = False
    #: Fold BatchNorm layers into the convolutions before them (see :func:`fold_batch_norms`).
    fuse: bool = True
    #: detect: ``--score-threshold`` and ``--max-detections``.
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    max_detections: int = DEFAULT_MAX_DETECTIONS
    #: Test hook (``BATCHVISION_INJECT_OOM_ABOVE``): model calls on more images than this
    #: raise ``torch.cuda.OutOfMemoryError``, on any device.
    inject_oom_above: int | None = None

    @classmethod
    def from_config(cls, config: RunConfig) -> PredictOptions:
        """The options a run's config asks for; every engine builds its predictor from these."""
        return cls(
            device=config.device,
            precision=config.precision,
            top_k=config.top_k,
            channels_last=config.channels_last,
            normalize=config.normalize,
            compile=config.compile,
            fuse=config.fuse,
            score_threshold=config.score_threshold,
            max_detections=config.max_detections,
            inject_oom_above=_injected_oom_limit(),
        )


def _injected_oom_limit() -> int | None:
    from batchvision.stages.batching import injected_oom_limit

    return injected_oom_limit()


#: Output columns a kept input column may not replace.
KEEP_RESERVED = (
    "id", "path", "status", "error", "width", "height", "label", "score", "topk_ids",
    "topk_labels", "topk_scores", "embedding", "mask", "mask_path", "mask_width",
    "mask_height", "classes", "detections", "num_detections",
)  # fmt: skip


def _names(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``a,b`` or a sequence of names, as a tuple without blanks or repeats."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(v.strip() for v in items if v.strip()))
