"""The command line as a user meets it: exit codes, one-line errors, summary, progress."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from PIL import Image

from batchvision.demo import synth
from tests.conftest import run_cli

SMALL = ("--resize-size", "64", "--crop-size", "64")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Child processes inherit this: a few shared cores, oversubscribed threads are 10x slower.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (96, 72)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    synth.photo_like(np.random.default_rng(seed), size).save(path, "JPEG", quality=90)


@pytest.fixture(scope="module")
def few_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("few")
    for i in range(3):
        _jpeg(root / f"good_{i}.jpg", seed=i)
    return root


@pytest.fixture(scope="module")
def model_args(tiny_checkpoint: tuple[Path, Path]) -> list[str]:
    ckpt, labels = tiny_checkpoint
    return ["--model", "mobilenet_v3_small", "--weights", str(ckpt), "--labels", str(labels)]


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("batchvision: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


# --- usage errors: one line, exit 2, nothing created ---------------------------------------

Case = Callable[[Path, Path, list[str]], tuple[list[str], list[str]]]


def _missing_input(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    missing = str(tmp / "no_such_folder")
    return [missing, *m], [repr(missing), "does not exist", "folder, glob, image or manifest"]


def _unknown_model(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    return [str(few), "--model", "resnt50"], [
        "'resnt50'",
        "did you mean resnet50",
        "valid:",
        "mobilenet_v3_small",
    ]


def _unknown_weights(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    args = [str(few), "--model", "resnet18", "--weights", "IMAGENET1K_V9"]
    return args, ["'IMAGENET1K_V9'", "'resnet18'", "DEFAULT", "IMAGENET1K_V1", "random"]


def _bad_precision(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    return [str(few), *m, "--precision", "fp8"], ["--precision", "'fp8'", "'fp32'", "'bf16'"]


def _bad_format(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    return [str(few), *m, "--format", "xml"], ["--format", "'xml'", "'parquet'", "'jsonl'"]


def _zero_batch(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    return [str(few), *m, "--batch-size", "0"], ["--batch-size", "0 is not", "x>=1"]


def _top_k_too_big(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    return [str(few), *m, "--top-k", "11"], ["--top-k 11", "10 classes", "1..10"]


def _cuda(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    return [str(few), *m, "--device", "cuda"], ["--device 'cuda'", "no CUDA GPU", "cpu", "auto"]


def _nan_std(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    # Accepted before, it gave every image an ok row with NaN scores.
    return [str(few), *m, "--std", "nan,nan,nan"], ["--std nan,nan,nan", "finite", "> 0"]


def _resume_overwrite(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    return [str(few), *m, "--resume", "--overwrite"], ["--resume", "--overwrite"]


def _csv_without_path(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    manifest = tmp / "list.csv"
    manifest.write_text("file,label\ngood_0.jpg,cat\n")
    return [str(manifest), *m], [repr(str(manifest)), "no 'path' column", "'file'", "'label'"]


def _parquet_int_paths(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = tmp / "list.parquet"
    pq.write_table(pa.table({"path": pa.array([1, 2], pa.int64())}), manifest)
    return [str(manifest), *m], [repr(str(manifest)), "'path' column of int64", "text (string)"]


def _empty_manifest(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    manifest = tmp / "list.csv"
    manifest.write_text("path,label\n")
    return [str(manifest), *m], [repr(str(manifest)), "lists no images"]


def _duplicate_ids(tmp: Path, few: Path, m: list[str]) -> tuple[list[str], list[str]]:
    for name in ("one", "two"):
        _jpeg(tmp / name / "same.jpg", seed=5)
        _jpeg(tmp / name / f"only_{name}.jpg", seed=6)
    return [str(tmp / "one"), str(tmp / "two"), *m], ["duplicate ids", "'same.jpg'"]


CASES: dict[str, Case] = {
    "missing_input": _missing_input,
    "unknown_model": _unknown_model,
    "unknown_weights": _unknown_weights,
    "bad_precision": _bad_precision,
    "bad_format": _bad_format,
    "zero_batch_size": _zero_batch,
    "top_k_too_big": _top_k_too_big,
    "cuda_without_gpu": _cuda,
    "nan_std": _nan_std,
    "resume_with_overwrite": _resume_overwrite,
    "csv_manifest_without_path": _csv_without_path,
    "duplicate_ids": _duplicate_ids,
    "parquet_manifest_int_paths": _parquet_int_paths,
    "empty_manifest": _empty_manifest,
}


@pytest.fixture(scope="module")
def usage_errors(
    tmp_path_factory: pytest.TempPathFactory, few_dir: Path, model_args: list[str]
) -> dict[str, tuple[subprocess.CompletedProcess[str], Path, list[str]]]:
    """Every case run once, a few at a time (each pays for importing torch)."""
    prepared = {}
    for case, make in CASES.items():
        tmp = tmp_path_factory.mktemp(case)
        args, needles = make(tmp, few_dir, model_args)
        prepared[case] = (["run", *args, "-o", str(tmp / "out")], tmp / "out", needles)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {c: pool.submit(run_cli, *a, timeout=120) for c, (a, _, _) in prepared.items()}
        return {c: (futures[c].result(), out, needles) for c, (_, out, needles) in prepared.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_usage_error_is_one_line_exit_2(
    case: str,
    usage_errors: dict[str, tuple[subprocess.CompletedProcess[str], Path, list[str]]],
) -> None:
    if case == "cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc, out, needles = usage_errors[case]
    line = _assert_one_line_error(proc, *needles)
    if case == "duplicate_ids":
        assert "'only_one.jpg'" not in line and "'only_two.jpg'" not in line
    assert not out.exists(), f"{case}: the output folder was created before the error"


def test_missing_output_is_one_line_exit_2(few_dir: Path, model_args: list[str]) -> None:
    _assert_one_line_error(run_cli("run", str(few_dir), *model_args), "Missing option", "--output")


def _offline_env(tmp_path: Path, network: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty weight caches; ``refused``: every download goes to a proxy that refuses
    connections (offline on any machine); ``none``: this machine's own network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    if network == "refused":
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]  # closed again at once: connections are refused
        for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{port}")


OFFLINE_NEEDLES = {
    "resnet18": [
        "cannot download ResNet18_Weights.IMAGENET1K_V1: download.pytorch.org cannot be reached",
        "offline",
        "--weights PATH",
        "--weights random",
        "resnet18-f37072fd.pth",
        "torch hub cache",
    ],
    "timm:resnet18": [
        "cannot download timm weights for 'resnet18': huggingface.co cannot be reached",
        "offline",
        "--weights PATH",
        "--weights random",
    ],
    "hf:microsoft/resnet-50": [
        "cannot load Hugging Face model 'microsoft/resnet-50': huggingface.co cannot be reached",
        "offline",
        "save_pretrained",
        "hf:/that/folder",
    ],
}


@pytest.mark.parametrize("network", ["refused", "none"])
@pytest.mark.parametrize("model", list(OFFLINE_NEEDLES))
def test_pretrained_weights_offline(
    tmp_path: Path, few_dir: Path, model: str, network: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, every source says so in one line and exit 2, without the libraries' retries."""
    if network == "none":
        try:
            socket.getaddrinfo("download.pytorch.org", 443)
        except OSError:
            pass
        else:
            pytest.skip("this machine is online; its own network cannot show the offline case")
    _offline_env(tmp_path, network, monkeypatch)
    out = tmp_path / "out"
    # Bounded: before, timm and hf retried for 30-60 s, one log line per retry (twice each).
    proc = run_cli("run", str(few_dir), "--model", model, "-o", str(out), timeout=90)
    line = _assert_one_line_error(proc, *OFFLINE_NEEDLES[model])
    if model == "resnet18":
        assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in line
    assert not out.exists()
    assert not list(tmp_path.rglob("*.pth")), "a partial download was left in a cache"


