"""Object detectors as one small interface, whatever library builds them.

A detector here takes a batch as a list of images, each normalised on the device by the
predictor (float CHW, at its own size), and returns, per image, boxes in the pixel
coordinates of the image as displayed, scores and class ids. The model families differ in
how they batch: torchvision's take the list and pad it themselves
(``GeneralizedRCNNTransform.batch_images``); DETR-style models take one tensor padded
with zeros after normalisation, as their processors pad, and a pixel mask; models without
a mask (YOLOS) would see the padding as image, so they run images of one size together.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from batchvision.config import PreprocessConfig

#: One image's detections: boxes ``(k, 4)`` as ``x0, y0, x1, y1``, scores ``(k,)``, ids ``(k,)``.
Detections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Sizes = list[tuple[int, int]]


class Detector(torch.nn.Module):
    """Base of the adapters: ``detect`` is the task's forward, ``forward`` a probe.

    Attributes:
        same_size_batches: the task gives the model only images of one size at a time:
            for models that cannot batch sizes (no pixel mask), and for those whose
            answer for an image would change with its neighbours' sizes.
    """

    same_size_batches = False

    def configure(self, score_threshold: float, max_detections: int) -> None:
        """The run's ``--score-threshold`` and ``--max-detections``."""
        self.score_threshold = score_threshold
        self.max_detections = max_detections

    def detect(self, images: list[torch.Tensor], displayed: Sizes) -> list[Detections]:
        """Detections for a batch of ``(3, h, w)`` images; ``displayed``: each one's
        ``(h, w)`` as displayed (what the boxes are scaled to)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The number of detections per image of a batch of one size: what the batch-size
        search and the out-of-memory probes time."""
        found = self.detect(list(x), [(x.shape[2], x.shape[3])] * len(x))
        return torch.tensor([float(len(s)) for _, s, _ in found])


def top(dets: Detections, threshold: float, k: int) -> Detections:
    """At most ``k`` detections scoring ``threshold`` or more, best first, as float32."""
    boxes, scores, ids = dets
    keep = scores >= threshold
    boxes, scores, ids = boxes[keep], scores[keep], ids[keep]
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return boxes[order].float(), scores[order].float(), ids[order]


# --- torchvision --------------------------------------------------------------------------


class _Normalised(GeneralizedRCNNTransform):
    """The model's own transform, less the normalisation, which the predictor has done on
    the device; it still resizes (float, on the device, as in the reference) and batches
    the images, zero-padded to its ``size_divisible``."""

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image


class TorchvisionDetector(Detector):
    """A torchvision detector (Faster R-CNN, RetinaNet, FCOS, SSD, ...) fed normalised
    images as decoded: its boxes come back in the decoded image's pixels, scaled here to
    the displayed size (they differ after a ``--draft`` decode).

    Batches hold images of one size only: torchvision pads a batch to its largest image,
    and the anchors over that padding compete with the image's own in the region proposals
    and the top-k before NMS, so an image's boxes would depend on which images share its
    batch. Of one size, a batch gives each image what ``model([img])`` gives it.
    """

    same_size_batches = True

    def __init__(self, model: torch.nn.Module, preprocess: PreprocessConfig) -> None:
        super().__init__()
        t = transform_of(model)
        # The resize the spec says (the model's own, or --resize-size).
        fixed = preprocess.resize_hw
        model.transform = _Normalised(
            preprocess.resize_size, preprocess.max_size or t.max_size, t.image_mean,
            t.image_std, size_divisible=t.size_divisible,
            fixed_size=None if fixed is None else (fixed[1], fixed[0]),
        )  # fmt: skip
        self.model = model
        # Where the score threshold and the per-image cap live: RoIHeads, or the model.
        self._post = getattr(model, "roi_heads", model)

    def configure(self, score_threshold: float, max_detections: int) -> None:
        super().configure(score_threshold, max_detections)
        self._post.score_thresh = score_threshold
        self._post.detections_per_img = max_detections

    def detect(self, images: list[torch.Tensor], displayed: Sizes) -> list[Detections]:
        found = self.model(images)
        out = []
        for d, img, (dh, dw) in zip(found, images, displayed, strict=True):
            # As the model's own postprocess (resize_boxes): ratios per axis.
            h, w = img.shape[-2:]
            scale = torch.tensor([dw / w, dh / h, dw / w, dh / h], device=img.device)
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

    def detect(self, images: list[torch.Tensor], displayed: Sizes) -> list[Detections]:
        hmax = max(int(img.shape[1]) for img in images)
        wmax = max(int(img.shape[2]) for img in images)
        first = images[0]
        # As the processors pad: zeros after normalising, bottom and right; mask 1 on pixels.
        x = first.new_zeros((len(images), 3, hmax, wmax))
        mask = torch.zeros((len(images), hmax, wmax), dtype=torch.long, device=first.device)
        for i, img in enumerate(images):
            x[i, :, : img.shape[1], : img.shape[2]] = img
            mask[i, : img.shape[1], : img.shape[2]] = 1
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
