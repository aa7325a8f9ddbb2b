"""The command line: parse flags into a RunConfig and call batchvision.run. No logic here."""

from __future__ import annotations

import logging
import shlex
import signal
import sys
from typing import Any

import click

from batchvision.config import (
    DECODE_DEVICES,
    DEFAULT_AGREEMENT_IMAGES,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_IMAGE_KEYS,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_INPUT_PIXELS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_PROMPT,
    DEFAULT_RAY_CONNECT_TIMEOUT,
    DEFAULT_SCORE_THRESHOLD,
    ENGINES,
    INTERPOLATIONS,
    OUTPUT_FORMATS,
    PRECISIONS,
    RUNTIMES,
    TASKS,
    TORCH_PRECISIONS,
)
from batchvision.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    BatchvisionError,
)

logger = logging.getLogger("batchvision")


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not comma-separated numbers, e.g. 0.5,0.5,0.5"
        ) from None


def _batch_size(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    if value.strip().lower() == "auto":
        return "auto"
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise click.BadParameter(f"{value} is not valid; choose an integer x>=1 or auto")
    return size


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchvision")
def cli() -> None:
    """Run PyTorch vision models over very large image collections."""


@cli.command("run")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "--model",
    "-m",
    required=True,
    help="Model name: resnet50, torchvision:NAME, hf:ORG/NAME, hf:/saved/dir, timm:NAME "
    "(see `batchvision models`).",
)
@click.option(
    "--task",
    type=click.Choice(TASKS),
    default=None,
    help="classify, segment, embed, zero-shot or detect [default: the model's own: "
    "segmentation models segment, detectors detect, classifiers classify, image-text models "
    "(CLIP, SigLIP) embed].",
)
@click.option(
    "--classes",
    default="",
    help="zero-shot: the class names, comma-separated (e.g. 'cat,dog,car').",
)
@click.option(
    "--classes-file",
    default=None,
    help="zero-shot: a UTF-8 file of class names, one per line (for names with commas).",
)
@click.option(
    "--prompt",
    default=DEFAULT_PROMPT,
    show_default=True,
    help="zero-shot: the text each class name fills in at {} (CLIP's own prompt style).",
)
@click.option("--normalize", is_flag=True, help="embed: L2-normalise the embeddings.")
@click.option(
    "--mask-dir",
    default=None,
    help="segment: write each mask as a PNG file here (named after the id) and put its "
    "path in mask_path, instead of the PNG bytes in mask.",
)
@click.option(
    "--score-threshold",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULT_SCORE_THRESHOLD,
    show_default=True,
    help="detect: drop boxes scoring less (applied in the model's own post-processing).",
)
@click.option(
    "--max-detections",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_DETECTIONS,
    show_default=True,
    help="detect: keep at most this many boxes per image, best first.",
)
@click.option(
    "--image-key",
    default=",".join(DEFAULT_IMAGE_KEYS),
    show_default=True,
    help="WebDataset shards: member extensions that hold the image, in order of preference.",
)
@click.option(
    "--image-column",
    default=None,
    help="Parquet shards: the column of image bytes (binary, or a struct with a 'bytes' "
    "field) [default: the one such column].",
)
@click.option(
    "--id-column",
    default=None,
    help="Parquet shards: the column of row ids [default: FILE#ROW].",
)
@click.option(
    "--keep-columns",
    default="",
    help="Copy these input columns into the output rows, e.g. url,caption (Parquet "
    "columns; for WebDataset shards, members by extension, e.g. txt,json, as text).",
)
@click.option(
    "--manifest",
    is_flag=True,
    help="Read .parquet inputs as manifests (a path column) even where they hold image bytes.",
)
@click.option(
    "--output",
    "-o",
    required=True,
    help="Output folder or s3://bucket/prefix for part files and _manifest.json.",
)
@click.option(
    "--weights",
    "-w",
    default="DEFAULT",
    show_default=True,
    help="DEFAULT, an enum name (IMAGENET1K_V2, ResNet50_Weights.IMAGENET1K_V1), "
    "random, or a checkpoint file (.pt/.pth/.safetensors).",
)
@click.option("--labels", default=None, help="Class names, one per line (for checkpoints).")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto, cpu, cuda or cuda:N (--engine ray: cuda, each actor's own GPU).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="auto: bf16 where the device runs it natively, else fp32 (fp32 for --runtime "
    "onnxruntime). fp32 on CUDA lets matmuls and convolutions use TF32 tensor cores "
    "(Ampere and newer; NVIDIA_TF32_OVERRIDE=0 for IEEE fp32 throughout). "
    "int8: post-training static quantization, --runtime onnxruntime or "
    "openvino only, calibrated on the input's first --calibration-images images and "
    "refused when its agreement with fp32 falls below --min-agreement.",
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="torch",
    show_default=True,
    help="What runs the model. onnxruntime and openvino (CPU only; extras batchvision[onnx], "
    "batchvision[openvino]) run a copy exported once per run and cached in "
    "$BATCHVISION_CACHE_DIR (default ~/.cache/batchvision); auto: the fastest of these "
    "installed (openvino, then onnxruntime) on the CPU, torch on a GPU.",
)
@click.option(
    "--calibration-images",
    type=click.IntRange(min=1),
    default=DEFAULT_CALIBRATION_IMAGES,
    show_default=True,
    help="--precision int8: the input's first N decodable images calibrate the quantization.",
)
@click.option(
    "--agreement-images",
    type=click.IntRange(min=1),
    default=DEFAULT_AGREEMENT_IMAGES,
    show_default=True,
    help="--precision int8: the N images after the calibration images, held apart, on which "
    "agreement with fp32 is measured before the run.",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULT_MIN_AGREEMENT,
    show_default=True,
    help="--precision int8: the least top-1 agreement with fp32 (mean cosine for --task "
    "embed) on the held-apart images; below it the run is refused (exit 2).",
)
@click.option(
    "--batch-size",
    "-b",
    callback=_batch_size,
    default=None,
    metavar="N|auto",
    help="Images per batch; auto: the size with the best throughput that fits the device, "
    "measured once per run. Out of device memory, a batch is split in halves and retried "
    "(and grows back once batches fit again).  [default: 32 on the CPU, auto on CUDA]",
)
@click.option(
    "--workers",
    "-j",
    type=click.IntRange(min=0),
    default=None,
    help="Decode worker processes [default: number of cores].",
)
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(OUTPUT_FORMATS),
    default="parquet",
    show_default=True,
    help="Part file format; lance: a Lance dataset OUTPUT/results.lance, committed at the end "
    "of the run (needs pip install 'batchvision[lance]').",
)
@click.option("--resume", is_flag=True, help="Skip ids already in OUTPUT and finish the rest.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run's output in OUTPUT.")
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Larger images are error rows (too_large, decided from the header before decoding). "
    "This is the one pixel limit: Pillow's own is not applied.",
)
@click.option(
    "--max-input-pixels",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_INPUT_PIXELS,
    show_default=True,
    help="Images whose resize would exceed this many pixels are error rows (too_large, "
    "decided from the header). Only an uncropped resize (segmentation models' shorter "
    "side) follows the aspect ratio: at 520 a 4:3 photo is 0.36 megapixels, but a 4000x40 "
    "banner 27; a crop is always its own size.",
)
@click.option(
    "--max-file-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_FILE_BYTES,
    show_default=True,
    help="Larger files and S3 objects are error rows (too_large), decided from their size "
    "before reading; a read never goes past it, even if the file grows. Only regular files "
    "are read (FIFOs, devices, sockets, folders: not_a_file).",
)
@click.option(
    "--max-error-rate",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Exit 3 when a larger fraction of images fail.",
)
@click.option(
    "--resize-size",
    type=click.IntRange(min=1),
    default=None,
    help="Override the weights' resize (shorter side).",
)
@click.option(
    "--crop-size",
    type=click.IntRange(min=1),
    default=None,
    help="Override the weights' center crop.",
)
@click.option(
    "--interpolation",
    type=click.Choice(INTERPOLATIONS),
    default=None,
    help="Override the weights' resize interpolation.",
)
@click.option("--mean", callback=_floats, default=None, help="Override mean, e.g. 0.5,0.5,0.5.")
@click.option("--std", callback=_floats, default=None, help="Override std, e.g. 0.5,0.5,0.5.")
@click.option(
    "--draft/--no-draft",
    default=False,
    show_default=True,
    help="Decode JPEGs at least 4x the model's resize at reduced size (1/2, 1/4, 1/8), "
    "then resize: faster on large photos, but scores move slightly (see "
    "docs/benchmarks.md); off by default, so results match the model's reference code.",
)
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option(
    "--decode-device",
    type=click.Choice(DECODE_DEVICES),
    default="cpu",
    show_default=True,
    help="Where JPEGs are decoded and resized: cpu (worker processes), cuda (batched on the "
    "GPU; what it cannot read falls back to the CPU decoder per image), auto (cuda when the "
    "model runs on CUDA). --engine local only.",
)
@click.option(
    "--decode-threads",
    type=click.IntRange(min=0),
    default=None,
    help="Local engine, CPU decoding: N decodes in the model's process on N threads between "
    "model batches (the workers only read files); 0 decodes in the worker processes "
    "[default: one per core when the model runs on the CPU, else 0].",
)
@click.option(
    "--compile/--no-compile",
    default=False,
    show_default=True,
    help="Run the model through torch.compile (compiles on the first batch).",
)
@click.option(
    "--fuse/--no-fuse",
    default=True,
    show_default=True,
    help="Fold BatchNorm layers into the convolutions before them: the same results within "
    "float rounding, faster. Models torch.fx cannot trace run as they are.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --weights random.")
