"""LLaVA-OneVision (RadVLM's base) through transformers' own class.

    model = build_onevision(LlavaOnevisionConfig(...))      # or a dict of its fields
    n = image_token_count(model, pixel_values, image_sizes) # <image> tokens per image
    model = tiny_onevision()                                # tests: SigLIP + Qwen2, tiny sizes

Nothing is subclassed: the model is ``LlavaOnevisionForConditionalGeneration``, so saving,
loading (``from_pretrained``), generation and peft are transformers' own. Trainability
settings use ``trainability.ONEVISION_COMPONENTS`` (the learned ``image_newline`` belongs to
the connector).

OneVision's "anyres" tiling makes the number of image tokens depend on ``image_sizes`` and
``image_grid_pinpoints``; ``image_token_count`` reads it from the model itself rather than
re-deriving the formula.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import Tensor
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)

logger = logging.getLogger(__name__)

TINY_VOCAB = 64
TINY_IMAGE_TOKEN = 63
TINY_VIDEO_TOKEN = 62
TINY_IMAGE_SIZE = 32


def build_onevision(
    config: LlavaOnevisionConfig | dict[str, Any],
) -> LlavaOnevisionForConditionalGeneration:
    """Builds a random-init LLaVA-OneVision.

    Args:
        config: A ``LlavaOnevisionConfig`` (copied) or a dict of its fields.

    Returns:
        ``LlavaOnevisionForConditionalGeneration`` in training mode.

    Raises:
        ValueError: If the image or video token lies outside the text vocabulary.
    """
    config = (
        copy.deepcopy(config) if not isinstance(config, dict) else LlavaOnevisionConfig(**config)
    )
    vocab = config.text_config.vocab_size
    for name in ("image_token_index", "video_token_index"):
        value = getattr(config, name)
        if not 0 <= value < vocab:
            raise ValueError(f"{name} {value} outside the vocabulary (vocab_size {vocab})")
    model = LlavaOnevisionForConditionalGeneration(config)
    model.train()
    logger.info(
        "built llava-onevision: %s vision + %s text, %.2f M parameters",
        config.vision_config.model_type,
        config.text_config.model_type,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model


@torch.no_grad()
def image_token_count(
    model: LlavaOnevisionForConditionalGeneration, pixel_values: Tensor, image_sizes: Tensor
) -> list[int]:
    """The number of ``<image>`` placeholders each image needs, read from the model.

    Args:
        model: A OneVision model.
        pixel_values: (images, patches, C, H, W), as the processor gives them.
        image_sizes: (images, 2) original (height, width).

    Returns:
        Tokens per image.
    """
    features = model.model.get_image_features(
        pixel_values=pixel_values, image_sizes=image_sizes, return_dict=True
    ).pooler_output
    return [int(feature.shape[0]) for feature in features]


def tiny_onevision_config() -> LlavaOnevisionConfig:
    """Tiny OneVision: SigLIP (32 px, patch 8, hidden 32, 2 layers) + Qwen2 (vocab 64,
    hidden 32, 2 layers), one 32x32 pinpoint, image token 63, video token 62."""
    vision = SiglipVisionConfig(
        image_size=TINY_IMAGE_SIZE,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    text = Qwen2Config(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=TINY_IMAGE_TOKEN,
        video_token_index=TINY_VIDEO_TOKEN,
        image_grid_pinpoints=[[TINY_IMAGE_SIZE, TINY_IMAGE_SIZE]],
    )


def tiny_onevision() -> LlavaOnevisionForConditionalGeneration:
    """A tiny OneVision for tests, built by ``build_onevision``.

    Inputs: ``pixel_values`` (batch, 2, 3, 32, 32) (base view + one tile) and ``image_sizes``
    (batch, 2); ``image_token_count`` gives the placeholders per image.
    """
    return build_onevision(tiny_onevision_config())


__all__ = [
    "TINY_IMAGE_SIZE",
    "TINY_IMAGE_TOKEN",
    "TINY_VOCAB",
    "build_onevision",
    "image_token_count",
    "tiny_onevision",
    "tiny_onevision_config",
]
