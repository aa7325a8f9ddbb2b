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
    path: Path, size: int = 32, vision: dict[str, int] | None = None
) -> torch.nn.Module:
    """A CLIP with tiny towers, its processor and a BPE tokenizer (CLIP's own class).

    ``vision`` replaces the vision tower's sizes (e.g. ViT-B/32's, for benchmarks).
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
