"""Named sizes: the configs of real vision-language models, for shape-only (meta) builds.

    config = llava15_7b()                    # a LlavaConfig, no weights read or downloaded
    model = build_meta("llava15_7b")         # LlavaForConditionalGeneration on the meta device
    sum(p.numel() for p in model.parameters())   # 7_063_427_072, the published count

Each function returns a fresh transformers config whose values are transcribed from the
published ``config.json`` of the named Hugging Face checkpoint (the source is cited beside each
function). A model built from it on the meta device allocates no memory and has exactly the
parameter count of the published checkpoint, which makes these sizes useful for memory and
FLOP planning, sharding and trainability reports without downloading anything.

``llava_rad_shape`` is the exception: it is a *shape* (Vicuna-7B with a BiomedCLIP-style
ViT-B/16 at 224 px in a LLaVA-1.5 layout), not a transcription of a published config, so its
parameter count is computed here, not published.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import (
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaOnevisionConfig,
    MllamaConfig,
    MllamaTextConfig,
    MllamaVisionConfig,
    PretrainedConfig,
    Qwen2Config,
    SiglipVisionConfig,
)

from radixpert import vocab
from radixpert.errors import UnknownName

__all__ = [
    "SIZES",
    "build_meta",
    "llama32_vision_11b",
    "llava15_7b",
    "llava_onevision_7b",
    "llava_rad_shape",
    "size_names",
]


# --------------------------------------------------------------------------------------------
# Shared parts
# --------------------------------------------------------------------------------------------


def _vicuna_7b_text(vocab_size: int) -> LlamaConfig:
    """Vicuna-7B v1.5 (lmsys/vicuna-7b-v1.5, a Llama-2-7B fine-tune) as a LlamaConfig.

    Llama-2-7B shape: 32 layers, hidden 4096, MLP 11008, 32 heads (no GQA), 4096 positions.
    """
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


# --------------------------------------------------------------------------------------------
# Named sizes
# --------------------------------------------------------------------------------------------


# Source: config.json of meta-llama/Llama-3.2-11B-Vision-Instruct on the Hugging Face Hub
# (transcribed). Published count 10,670,220,835: the Hub safetensors metadata parameter count,
# as recorded in floschne/gimmick, src/gimmick/models/__init__.py (get_model_sizes).
def llama32_vision_11b() -> MllamaConfig:
    """Llama 3.2 11B Vision (Instruct) as an ``MllamaConfig``.

    Values transcribed from ``config.json`` of ``meta-llama/Llama-3.2-11B-Vision-Instruct``
    (the base ``meta-llama/Llama-3.2-11B-Vision`` has the same architecture). Text: a
    Llama-3.1-8B decoder with 8 gated cross-attention layers interleaved (40 layers in all),
    vocab 128256 (+8 special image/padding rows, which transformers adds itself). Vision: a
    ViT-H/14 at 560 px per tile, 32 local + 8 global layers, up to 4 tiles.

    Returns:
        A fresh ``MllamaConfig``; its model has 10,670,220,835 parameters.
    """
    text = MllamaTextConfig(
        vocab_size=128256,
        hidden_size=4096,
        hidden_act="silu",
        num_hidden_layers=40,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        initializer_range=0.02,
        tie_word_embeddings=False,
        cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38],
        dropout=0.0,
        bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009],
        pad_token_id=128004,
    )
    vision = MllamaVisionConfig(
        hidden_size=1280,
        hidden_act="gelu",
        num_hidden_layers=32,
        num_global_layers=8,
        attention_heads=16,
        num_channels=3,
        intermediate_size=5120,
        vision_output_dim=7680,
        image_size=560,
        patch_size=14,
        norm_eps=1e-5,
        max_num_tiles=4,
        intermediate_layers_indices=[3, 7, 15, 23, 30],
        supported_aspect_ratios=[[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]],
        initializer_range=0.02,
    )
    return MllamaConfig(vision_config=vision, text_config=text, image_token_index=128256)


# Source: config.json of llava-hf/llava-1.5-7b-hf (transcribed; unset keys are transformers'
# defaults, which the file relies on too). Published count 7,063,427,072: the parameter sum of
# the loaded checkpoint, as reported in nnethercott/nnethercott.github.io's LLaVA fine-tuning
# post and asserted by a public test building the model from that config.json.
def llava15_7b() -> LlavaConfig:
    """LLaVA-1.5-7B as a ``LlavaConfig``.

    Values transcribed from ``config.json`` of ``llava-hf/llava-1.5-7b-hf``: CLIP ViT-L/14 at
    336 px (``openai/clip-vit-large-patch14-336`` vision tower), a two-layer GELU MLP projector,
    and Vicuna-7B v1.5 with its vocabulary padded to 32064 (image token 32000, pad 32001).

    Returns:
        A fresh ``LlavaConfig``; its model has 7,063,427,072 parameters.
    """
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        projection_dim=768,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_channels=3,
        image_size=336,
        patch_size=14,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = _vicuna_7b_text(vocab_size=32064)
    text.pad_token_id = 32001
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=32000,
        image_seq_length=576,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )


# Source: config.json of llava-hf/llava-onevision-qwen2-7b-ov-hf (transcribed), and the
# conversion script transformers/models/llava_onevision/convert_llava_onevision_weights_to_hf.py
# (SigLIP with 26 layers and no head; Qwen2-7B-Instruct's 152064 rows + 2 new tokens, padded to
# a multiple of 64 = 152128). Only the rounded "8.03B params" is published on the model page.
def llava_onevision_7b() -> LlavaOnevisionConfig:
    """LLaVA-OneVision Qwen2-7B (OV stage) as a ``LlavaOnevisionConfig``.

    Values transcribed from ``config.json`` of ``llava-hf/llava-onevision-qwen2-7b-ov-hf``:
    SigLIP so400m/14 at 384 px with its last layer dropped (26 layers, no pooling head), a
    two-layer GELU MLP projector, and Qwen2-7B with its vocabulary padded to 152128; AnyRes
    tiling up to 6x6 tiles of 384 px (``anyres_max_9``).

    Returns:
        A fresh ``LlavaOnevisionConfig``; its model has 8,030,807,584 parameters (computed;
        the Hub page publishes the rounded "8.03B params").
    """
    vision = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=26,
        num_attention_heads=16,
        num_channels=3,
        image_size=384,
        patch_size=14,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=152128,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=False,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    pinpoints = [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=151646,
        video_token_index=151647,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
    )


def llava_rad_shape() -> LlavaConfig:
    """A "LLaVA-Rad shape": Vicuna-7B with a BiomedCLIP-style ViT-B/16 at 224 px.

    This is a shape, not a transcription of a published config: LLaVA-Rad pairs Vicuna-7B v1.5
    with a BiomedCLIP-derived ViT-B/16 image encoder, and this config lays those dimensions out
    in the LLaVA-1.5 format (CLIP vision module, two-layer GELU projector, vocabulary padded to
    32064 as in ``llava15_7b`` so the image token 32000 has an embedding row). Its parameter
    count is computed from this config, not published, and differs from the released
    checkpoint's wherever the released encoder or embedding table differs (its position table
    is sized for 224 px, 196 patches + CLS; the original LLaVA code keeps Vicuna's 32000-row
    vocabulary and splices images in without an embedding row).

    Returns:
        A fresh ``LlavaConfig``; its model has 6,844,670,464 parameters.
    """
    vision = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        projection_dim=512,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_channels=3,
        image_size=224,
        patch_size=16,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )
    text = _vicuna_7b_text(vocab_size=32064)
    text.pad_token_id = 32001
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=32000,
        image_seq_length=196,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )


SIZES: dict[str, Callable[[], PretrainedConfig]] = {
    name: globals()[size.builder.removeprefix("sizes:")]
    for name, size in vocab.SIZES.items()
    if size.published
}
"""Named sizes (the published ones of ``radixpert.vocab.SIZES``): name -> a fresh config."""


def size_names() -> tuple[str, ...]:
    """Returns the names accepted by ``build_meta``, in a stable order."""
    return tuple(SIZES)


def build_meta(name: str) -> nn.Module:
    """Builds the named size's full model on the meta device (no memory, no weights).

    The model is the image-text-to-text class for the config (``MllamaForConditionalGeneration``,
    ``LlavaForConditionalGeneration``, ``LlavaOnevisionForConditionalGeneration``), so the
    language-model head is included and word embeddings are tied only where the config says.

    Args:
        name: A key of ``SIZES``.

    Returns:
        The model, every parameter and buffer on the ``meta`` device.

    Raises:
        KeyError: If ``name`` is not a known size.
    """
    if name not in SIZES:
        raise UnknownName(f"unknown size {name!r}; known: {', '.join(SIZES)}")
    config = SIZES[name]()
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)