@click.option(
    "--part-rows",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Local engine: commit a part once this many rows are buffered (parts end on batch "
    "boundaries; a part is also committed every 30 s). --engine ray: inputs per unit of work, "
    "each committed whole as one part.",
)
@click.option(
    "--s3-endpoint",
    default=None,
    metavar="URL",
    help="S3-compatible store for s3:// paths, e.g. http://127.0.0.1:9000 "
    "[default: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS].",
)
@click.option(
    "--s3-max-attempts",
    type=click.IntRange(min=1),
    default=None,
    help="Tries per S3 request before a read becomes an error row "
    "[default: AWS_MAX_ATTEMPTS, else 5].",
)
@click.option(
    "--ray-address",
    default=None,
    help="--engine ray: the cluster to attach to (auto, HOST:PORT, ray://HOST:PORT) "
    "[default: RAY_ADDRESS, else a local Ray instance].",
)
@click.option(
    "--ray-connect-timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="--engine ray: how long to try reaching --ray-address before exit 2: nothing "
    "listening fails after this; a listener that is not a Ray cluster after about this "
    f"plus 7 s [default: {DEFAULT_RAY_CONNECT_TIMEOUT:g}].",
)
@click.option(
    "--concurrency",
    default=None,
    metavar="N|MIN,MAX",
    help="--engine ray: worker actors, N (fixed) or MIN,MAX (autoscaling) "
    "[default: 1..GPUs, or 1..CPUs/4 without GPUs].",
)
@click.option(
    "--num-gpus",
    type=float,
    default=None,
    help="--engine ray: GPUs per worker actor [default: 1 where the cluster has GPUs and "
    "--device is not cpu, else 0].",
)
@click.option(
    "--num-cpus",
    type=float,
    default=None,
    help="--engine ray: CPUs reserved per worker actor [default: 1]; an actor decodes and "
    "runs torch on its share of the cluster's cores, up to one node's.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or progress lines.")
@click.option(
    "--verbose", "-v", is_flag=True, help="More log output (and Ray Data's own progress bars)."
)
def run_cmd(inputs: tuple[str, ...], quiet: bool, verbose: bool, **opts: Any) -> None:
    """Classify, segment or embed every image of INPUT (folders, globs, image files,
    .txt/.csv/.parquet manifests, WebDataset .tar shards, Parquet files of image bytes).

    Each INPUT, and the output, may be local or s3://bucket/prefix (s3://anonymous@bucket/...
    for public buckets); credentials come from the AWS environment and config files.
    """
    from batchvision import api
    from batchvision.config import PreprocessOverrides, RunConfig
    from batchvision.progress import ProgressDisplay

    _setup_logging(verbose)
    if not quiet:  # the Ray engine's start-up lines: where it runs, the cluster's resources
        logging.getLogger("batchvision.engines.ray").setLevel(logging.INFO)
    overrides = PreprocessOverrides(
        resize_size=opts.pop("resize_size"),
        crop_size=opts.pop("crop_size"),
        interpolation=opts.pop("interpolation"),
        mean=opts.pop("mean"),
        std=opts.pop("std"),
    )
    for name in ("s3_endpoint", "s3_max_attempts"):  # unset: RunConfig reads the environment
        if opts[name] is None:
            del opts[name]
    config = RunConfig(
        inputs=inputs, format=opts.pop("fmt"), preprocess=overrides, verbose=verbose, **opts
    )
    display = ProgressDisplay.for_terminal(quiet)
    try:
        summary = api.run(config, progress=display)
    finally:
        display.close()
    click.echo(format_summary(summary))
    if summary.interrupted:
        if summary.terminated:
            click.echo("terminated (SIGTERM): completed rows are written")
        click.echo(f"interrupted; to finish, run:\n  {resume_command(sys.argv)}")
    elif summary.exit_code:
        click.echo(
            f"error rate {summary.error_rate:.1%} exceeds --max-error-rate "
            f"{summary.max_error_rate:.1%}: exit {summary.exit_code}",
            err=True,
        )
    sys.exit(summary.exit_code)


def format_summary(s: Any) -> str:
    """The end-of-run summary block."""
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in s.stage_seconds.items())
    lines = [
        f"{s.processed} images in {s.wall_seconds:.1f} s ({s.images_per_second:.1f} img/s) "
        f"on {s.device or '?'} ({s.precision or '?'})",
        f"  ok {s.ok}, error {s.error}, skipped {s.skipped} (hidden or not an image name)"
        + (f", already done {s.already_done}" if s.already_done else ""),
    ]
    if s.error_codes:
        lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in s.error_codes.items()))
    lines.append(f"  stages: {stages} (read, and decode in worker processes, summed over workers)")
    lines.append(f"  output: {s.output}")
    return "\n".join(lines)


