"""The mllama family: transformers' Mllama (Llama 3.2 Vision), optionally with an HCF connector.

    model = build_mllama(MllamaConfig(...))                  # plain Mllama, any tool reads it
    model = build_mllama(config, hcf={"num_heads": 8})       # HCF at the cross-attention states
    out = model(input_ids=ids, pixel_values=px, aspect_ratio_ids=ar, aspect_ratio_mask=am,
                cross_attention_mask=xmask, attention_mask=mask, labels=labels,
                prompt_mask=prompt)                        # HCF only: which tokens are prompt
    model.last_gate_weights                                  # (images, levels), for logging
    model.save_pretrained(path); model = load_mllama(path)   # HCF weights included
    model = tiny_mllama(hcf=True)                            # tests: same builder, tiny sizes

Mllama does not put visual tokens into the text sequence: its vision model returns, per tile
and patch, the concatenation of the last hidden state and the states of the
``intermediate_layers_indices`` layers (``vision_output_dim`` = hidden x (1 + their number));
``multi_modal_projector`` (one Linear) maps that to the text width, and the result is the
``cross_attention_states`` the gated cross-attention layers of the text model attend to.

With ``hcf`` the projector is replaced by an ``HCF`` (connectors.py), and fusion happens exactly
there (``HCFMllamaForConditionalGeneration``, defined in ``hcf_modeling``, the self-contained
module an export carries). The vision output is split back into its layer groups
(``split_vision_output``), the groups named by ``config.hcf_groups`` are the HCF levels
(default: the earliest intermediate layer, a middle one and the last hidden state), and each
image's levels are fused with the embedded text prompt of its sample: the input embeddings of
the attended tokens that are neither ``<|image|>`` tokens nor training targets (``labels !=
-100``; the answer must not leak into the image). h* takes the projector output's place, shape
(images x tiles, patches, text hidden), and is handed to transformers' own forward as
``cross_attention_states``, so masks, the KV cache and generation are transformers' own. In
``generate`` with the cache (the default) the images are fused once, at prefill, with the
prompt; the cross-attention cache holds h* afterwards.

Tiny random-init models must start the tanh cross-attention gates non-zero (``gate_init``):
transformers initialises them to zero, and then the text model ignores the image.

Saving: the HCF model has its own ``model_type`` (``radixpert_hcf_mllama``), so ``load_mllama``
(or the Auto classes after ``register_auto_classes()``) rebuilds it with its HCF weights.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    MllamaConfig,
    MllamaForConditionalGeneration,
)
from transformers.models.mllama.configuration_mllama import MllamaTextConfig, MllamaVisionConfig

from radixpert.models._loading import load_by_model_type
from radixpert.models.hcf_modeling import (
    MLLAMA_HCF_MODEL_TYPE,
    HCFMllamaConfig,
    HCFMllamaForConditionalGeneration,
    HCFMllamaModel,
    default_hcf_groups,
    prompt_mask,
    split_vision_output,
)

logger = logging.getLogger(__name__)

HCF_MODEL_TYPE = MLLAMA_HCF_MODEL_TYPE
HCF_OPTIONS: tuple[str, ...] = ("groups", "gate", "num_heads", "gate_hidden", "dropout")


def _as_config(config: MllamaConfig | dict[str, Any]) -> MllamaConfig:
    if isinstance(config, dict):
        return MllamaConfig(**config)
    # A copy, so models built from one config object do not share (and mutate) it.
    return copy.deepcopy(config)


def _check(config: MllamaConfig) -> None:
    vision, text = config.vision_config, config.text_config
    indices = list(vision.intermediate_layers_indices or [])
    expected = vision.hidden_size * (1 + len(indices))
    if vision.vision_output_dim != expected:
        raise ValueError(
            f"vision_output_dim {vision.vision_output_dim} != hidden {vision.hidden_size} x "
            f"(1 + {len(indices)} intermediate layers) = {expected}"
        )
    if any(not 0 <= i < vision.num_hidden_layers for i in indices):
        raise ValueError(
            f"intermediate_layers_indices {indices} outside the {vision.num_hidden_layers} layers"
        )
    if any(not 0 <= i < text.num_hidden_layers for i in text.cross_attention_layers or []):
        raise ValueError(f"cross_attention_layers {text.cross_attention_layers} outside the text")


def build_mllama(
    config: MllamaConfig | dict[str, Any],
    hcf: bool | dict[str, Any] = False,
    gate_init: float | None = None,
) -> MllamaForConditionalGeneration:
    """Builds a random-init Mllama, optionally with the HCF connector.

    Args:
        config: An ``MllamaConfig`` (copied) or a dict of its fields.
        hcf: False for plain Mllama; True or a dict of HCF options (``groups``, ``gate``,
            ``num_heads``, ``gate_hidden``, ``dropout``; see ``HCFMllamaConfig``) for the HCF.
        gate_init: If set, every cross-attention tanh gate (attention and MLP) starts here
            instead of transformers' zero, so a model trained from scratch sees the image.

    Returns:
        ``MllamaForConditionalGeneration`` or ``HCFMllamaForConditionalGeneration``, in
        training mode.

    Raises:
        ValueError: On inconsistent vision/text settings or unknown HCF options.
    """
    config = _as_config(config)
    _check(config)
    if hcf is False:
        model: MllamaForConditionalGeneration = MllamaForConditionalGeneration(config)
    else:
        opts = {} if hcf is True else dict(hcf)
        unknown = sorted(set(opts) - set(HCF_OPTIONS))
        if unknown:
            raise ValueError(f"unknown HCF options {unknown}; choose from {HCF_OPTIONS}")
        fields = config.to_dict()
        for key in ("model_type", "transformers_version", "architectures"):
            fields.pop(key, None)
        indices = list(config.vision_config.intermediate_layers_indices or [])
        opts.setdefault("groups", default_hcf_groups(indices))
        hcf_config = HCFMllamaConfig(**fields, **{f"hcf_{k}": v for k, v in opts.items()})
        model = HCFMllamaForConditionalGeneration(hcf_config)
    if gate_init is not None:
        init_cross_attention_gates(model, gate_init)
    model.train()
    logger.info(
        "built mllama (%s): %.2f M parameters",
        "hcf" if hcf is not False else "plain",
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model


def init_cross_attention_gates(model: nn.Module, value: float) -> int:
    """Sets every ``cross_attn_attn_gate`` and ``cross_attn_mlp_gate`` to ``value``.

    Returns:
        The number of gate parameters set.
    """
    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                param.fill_(value)
                count += 1
    return count


TINY_VOCAB = 64
TINY_IMAGE_TOKEN = TINY_VOCAB  # Mllama's <|image|> lies just past the vocabulary


def tiny_mllama_config() -> MllamaConfig:
    """Tiny Mllama: 32 px tiles (patch 8, 17 patches, 4 tiles), vision hidden 16 with
    intermediate layers [0, 2] of 4 (output 48), text hidden 32 with 4 layers, cross-attention
    at 1 and 3, vocab 64 (+8 embedding rows), image token 64."""
    vision = MllamaVisionConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_global_layers=1,
        attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        max_num_tiles=4,
        intermediate_layers_indices=[0, 2],
        vision_output_dim=48,
    )
    text = MllamaTextConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        cross_attention_layers=[1, 3],
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return MllamaConfig(vision_config=vision, text_config=text, image_token_index=TINY_IMAGE_TOKEN)


def tiny_mllama(hcf: bool | dict[str, Any] = False) -> MllamaForConditionalGeneration:
    """A tiny Mllama for tests, built by ``build_mllama`` with cross-attention gates at 0.5.

    HCF (if on): groups [0, 1, 2] (vision layers 0, 2 and the output), 4 heads, gate MLP 32.
    """
    if hcf is True:
        hcf = {"num_heads": 4, "gate_hidden": 32}
    return build_mllama(tiny_mllama_config(), hcf=hcf, gate_init=0.5)


def register_auto_classes() -> None:
    """Lets ``AutoConfig`` and ``AutoModelForImageTextToText`` load HCF mllama checkpoints."""
    AutoConfig.register(HCF_MODEL_TYPE, HCFMllamaConfig, exist_ok=True)
    AutoModelForImageTextToText.register(
        HCFMllamaConfig, HCFMllamaForConditionalGeneration, exist_ok=True
    )


def load_mllama(path: str | Path, **kwargs: Any) -> MllamaForConditionalGeneration:
    """Loads a model saved by ``save_pretrained``: plain Mllama or the HCF variant.

    Args:
        path: A local model directory.
        **kwargs: Passed to ``from_pretrained`` (e.g. ``dtype``).

    Raises:
        ValueError: If the directory holds neither a Mllama nor an HCF mllama model.
    """
    classes = {
        "mllama": MllamaForConditionalGeneration,
        HCF_MODEL_TYPE: HCFMllamaForConditionalGeneration,
    }
    return load_by_model_type(path, classes, **kwargs)


__all__ = [
    "HCF_MODEL_TYPE",
    "TINY_IMAGE_TOKEN",
    "HCFMllamaConfig",
    "HCFMllamaForConditionalGeneration",
    "HCFMllamaModel",
    "build_mllama",
    "default_hcf_groups",
    "init_cross_attention_gates",
    "load_mllama",
    "prompt_mask",
    "register_auto_classes",
    "split_vision_output",
    "tiny_mllama",
    "tiny_mllama_config",
]
