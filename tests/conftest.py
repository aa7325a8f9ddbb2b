"""Shared fixtures: generated images and small saved models, made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from batchvision import RunConfig
from batchvision.demo import synth

TINY_ARCH = "mobilenet_v3_small"
TINY_CLASSES = 10


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 photo-like JPEGs of varied sizes and aspect ratios, in two sub-folders."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1234)
    for i in range(24):
        w, h = int(rng.integers(120, 700)), int(rng.integers(120, 700))
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        synth.photo_like(rng, (w, h)).save(sub / f"img_{i:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A seeded random-weight mobilenet_v3_small (10 classes) as .safetensors, and labels.

    Freshly initialised, its batch-norm statistics shrink every activation to ~1e-9 and it
    gives 0.1 to every class for every image. Calibrating the statistics on a few
    photo-like images and widening the head makes predictions differ between images, so
    tests of labels and score order can fail.
    """
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    model = torchvision.models.get_model(TINY_ARCH, weights=None, num_classes=TINY_CLASSES)
    rng = np.random.default_rng(99)
    calib = torch.stack(
        [
            torchvision.transforms.functional.to_tensor(synth.photo_like(rng, (64, 64)))
            for _ in range(32)
        ]
    )
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model((calib - 0.45) / 0.225)
        torch.nn.init.normal_(model.classifier[-1].weight, std=0.3)
    model.eval()
    path = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    labels = root / "labels.txt"
    labels.write_text("\n".join(f"thing_{i}" for i in range(TINY_CLASSES)) + "\n")
    return path, labels


def tiny_run_args(
    src: Path, out: Path | str, tiny: tuple[Path, Path], *extra: str, workers: int = 1
) -> list[str]:
    """``batchvision run`` arguments for the tiny model at 64 px: 2 images a batch, 4 rows a
    part, top-2, ``workers`` decode processes; ``extra`` last."""
    ckpt, labels = tiny
    return [
        "run", str(src), "--model", TINY_ARCH, "--weights", str(ckpt), "--labels", str(labels),
        "--resize-size", "64", "--crop-size", "64", "-o", str(out), "-b", "2",
        "--workers", str(workers), "--part-rows", "4", "--top-k", "2", *extra,
    ]  # fmt: skip


def tiny_config(src: Path, out: Path, tiny: tuple[Path, Path], **kw: object) -> RunConfig:
    """A RunConfig for the tiny model: 4 images a batch, read in this process; ``kw`` adds
    or overrides options."""
    ckpt, labels = tiny
    opts: dict[str, object] = {
        "model": TINY_ARCH,
        "weights": str(ckpt),
        "labels": str(labels),
        "batch_size": 4,
        "workers": 0,
        **kw,
    }
    return RunConfig(inputs=(str(src),), output=str(out), **opts)  # type: ignore[arg-type]


def run_cli(*args: str, timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``python -m batchvision ARGS`` and capture its output (bounded in time)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "batchvision", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


# --- object storage: a real S3-compatible server (moto) on loopback ----------------------

# Fake credentials, and no real AWS config, for every S3 test and the CLIs they start.
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
S3_UNSET_ENV = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class S3Server:
    """A moto S3 server on 127.0.0.1; ``endpoint`` is its URL (for ``--s3-endpoint``)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._count = 0

    def client(self) -> object:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def new_bucket(self, prefix: str = "bv") -> str:
        """A fresh, empty bucket's name (each test gets its own)."""
        self._count += 1
        name = f"{prefix}-{os.getpid()}-{self._count}"
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name

    def put(self, uri: str, data: bytes) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        self.client().put_object(Bucket=bucket, Key=key, Body=data)  # type: ignore[attr-defined]

    def upload_dir(self, local: Path, uri: str) -> str:
        """Upload every file under ``local`` to the prefix ``uri``; returns ``uri``."""
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                rel = path.relative_to(local).as_posix()
                self.put(f"{uri.rstrip('/')}/{rel}", path.read_bytes())
        return uri

    def keys(self, uri: str) -> list[str]:
        """Every key under the prefix ``uri``, relative to it, sorted."""
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(  # type: ignore[attr-defined]
                Bucket=bucket, Prefix=prefix
            )
        )
        return sorted(o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's standalone S3 server on a free loopback port, with fake credentials set."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
    with pytest.MonkeyPatch.context() as mp:
        for name, value in S3_TEST_ENV.items():
            mp.setenv(name, value)
        for name in S3_UNSET_ENV:
            mp.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield S3Server(f"http://{host}:{port}")
        finally:
            server.stop()


@pytest.fixture(scope="module")
def ray_local() -> Iterator[str]:
    """A local Ray instance for one test module (2 CPUs, small object store); its address.

    Tests in the module run the Ray engine in-process (it reuses this connection) or attach
    CLI subprocesses to the address. Shut down when the module ends, so that a module with
    its own cluster (the multi-node test) can start one.
    """
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        object_store_memory=256 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