def resume_command(argv: list[str]) -> str:
    """The command line that resumes this run."""
    args = [a for a in argv[1:] if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["batchvision", *args])


@cli.command("models")
@click.option("--source", default=None, help="Only this source (torchvision, hf, timm).")
@click.option("--all", "show_all", is_flag=True, help="List every model (timm has hundreds).")
def models_cmd(source: str | None, show_all: bool) -> None:
    """List the model sources, their tasks, how to name a model, and the models."""
    from batchvision.errors import ConfigError
    from batchvision.models.registry import list_sources

    sources = list_sources()
    if source and source not in sources:
        raise ConfigError(f"unknown source {source!r}; valid: {', '.join(sources)}")
    click.echo(
        "tasks: classify (top-k labels), segment (class mask per pixel), embed (features), "
        "zero-shot (top-k of --classes, image-text models), detect (boxes per image)"
    )
    for src, impl in sources.items():
        if source and src != source:
            continue
        click.echo(f"\n{src}: {impl.naming}")
        infos = impl.list_models()
        shown = infos if show_all or source or len(infos) <= 120 else infos[:10]
        for info in shown:
            weights = ", ".join(info.weights) or "(no pretrained weights: random or a checkpoint)"
            click.echo(f"  {info.name:<28} {info.task:<15} {weights}")
        if len(shown) < len(infos):
            click.echo(f"  ... {len(infos) - len(shown)} more: batchvision models --source {src}")


