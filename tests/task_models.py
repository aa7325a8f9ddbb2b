"""Tiny random-weight models for the task tests, saved the way users save theirs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SEG_CLASSES = 6


def save_tiny_segformer(
    path: Path, num_classes: int = SEG_CLASSES, size: int = 128
) -> torch.nn.Module:
    """A SegFormer with small hidden sizes and its image processor, via save_pretrained.

    The classifier gets large weights so that class maps hold several classes.
    """
    import transformers as tf

    torch.manual_seed(0)
    labels = {i: f"region_{i}" for i in range(num_classes)}
    config = tf.SegformerConfig(
        hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 1, 2, 2],
        depths=[1, 1, 1, 1],
        decoder_hidden_size=32,
        num_labels=num_classes,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = tf.SegformerForSemanticSegmentation(config).eval()
    torch.nn.init.normal_(model.decode_head.classifier.weight, std=1.0)
    model.save_pretrained(path)
    tf.SegformerImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    return model


#: Words the tiny tokenizers are trained on: the zero-shot tests' prompts and class names.
_TEXT = (
    "a photo of a cat. a photo of a dog. a photo of a car. a photo of a checker. a photo "
    "of a circle. a photo of a ring. a photo of a square. a photo of stripes. a photo of a "
    "triangle. a picture of the bird, tree, house."
)


def _bpe(end_of_word: str | None, specials: list[str], pre_tokenizer: object) -> object:
    """A small BPE tokenizer trained offline (seconds) with the `tokenizers` library."""
    from tokenizers import Tokenizer, models, trainers

    kw = {"end_of_word_suffix": end_of_word} if end_of_word else {}
    tok = Tokenizer(models.BPE(unk_token=specials[-1], **kw))
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, **kw)
    tok.train_from_iterator([_TEXT] * 20, trainer)
    return tok


def _towers(size: int) -> dict[str, dict[str, int]]:
    layers = {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    return {
        "text_config": {"hidden_size": 32, "max_position_embeddings": 16, **layers},
        "vision_config": {"hidden_size": 32, "image_size": size, "patch_size": 8, **layers},
    }


def save_tiny_clip(
    path: Path,
    size: int = 32,
    vision: dict[str, int] | None = None,
    text: dict[str, int] | None = None,
) -> torch.nn.Module:
    """A CLIP with tiny towers, its processor and a BPE tokenizer (CLIP's own class).

    ``vision`` and ``text`` replace the towers' sizes (e.g. ViT-B/32's, for benchmarks).
    """
    import json

    import transformers as tf
    from tokenizers import pre_tokenizers

    tok: Any = _bpe("</w>", ["<|startoftext|>", "<|endoftext|>"], pre_tokenizers.Whitespace())
    vocab = tok.get_vocab()
    merges = [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    tokenizer = tf.CLIPTokenizer(vocab=vocab, merges=merges)
    towers = _towers(size)
    towers["text_config"].update(
        vocab_size=len(vocab), bos_token_id=0, eos_token_id=1, pad_token_id=1
    )
    towers["vision_config"].update(vision or {})
    towers["text_config"].update(text or {})
    torch.manual_seed(0)
    model = tf.CLIPModel(tf.CLIPConfig(projection_dim=16, **towers)).eval()
    model.save_pretrained(path)
    processor = tf.CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    tf.CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
    return model


def save_tiny_siglip(path: Path, size: int = 32) -> torch.nn.Module:
    """A SigLIP with tiny towers, its processor and a small BPE tokenizer (real SigLIP
    checkpoints use a SentencePiece one; any tokenizer of the model's vocabulary will do)."""
    import transformers as tf
    from tokenizers import pre_tokenizers

    tok: Any = _bpe(None, ["<pad>", "</s>", "<unk>"], pre_tokenizers.Metaspace())
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=16,
    )  # fmt: skip
    towers = _towers(size)
    towers["text_config"].update(vocab_size=tok.get_vocab_size(), pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = tf.SiglipModel(tf.SiglipConfig(**towers)).eval()
    model.save_pretrained(path)
    processor = tf.SiglipImageProcessor(size={"height": size, "width": size})
    tf.SiglipProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
    return model


DET_CLASSES = 5


def _spread_heads(model: torch.nn.Module) -> None:
    """Widen a random detector's heads: freshly initialised, every class scores alike and
    every box is its anchor, so "the top detections" would be a tie."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bbox_reg.bias"):  # FCOS's distances pass a ReLU: keep them > 0
                p.fill_(0.5)
            if not name.endswith("weight") or p.ndim < 2:
                continue
            # Convolutional heads (RetinaNet, FCOS, SSD) sum over 9x more inputs per output.
            conv = p.ndim == 4
            if any(k in name for k in ("cls", "classification", "class_labels")):
                p.normal_(0, 0.02 if conv else 0.5)
            elif any(k in name for k in ("bbox", "regression", "ctrness")):
                p.normal_(0, 0.002 if conv else 0.05)


def _calibrate_bn(model: torch.nn.Module, batch: torch.Tensor) -> None:
    """Batch-norm statistics from photo-like inputs, so activations do not vanish."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        body = getattr(model, "backbone", None)
        (body if body is not None else model)(batch)
    model.eval()


def tiny_torchvision_detector(arch: str) -> torch.nn.Module:
    """A seeded random torchvision detector (``DET_CLASSES`` classes, background included)
    whose scores and boxes differ between images and between detections."""
    import numpy as np
    import torchvision

    from batchvision.demo import synth

    torch.manual_seed(0)
    model = torchvision.models.get_model(
        arch, weights=None, weights_backbone=None, num_classes=DET_CLASSES
    ).eval()
    rng = np.random.default_rng(7)
    to_tensor = torchvision.transforms.functional.to_tensor
    batch = torch.stack([to_tensor(synth.photo_like(rng, (128, 128))) for _ in range(8)])
    mean = torch.tensor(model.transform.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.transform.image_std).view(1, 3, 1, 1)
    _calibrate_bn(model, (batch - mean) / std)
    _spread_heads(model)
    return model


def save_tiny_detector(root: Path, arch: str, labels: tuple[str, ...]) -> tuple[Path, Path]:
    """:func:`tiny_torchvision_detector` saved as a checkpoint with a labels file, as a
    user passes a fine-tuned detector: ``(weights, labels)`` paths under ``root``."""
    weights, names = root / "det.pt", root / "labels.txt"
    torch.save(tiny_torchvision_detector(arch).state_dict(), weights)
    names.write_text("\n".join(labels) + "\n")
    return weights, names


def save_tiny_detr(path: Path, kind: str = "detr", size: int = 128, longest: int = 200) -> Any:
    """A small DETR-style detector (``detr``, ``conditional_detr`` or ``yolos``) and its
    image processor, saved with save_pretrained; heads widened as for torchvision's."""
    import transformers as tf

    torch.manual_seed(0)
    labels = {i: f"obj_{i}" for i in range(DET_CLASSES)}
    common: dict[str, Any] = {
        "num_labels": DET_CLASSES,
        "id2label": labels,
        "label2id": {v: k for k, v in labels.items()},
    }
    backbone = tf.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1],
        out_features=["stage4"],
    )  # fmt: skip
    if kind == "yolos":  # a ViT over patches and detection tokens: no CNN backbone
        config = tf.YolosConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=[size, size], patch_size=16, num_detection_tokens=20, **common,
        )  # fmt: skip
        model = tf.YolosForObjectDetection(config).eval()
        processor = tf.YolosImageProcessor(size={"shortest_edge": size, "longest_edge": longest})
        return _save_widened(model, processor, path)
    cls, model_cls, proc = {
        "detr": (tf.DetrConfig, tf.DetrForObjectDetection, tf.DetrImageProcessor),
        "conditional_detr": (
            tf.ConditionalDetrConfig,
            tf.ConditionalDetrForObjectDetection,
            tf.ConditionalDetrImageProcessor,
        ),
    }[kind]
    config = cls(
        backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=20,
        **common,
    )  # fmt: skip
    model = model_cls(config).eval()
    processor = proc(size={"shortest_edge": size, "longest_edge": longest})
    return _save_widened(model, processor, path)


def _save_widened(model: Any, processor: Any, path: Path) -> Any:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "query_position" in name or "det_token" in name:
                p.normal_(0, 1.0)
            elif "class_labels_classifier" in name:
                p.normal_(0, 0.5)
            elif "bbox_predictor" in name and name.endswith("weight"):
                p.normal_(0, 0.2)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model
