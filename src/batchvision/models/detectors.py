"""Object detectors as one small interface, whatever library builds them.

A detector here takes the batch as the predictor makes it (normalised float NCHW on the
device, images at the top left, each at its own size) and returns, per image, boxes in the
pixel coordinates of the image as displayed, scores and class ids. The model families
differ in how they batch: torchvision's take a list of tensors and pad it themselves
(``GeneralizedRCNNTransform.batch_images``); DETR-style models take one padded tensor and
a pixel mask; models without a mask (YOLOS) run images of one size together.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

#: One image's detections: boxes ``(k, 4)`` as ``x0, y0, x1, y1``, scores ``(k,)``, ids ``(k,)``.
Detections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Sizes = list[tuple[int, int]]


class Detector(torch.nn.Module):
    """Base of the adapters: ``detect`` is the task's forward, ``forward`` a probe.

    Attributes:
        same_size_batches: the model cannot batch images of different sizes (no pixel
            mask), so the task runs each size on its own.
    """

    same_size_batches = False

    def configure(self, score_threshold: float, max_detections: int) -> None:
        """The run's ``--score-threshold`` and ``--max-detections``."""
        self.score_threshold = score_threshold
        self.max_detections = max_detections

    def detect(self, x: torch.Tensor, inputs: Sizes, displayed: Sizes) -> list[Detections]:
        """Detections for a batch; ``inputs``/``displayed``: ``(h, w)`` of each image in
        ``x`` and as displayed (what the boxes are scaled to)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The number of detections per image of a batch of one size: what the batch-size
        search and the out-of-memory probes time."""
        size = (x.shape[2], x.shape[3])
        found = self.detect(x, [size] * len(x), [size] * len(x))
        return torch.tensor([float(len(s)) for _, s, _ in found])


def top(dets: Detections, threshold: float, k: int) -> Detections:
    """At most ``k`` detections scoring ``threshold`` or more, best first, as float32."""
    boxes, scores, ids = dets
    keep = scores >= threshold
    boxes, scores, ids = boxes[keep], scores[keep], ids[keep]
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return boxes[order].float(), scores[order].float(), ids[order]


# --- torchvision --------------------------------------------------------------------------


class _Presized(GeneralizedRCNNTransform):
    """The model's own transform, less what the pipeline has done before it: images arrive
    resized (on the CPU, as uint8) and normalised (on the device); it still batches them,
    zero-padded to its ``size_divisible``, exactly as the model expects."""

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def resize(self, image: torch.Tensor, target: Any = None) -> tuple[torch.Tensor, Any]:
        return image, target


class TorchvisionDetector(Detector):
    """A torchvision detector (Faster R-CNN, RetinaNet, FCOS, SSD, ...) fed resized images."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        t = transform_of(model)
        model.transform = _Presized(
            t.min_size, t.max_size, t.image_mean, t.image_std,
            size_divisible=t.size_divisible, fixed_size=t.fixed_size,
        )  # fmt: skip
        self.model = model
        # Where the score threshold and the per-image cap live: RoIHeads, or the model.
        self._post = getattr(model, "roi_heads", model)

    def configure(self, score_threshold: float, max_detections: int) -> None:
        super().configure(score_threshold, max_detections)
        self._post.score_thresh = score_threshold
        self._post.detections_per_img = max_detections

    def detect(self, x: torch.Tensor, inputs: Sizes, displayed: Sizes) -> list[Detections]:
        images = [x[i, :, :h, :w] for i, (h, w) in enumerate(inputs)]
        found = self.model(images)
        out = []
        for d, (h, w), (dh, dw) in zip(found, inputs, displayed, strict=True):
            # As the model's own postprocess (resize_boxes): float32 ratios per axis.
            scale = torch.tensor([dw / w, dh / h, dw / w, dh / h], device=x.device)
            boxes = d["boxes"].float() * scale
            out.append(top((boxes, d["scores"], d["labels"]), self.score_threshold,
                           self.max_detections))  # fmt: skip
        return out


def transform_of(model: torch.nn.Module) -> GeneralizedRCNNTransform:
    """A torchvision detector's ``transform`` (its resize rule, mean and std)."""
    transform = getattr(model, "transform", None)
    if not isinstance(transform, GeneralizedRCNNTransform):
        raise TypeError(f"{type(model).__name__} has no GeneralizedRCNNTransform")
    return transform


# --- Hugging Face -------------------------------------------------------------------------


class HFDetector(Detector):
    """A transformers ``…ForObjectDetection`` model with its processor's post-processing.

    ``post_process`` is the image processor's own ``post_process_object_detection`` (built
    from the processor's config on the worker), so scores and boxes follow each family's
    recipe (softmax without the no-object class for DETR, sigmoid top-k for Conditional
    DETR and RT-DETR); ``target_sizes`` are the displayed sizes, since the models predict
    boxes relative to the unpadded image.
    """

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        import inspect

        self.masked = "pixel_mask" in inspect.signature(model.forward).parameters
        self.same_size_batches = not self.masked

    def detect(self, x: torch.Tensor, inputs: Sizes, displayed: Sizes) -> list[Detections]:
        hmax = max(h for h, _ in inputs)
        wmax = max(w for _, w in inputs)
        x = x[:, :, :hmax, :wmax]
        mask = torch.zeros((len(x), hmax, wmax), dtype=torch.long, device=x.device)
        for i, (h, w) in enumerate(inputs):
            mask[i, :h, :w] = 1
        if any(s != (hmax, wmax) for s in inputs):
            # The processors pad after normalising, with zeros.
            x = x * mask[:, None].to(x.dtype)
        kwargs = {"pixel_mask": mask} if self.masked else {}
        out = self.model(pixel_values=x, **kwargs)
        for name in ("logits", "pred_boxes"):
            setattr(out, name, getattr(out, name).float())
        results = self.processor.post_process_object_detection(
            out, threshold=self.score_threshold, target_sizes=displayed
        )
        return [
            top((r["boxes"], r["scores"], r["labels"]), self.score_threshold, self.max_detections)
            for r in results
        ]