@cli.command("demo")
@click.option("--output", "-o", default="demo-output", show_default=True)
@click.option("--per-class", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--quiet", "-q", is_flag=True)
def demo_cmd(output: str, per_class: int, quiet: bool) -> None:
    """Offline demo: generate labelled images, classify them with the bundled model."""
    from batchvision.demo.runner import run_demo
    from batchvision.progress import ProgressDisplay

    _setup_logging(False)
    display = ProgressDisplay.for_terminal(quiet)
    try:
        report = run_demo(output, per_class=per_class, progress=display)
    finally:
        display.close()
    click.echo(format_summary(report.summary))
    click.echo(
        f"demo accuracy: {report.accuracy:.1%} ({report.correct}/{report.total}) on "
        f"{len(report.classes)} classes; predictions in {report.summary.output}"
    )
    sys.exit(0 if report.accuracy >= 0.95 else 1)


@cli.command("report")
@click.argument("output_dir", metavar="OUTPUT_DIR")
@click.option(
    "--html",
    default=None,
    help="The report file [default: OUTPUT_DIR/_report.html, a name that readers of the "
    "folder's parquet skip; required for an s3:// OUTPUT_DIR].",
)
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Gallery images, drawn uniformly at random (seeded) from the rows shown.",
)
@click.option(
    "--label",
    default=None,
    help="Gallery of images with this predicted label only (segmentation: class present).",
)
@click.option(
    "--errors",
    is_flag=True,
    help="Gallery of error rows instead of ok rows (errors are always listed by code).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample.")