def test_manifest_row_without_path_is_an_error_row(
    tmp_path: Path, few_dir: Path, model_args: list[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = tmp_path / "list.parquet"
    paths = [str(few_dir / "good_0.jpg"), None, str(few_dir / "good_1.jpg")]
    pq.write_table(pa.table({"path": pa.array(paths, pa.string())}), manifest)
    out = tmp_path / "out"
    args = [*model_args, *SMALL, "--workers", "0", "--max-error-rate", "0.5", "--quiet"]
    proc = run_cli("run", str(manifest), *args, "-o", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(out)
    assert sorted(rows) == sorted([paths[0], paths[2], f"{manifest}#row=2"])
    bad = rows[f"{manifest}#row=2"]
    assert bad["status"] == "error" and bad["path"] == ""
    assert bad["error"] == "bad_manifest_row: this manifest row has no path (empty or null)"
    assert rows[paths[0]]["status"] == rows[paths[2]]["status"] == "ok"


# --- listing and help ----------------------------------------------------------------------


def test_models_lists_resnet50_with_weights() -> None:
    proc = run_cli("models", timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert "ResNet50_Weights.IMAGENET1K_V1" in rows["resnet50"]
    assert "ResNet50_Weights.IMAGENET1K_V2" in rows["resnet50"]
    assert "classify" in rows["mobilenet_v3_small"]
    assert len(rows) > 50
    assert proc.stderr == ""


def test_run_help() -> None:
    proc = run_cli("run", "--help", timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("Usage: batchvision run [OPTIONS] INPUT...")
    for flag in ("--model", "--output", "--weights", "--resume", "--overwrite", "--max-error-rate"):
        assert flag in proc.stdout


# --- runs: error budget, summary, progress, warnings -----------------------------------------


@pytest.fixture(scope="module")
def mixed_runs(
    tmp_path_factory: pytest.TempPathFactory, model_args: list[str]
) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    """3 good and 2 corrupt images, run with the default error budget (no --quiet) and 0.5."""
    root = tmp_path_factory.mktemp("mixed")
    src = root / "in"
    for i in range(3):
        _jpeg(src / f"good_{i}.jpg", seed=10 + i)
    (src / "empty.jpg").write_bytes(b"")
    (src / "words.jpg").write_text("not a jpeg")
    common = ["run", str(src), *model_args, *SMALL, "-b", "4", "--workers", "1", "--top-k", "2"]
    extra = {"default": [], "lenient": ["--max-error-rate", "0.5", "--quiet"]}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_cli, *common, "-o", str(root / name), *flags, timeout=120)
            for name, flags in extra.items()
        }
        return {name: (futures[name].result(), root / name) for name in extra}


def _rows(out: Path) -> dict[str, dict[str, object]]:
    return {r["id"]: r for r in ds.dataset(out, format="parquet").to_table().to_pylist()}


def test_too_many_errors_exit_3_writes_every_row(
    mixed_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    proc, out = mixed_runs["default"]
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "error rate 40.0% exceeds --max-error-rate 10.0%: exit 3" in proc.stderr
    rows = _rows(out)
    assert sorted(rows) == ["empty.jpg", "good_0.jpg", "good_1.jpg", "good_2.jpg", "words.jpg"]
    assert [rows[i]["status"] for i in sorted(rows)] == ["error", "ok", "ok", "ok", "error"]
    assert str(rows["empty.jpg"]["error"]).startswith("empty:")
    assert str(rows["words.jpg"]["error"]).startswith("not_image:")


def test_error_budget_raised_exit_0(
    mixed_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    proc, out = mixed_runs["lenient"]
    assert proc.returncode == 0, proc.stderr
    assert "exceeds" not in proc.stderr
    assert len(_rows(out)) == 5


def test_summary_counts_and_stage_times(
    mixed_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    for proc, out in mixed_runs.values():
        lines = proc.stdout.splitlines()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        assert lines[0].startswith("5 images in ") and "img/s" in lines[0]
        assert f" on {device}" in lines[0]
        assert "ok 3, error 2, skipped 0" in proc.stdout
        assert (
            "errors: " in proc.stdout and "empty 1" in proc.stdout and "not_image 1" in proc.stdout
        )
        (stages,) = [line for line in lines if line.strip().startswith("stages:")]
        for stage in ("read", "decode", "inference", "write"):
            assert f"{stage} " in stages and " s" in stages, stages
        assert f"output: {out}" in proc.stdout


def test_progress_lines_without_terminal_and_quiet(
    mixed_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    logged, _ = mixed_runs["default"]  # stderr is a pipe: log lines, no bar
    progress = [line for line in logged.stderr.splitlines() if "progress:" in line]
    assert progress, logged.stderr
    assert all(line.startswith("batchvision: progress: ") for line in progress)
    assert "\r" not in logged.stderr  # no tqdm bar redraws
    quiet, _ = mixed_runs["lenient"]
    assert "progress:" not in quiet.stderr and "progress:" not in quiet.stdout
    assert quiet.stderr == ""


def test_random_weights_warning(
    tmp_path: Path, few_dir: Path, tiny_checkpoint: tuple[Path, Path]
) -> None:
    labels = tiny_checkpoint[1]
    out = tmp_path / "out"
    proc = run_cli(
        "run",
        str(few_dir),
        "--model",
        "mobilenet_v3_small",
        "--weights",
        "random",
        "--labels",
        str(labels),
        *SMALL,
        "-o",
        str(out),
        "--workers",
        "0",
        "-q",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "RANDOM WEIGHTS" in line]
    assert len(warnings) == 1
    assert "predictions are meaningless" in warnings[0]
    rows = _rows(out)
    assert len(rows) == 3
    assert {r["label"] for r in rows.values()} <= set(labels.read_text().split())


# --- inputs that must not stop, hang or sink a run -----------------------------------------


def test_odd_files_and_names_cost_one_row_each_resume_and_report(
    tmp_path: Path, model_args: list[str]
) -> None:
    root = tmp_path / "in"
    for i in range(3):
        _jpeg(root / f"good_{i}.jpg", seed=i)
    latin1 = os.fsencode(root) + b"/latin1_\xe9.jpg"
    with open(latin1, "wb") as f:  # a real JPEG whose name has the byte 0xE9
        f.write((root / "good_0.jpg").read_bytes())
    os.mkfifo(root / "x.jpg")  # reading it would wait forever for a writer
    (root / "zero.png").symlink_to("/dev/zero")  # reading it would never end
    (root / "link.jpg").symlink_to(root / "good_1.jpg")
    (root / "dir.jpg").mkdir()  # a folder: walked (empty), not an image
    (root / "huge.jpg").write_bytes(b"\xff" * 3_000_001)
    # 192 megapixels: over Pillow's own limit (178,956,970) but within --max-pixels, decoded
    # in a DataLoader worker process (--decode-threads 0), at a reduced JPEG scale.
    Image.new("L", (16000, 12000), 90).save(root / "wide.jpg", quality=50)
    args = [*model_args, *SMALL, "--max-error-rate", "1", "--max-file-bytes", "3000000"]
    args += ["--max-pixels", "200000000", "--decode-threads", "0", "--workers", "1"]
    out = tmp_path / "out"
    first = run_cli("run", str(root), "--output", str(out), *args, timeout=180)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stdout + first.stderr
    rows = _rows(out)
    assert sorted(rows) == sorted(
        [
            "good_0.jpg",
            "good_1.jpg",
            "good_2.jpg",
            "file:latin1_%E9.jpg",
            "x.jpg",
            "zero.png",
            "link.jpg",
            "huge.jpg",
            "wide.jpg",
        ]
    )
    ok = {i for i, r in rows.items() if r["status"] == "ok"}
    assert ok == {
        "good_0.jpg",
        "good_1.jpg",
        "good_2.jpg",
        "file:latin1_%E9.jpg",
        "link.jpg",
        "wide.jpg",
    }
    latin1_row = rows["file:latin1_%E9.jpg"]
    assert latin1_row["path"] == f"file://{root}/latin1_%E9.jpg"
    assert latin1_row["label"] == rows["good_0.jpg"]["label"]  # the same bytes were read
    assert (rows["wide.jpg"]["width"], rows["wide.jpg"]["height"]) == (16000, 12000)
    codes = {i: str(r["error"]).split(": ")[:2] for i, r in rows.items() if i not in ok}
    assert codes == {
        "x.jpg": ["not_a_file", "is a FIFO (named pipe), not a regular file"],
        "zero.png": ["not_a_file", "is a character device, not a regular file"],
        "huge.jpg": ["too_large", "file is 3000001 bytes, more than --max-file-bytes 3000000"],
    }
    # --resume lists the same forms and finds everything done.
    again = run_cli("run", str(root), "--output", str(out), *args, "--resume", timeout=180)
    assert again.returncode == 0, again.stderr
    assert "already done 9" in again.stdout
    assert len(ds.dataset(out, format="parquet").to_table()) == 9
    # The report reads the image back through its file: form.
    report = run_cli("report", str(out), "--sample", "10", timeout=120)
    assert report.returncode == 0, report.stderr
    assert "thumbnail of" not in report.stderr
    assert "file:latin1_%E9.jpg" in (out / "_report.html").read_text(encoding="utf-8")
