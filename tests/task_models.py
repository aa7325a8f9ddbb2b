"""Tiny random-weight models for the task tests, saved the way users save theirs."""

from __future__ import annotations

from pathlib import Path

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