@click.option(
    "--s3-endpoint",
    default=None,
    metavar="URL",
    help="S3-compatible store for an s3:// OUTPUT_DIR and images "
    "[default: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS].",
)
@click.option("--verbose", "-v", is_flag=True, help="More log output.")
def report_cmd(output_dir: str, verbose: bool, **opts: Any) -> None:
    """Write a self-contained HTML report of OUTPUT_DIR (a folder `batchvision run` wrote)."""
    from batchvision.report import ReportConfig, build_report

    _setup_logging(verbose)
    if opts["s3_endpoint"] is None:  # unset: ReportConfig reads the environment
        del opts["s3_endpoint"]
    result = build_report(ReportConfig(output_dir=output_dir, **opts))
    click.echo(
        f"{result.rows} rows (ok {result.ok}, error {result.error}), {result.sampled} sampled, "
        f"in {result.seconds:.1f} s"
    )
    click.echo(result.html)


@cli.command("bench")
@click.argument("input_", required=False, metavar="[INPUT]")
@click.option("--model", "-m", required=True, help="Model name, as for `run` (a classifier).")
@click.option(
    "--weights",
    "-w",
    default="DEFAULT",
    show_default=True,
    help="As for `run`; `random` needs no download (speed figures are the same).",
)
@click.option("--labels", default=None, help="Class names, one per line (for checkpoints).")
@click.option(
    "--synthetic",
    type=click.IntRange(min=1),
    default=None,
    help="Generate N photo-like JPEGs (cached under --out) instead of reading INPUT "
    "[default without INPUT: 1000, or 24 with --smoke].",
)
@click.option(
    "--images",
    type=click.IntRange(min=1),
    default=None,
    help="Measure on the first N images of INPUT only [default: all, or 24 with --smoke].",
)
@click.option(
    "--image-size",
    default=None,
    metavar="WxH",
    help="Size of --synthetic images [default: 500x375, or 320x240 with --smoke].",
)
@click.option(
    "--batch-sizes",
    default=None,
    metavar="B[,B...]",
    help="Batch sizes; every throughput measurement runs at each [default: 32, or 8 with --smoke].",
)
@click.option(
    "--engines",
    default=None,
    metavar="NAMES",
    help=f"batchvision engines to run end to end: {', '.join(ENGINES)}, all or none "
    "[default: all, or local with --smoke].",
)
@click.option(
    "--strategies",
    default=None,
    metavar="NAMES",
    help="The seeds' ways of running inference on Ray, reproduced: sequential, ray_tasks, "
    "ray_actors, actor_pool, ray_data, all or none [default: all, or sequential,ray_data "
    "with --smoke].",
)
@click.option("--precision", type=click.Choice(TORCH_PRECISIONS), default="auto", show_default=True)
@click.option(
    "--runtimes",
    default=None,
    metavar="RUNTIME[:PRECISION],...",
    help="Also measure these runtimes, model only and end to end (local engine), each with "
    "its parity figure, e.g. onnxruntime:fp32,openvino,openvino:int8 [default: none].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--workers",
    "-j",
    type=click.IntRange(min=0),
    default=None,
    help="Local engine decode workers [default: number of cores].",
)
@click.option(
    "--parity-images",
    type=click.IntRange(min=0),
    default=None,
    help="Images scored against the fp32 reference; 0 skips [default: 32, or 8 with --smoke].",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=None,
    help="Model-only warm-up batches [default: 2, or 1 with --smoke].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Image and weights seed.")
