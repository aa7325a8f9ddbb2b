"""``detect``: boxes, labels and scores of the objects in each image, in displayed pixels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from batchvision.errors import ConfigError
from batchvision.stages.device import autocast
from batchvision.tasks import register_task
from batchvision.tasks.base import ListedLabels, take_rows, without_image

if TYPE_CHECKING:
    from batchvision.config import RunConfig
    from batchvision.models.detectors import Detector
    from batchvision.models.spec import ModelSpec
    from batchvision.stages.predict import Predictor

#: One detection: the class, its score and the box corners, in pixels of the image as
#: displayed (after EXIF rotation), x to the right and y down from the top-left corner.
DETECTION = pa.struct(
    [
        pa.field("label_id", pa.int32()),
        pa.field("label", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("x0", pa.float32()),
        pa.field("y0", pa.float32()),
        pa.field("x1", pa.float32()),
        pa.field("y1", pa.float32()),
    ]
)
#: What the model gives per image, before labels: ``(k, 4)`` boxes, ``(k,)`` scores and ids.
RAW = ("det_boxes", "det_scores", "det_ids")
Found = tuple[np.ndarray, np.ndarray, np.ndarray]


def _empty() -> Found:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)


def detector_of(predictor: Predictor) -> Detector:
    """The predictor's model as a :class:`~batchvision.models.detectors.Detector`."""
    from batchvision.models.detectors import Detector

    model = getattr(predictor, "model", None)
    if not isinstance(model, Detector):
        raise ConfigError(
            f"--task detect runs torchvision and Hugging Face detectors in torch; "
            f"{predictor.spec.name} under --runtime {predictor.runtime} cannot"
        )
    return model


@torch.inference_mode()
def detect(
    predictor: Predictor,
    images: torch.Tensor | np.ndarray,
    inputs: list[tuple[int, int]],
    displayed: list[tuple[int, int]],
) -> list[Found]:
    """Detections for uint8 NHWC ``images`` (each at the top left, ``inputs`` its
    ``(h, w)``), boxes scaled to ``displayed``; in pieces after an out-of-memory error.

    Each image crosses to the device as uint8 and is normalised there by the predictor;
    the detector batches them its family's way.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    detector = detector_of(predictor)
    batch = images

    def run(start: int, stop: int) -> list[Found]:
        predictor.check_injected_oom(stop - start)
        with autocast(predictor.device, predictor.precision):
            # One image at a time to the device and into float: padding a batch to its
            # largest image would multiply a panorama's cost by the batch size.
            xs = [
                predictor.to_input(batch[i : i + 1, :h, :w])[0]
                for i, (h, w) in enumerate(inputs[start:stop], start)
            ]
            found = detector.detect(xs, displayed[start:stop])
        return [
            (b.cpu().numpy(), s.cpu().numpy(), i.to(torch.int32).cpu().numpy()) for b, s, i in found
        ]

    return [d for piece in predictor.in_pieces(len(inputs), run) for d in piece]


def detection_batch(batch: dict[str, np.ndarray], labels: tuple[str, ...]) -> dict[str, Any]:
    """The raw columns to ``detections`` (per image a list of dicts, best first: plain
    Python values, so the column converts to Arrow's list<struct> as is; ``None`` on error
    rows) and ``num_detections``."""
    n = len(batch["status"])
    ok = np.asarray(batch["status"]) == "ok"
    dets = np.full(n, None, dtype=object)
    count = np.zeros(n, dtype=np.int32)
    for i in np.flatnonzero(ok):
        boxes, scores, ids = (batch[k][i] for k in RAW)
        dets[i] = [
            {
                "label_id": int(c),
                "label": labels[c] if 0 <= c < len(labels) else str(int(c)),
                "score": float(s),
                "x0": float(b[0]),
                "y0": float(b[1]),
                "x1": float(b[2]),
                "y1": float(b[3]),
            }
            for b, s, c in zip(boxes.reshape(-1, 4), scores, ids, strict=True)
        ]
        count[i] = len(dets[i])
    out = {k: v for k, v in batch.items() if k not in RAW}
    out.update(detections=dets, num_detections=count)
    return out


@register_task
class Detect(ListedLabels):
    """Object detection: torchvision detectors and transformers ``…ForObjectDetection``."""

    name = "detect"
    fields = (
        pa.field("detections", pa.list_(DETECTION)),
        pa.field("num_detections", pa.int32()),
    )
    options = (
        ("score_threshold", "--score-threshold"),
        ("max_detections", "--max-detections"),
    )
    #: Parts made with another threshold or cap would not be one consistent output.
    resume_fields = ("score_threshold", "max_detections")
    report_view = "boxes"
    labelled_column = "detections"
    light_columns = ("detections",)
    row_columns = ("detections", "num_detections")

    def check(self, config: RunConfig, spec: ModelSpec) -> None:
        if config.runtime not in ("torch", "auto"):
            raise ConfigError(
                f"--task detect runs in torch; --runtime {config.runtime} exports models with "
                "one tensor output (classify, embed, segment)"
            )

    def setup(self, predictor: Predictor) -> None:
        detector_of(predictor).configure(predictor.score_threshold, predictor.max_detections)

    def predict(self, predictor: Predictor, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``det_boxes``/``det_scores``/``det_ids`` per image (empty on error rows)."""
        n = len(batch["status"])
        found: list[Found] = [_empty() for _ in range(n)]
        ok = np.flatnonzero(batch["status"] == "ok")
        images = batch["image"]
        if "input_height" in batch:
            inputs = [(int(batch["input_height"][i]), int(batch["input_width"][i])) for i in ok]
        else:
            inputs = [(int(images.shape[1]), int(images.shape[2]))] * len(ok)
        displayed = [(int(batch["height"][i]), int(batch["width"][i])) for i in ok]
        # Some detectors take one size at a time (torchvision: padding changes proposals;
        # YOLOS: no pixel mask): those batches are the images of one input size.
        keys = inputs if detector_of(predictor).same_size_batches else [(0, 0)] * len(ok)
        for key in dict.fromkeys(keys):
            pos = [j for j, k in enumerate(keys) if k == key]
            idx = ok[pos]
            group = detect(
                predictor,
                take_rows(images, idx),
                [inputs[j] for j in pos],
                [displayed[j] for j in pos],
            )
            for i, d in zip(idx, group, strict=True):
                found[i] = d
        out = without_image(batch)
        for k, col in zip(RAW, zip(*found, strict=True), strict=True):
            arr = np.empty(n, dtype=object)
            arr[:] = [np.asarray(v) for v in col] if n else []
            out[k] = arr
        if not n:
            for k in RAW:
                out[k] = np.empty(0, dtype=object)
        return out

    def postprocess(self, batch: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
        return detection_batch(batch, spec.labels)

    def columns(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, pa.Array]:
        return {
            "detections": pa.array(batch["detections"].tolist(), pa.list_(DETECTION)),
            "num_detections": pa.array(batch["num_detections"], pa.int32(), mask=~ok),
        }

    def manifest_fields(self, spec: ModelSpec, config: RunConfig) -> dict[str, Any]:
        return {
            "labels": list(spec.labels),
            "score_threshold": config.score_threshold,
            "max_detections": config.max_detections,
        }