@click.option(
    "--memory-check",
    is_flag=True,
    help="Instead of throughput: run the local engine end to end on each --memory-sizes "
    "image count and compare peak memory (flat: within 10%).",
)
@click.option(
    "--memory-sizes",
    default=None,
    metavar="N[,N...]",
    help="Image counts of --memory-check; larger counts repeat the images under new names "
    "[default: 1000,20000, or 40,120 with --smoke].",
)
@click.option(
    "--out",
    "-o",
    default="bench-output",
    show_default=True,
    help="Folder for bench.json, bench.png, logs/ and generated images.",
)
@click.option(
    "--smoke",
    is_flag=True,
    help="A check that finishes in about a minute: smaller defaults (see each option).",
)
@click.option("--quiet", "-q", is_flag=True, help="Only the table, no progress lines.")
def bench_cmd(input_: str | None, quiet: bool, smoke: bool, **opts: Any) -> None:
    """Measure throughput and peak memory: decode only, model only, each engine end to
    end, and the seed tutorials' five Ray strategies, on the same images and model.

    INPUT is a local folder of images, a manifest, or WebDataset or Parquet shards (their
    images are measured as files); without it, --synthetic images are
    generated. Prints a table and writes bench.json and bench.png to --out.
    """
    from batchvision.bench import format_table, make_config, run_bench
    from batchvision.bench.options import STRATEGIES, parse_ints, parse_names, parse_size

    _setup_logging(False)
    if not quiet:
        logging.getLogger("batchvision.bench").setLevel(logging.INFO)
    config = make_config(
        smoke=smoke,
        input=input_,
        batch_sizes=parse_ints("--batch-sizes", opts.pop("batch_sizes")),
        memory_sizes=parse_ints("--memory-sizes", opts.pop("memory_sizes")),
        engines=parse_names("--engines", opts.pop("engines"), ENGINES),
        strategies=parse_names("--strategies", opts.pop("strategies"), STRATEGIES),
        runtimes=tuple(r for r in (opts.pop("runtimes") or "").split(",") if r),
        image_size=parse_size(opts.pop("image_size")),
        **opts,
    )
    report = run_bench(config)
    click.echo(format_table(report))
    click.echo(f"\nwrote {report['report']} and {report['chart']} (logs in {report['logs']})")
    if not report["ok"]:
        click.echo("batchvision: error: some measurements failed (see the table)", err=True)
        sys.exit(EXIT_INTERNAL)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="batchvision: %(levelname)s: %(message)s" if verbose else "batchvision: %(message)s",
        stream=sys.stderr,
    )


def _honour_sigint() -> None:
    """Stop on SIGINT even when started with it ignored.

    A shell without job control (a script, ``cmd &``) starts background jobs with SIGINT
    ignored, and Python keeps it so: a scheduler's or wrapper's ``kill -INT`` would then be
    ignored for the whole run. A batch run stops cleanly and can be resumed, so honour it.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every user error is one line on stderr and exit code 2."""
    from batchvision.interrupts import Terminated, sigterm_interrupts

    _honour_sigint()
    try:
        with sigterm_interrupts():
            rc = cli.main(args=argv, prog_name="batchvision", standalone_mode=False)
    except click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        click.echo(f"batchvision: error: {e.format_message()}{hint}", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as e:
        click.echo(f"batchvision: error: {e.format_message()}", err=True)
        sys.exit(EXIT_USAGE)
    except BatchvisionError as e:
        click.echo(f"batchvision: error: {e}", err=True)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.Abort) as e:
        # click turns an interrupt while it prompts or parses into Abort, from the interrupt.
        if isinstance(e, Terminated) or isinstance(e.__cause__, Terminated):
            click.echo("batchvision: terminated (SIGTERM)", err=True)
            sys.exit(EXIT_TERMINATED)
        click.echo("batchvision: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception:
        logger.exception("internal error (please report this with the traceback above)")
        sys.exit(EXIT_INTERNAL)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
