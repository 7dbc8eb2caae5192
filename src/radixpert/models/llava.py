"""The llava family: a vision tower, a connector (``mlp`` or ``hcf``) and a causal LM.

    model = build_llava(CLIPVisionConfig(...), LlamaConfig(...), connector="hcf",
                        image_token_index=32000)
    out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, labels=labels,
                prompt_mask=prompt)                    # HCF: which tokens are prompt
    model.last_gate_weights                                # (images, levels), for logging
    model.save_pretrained(path); model = load_llava(path)  # HCF weights included
    model = tiny_llava("hcf")                              # tests: same builder, tiny sizes

Everything is transformers' ``LlavaForConditionalGeneration``, so generation, the KV cache,
saving and peft come from transformers:

- ``connector="mlp"`` is plain Llava (LLaVA-1.5's projector on ``vision_feature_layer``); its
  checkpoints load in any tool that reads Llava.
- ``connector="hcf"`` is ``HCFLlavaForConditionalGeneration`` (defined in ``hcf_modeling``,
  the self-contained module an export carries), a Llava subclass whose
  ``model.multi_modal_projector`` is an ``HCF`` (connectors.py). ``config.vision_feature_layer``
  holds the HCF depths (``fusion_layers`` by default), read from the vision tower's
  ``hidden_states`` exactly as Llava reads them (``vision_feature_select_strategy="default"``
  drops the CLS token). The HCF's text is the embedded prompt: the input embeddings of the
  tokens that are attended (``attention_mask``), not image placeholders, and not training
  targets (``labels != -100``). Excluding the targets matters: image tokens come before the
  answer, so fusing the answer into them would let the model read the report it must write,
  and at generation time there is no answer to read. The fused tokens h* take the
  image-token positions, as the projector output does in Llava.

Each image is fused with the prompt of the sample whose ``<image>`` tokens it fills, so
several images per sample work as in Llava (the images' order is the placeholders' order).

Saving: the HCF model has its own ``model_type`` (``radixpert_hcf_llava``), so its config
(HCF depths and settings) and all its weights, HCF included, go through ``save_pretrained``;
``load_llava`` (or ``HCFLlavaForConditionalGeneration.from_pretrained``, or the Auto classes
after ``register_auto_classes()``) rebuilds it. Do not load it with plain
``LlavaForConditionalGeneration``: transformers only warns (model-type mismatch, HCF weights
unexpected) and gives a random projector.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
)

from radixpert.models._loading import load_by_model_type
from radixpert.models.connectors import CONNECTOR_KINDS
from radixpert.models.hcf_modeling import (
    LLAVA_HCF_MODEL_TYPE,
    HCFLlavaConfig,
    HCFLlavaForConditionalGeneration,
    HCFLlavaModel,
)
from radixpert.models.vision import fusion_layers

logger = logging.getLogger(__name__)

HCF_MODEL_TYPE = LLAVA_HCF_MODEL_TYPE
# Vision configs whose encoders have no CLS token: Llava's "default" strategy would drop a patch.
_NO_CLS = ("siglip_vision_model", "siglip2_vision_model")


def _image_seq_length(vision_config: PretrainedConfig, strategy: str) -> int:
    """Image tokens per image that Llava's feature selection gives (CLS dropped by "default")."""
    size, patch = vision_config.image_size, vision_config.patch_size
    prefix = 0 if vision_config.model_type in _NO_CLS else 1
    return (size // patch) ** 2 + prefix - (1 if strategy == "default" else 0)


def build_llava(
    vision_config: PretrainedConfig | dict[str, Any],
    text_config: PretrainedConfig | dict[str, Any],
    connector: str = "mlp",
    hcf_layers: list[int] | None = None,
    image_token_index: int = 32000,
    **opts: Any,
) -> LlavaForConditionalGeneration:
    """Builds a random-init llava-style model from a vision and a text config.

    Args:
        vision_config: Any vision encoder config ``AutoModel`` builds (CLIP, SigLIP, DINOv2,
            ViT), or a dict with its ``model_type``.
        text_config: Any causal-LM config ``AutoModel`` builds, or a dict with ``model_type``.
        connector: ``"mlp"`` (plain Llava) or ``"hcf"``.
        hcf_layers: HCF depths in ``hidden_states`` numbering, lowest first; default
            ``fusion_layers(vision depth)`` (three levels). Only for ``"hcf"``.
        image_token_index: Id of the ``<image>`` placeholder; must lie inside the vocabulary.
        **opts: Further ``LlavaConfig`` fields (e.g. ``vision_feature_layer`` for ``mlp``,
            ``vision_feature_select_strategy``), and for ``hcf`` the ``HCFLlavaConfig``
            fields ``hcf_gate``, ``hcf_num_heads``, ``hcf_gate_hidden``, ``hcf_dropout``.
            The strategy defaults to ``"full"`` for encoders without CLS (SigLIP), else
            ``"default"``; ``image_seq_length`` is computed from it.

    Returns:
        ``LlavaForConditionalGeneration`` for ``mlp``, ``HCFLlavaForConditionalGeneration``
        for ``hcf``, in training mode.

    Raises:
        ValueError: For an unknown connector, HCF settings given to ``mlp``, or an image token
            outside the vocabulary.
    """
    if connector not in CONNECTOR_KINDS:
        raise ValueError(f"unknown connector {connector!r}; choose one of {CONNECTOR_KINDS}")
    vision_config = _as_config(vision_config)
    text_config = _as_config(text_config)
    if not 0 <= image_token_index < text_config.vocab_size:
        raise ValueError(
            f"image_token_index {image_token_index} outside the vocabulary "
            f"(vocab_size {text_config.vocab_size})"
        )
    no_cls = vision_config.model_type in _NO_CLS
    strategy = opts.setdefault("vision_feature_select_strategy", "full" if no_cls else "default")
    opts.setdefault("image_seq_length", _image_seq_length(vision_config, strategy))
    common = {
        "vision_config": vision_config,
        "text_config": text_config,
        "image_token_index": image_token_index,
    }
    if connector == "mlp":
        extra = [k for k in opts if k.startswith("hcf_")]
        if hcf_layers is not None or extra:
            raise ValueError(f"HCF settings {extra or ['hcf_layers']} given to the mlp connector")
        config: LlavaConfig = LlavaConfig(**common, **opts)
        model: LlavaForConditionalGeneration = LlavaForConditionalGeneration(config)
    else:
        if "vision_feature_layer" in opts:
            raise ValueError("for the hcf connector give the depths as hcf_layers")
        depth = vision_config.num_hidden_layers
        layers = list(hcf_layers) if hcf_layers else fusion_layers(depth)
        if any(not -depth - 1 <= layer <= depth for layer in layers):
            raise ValueError(
                f"hcf_layers {layers} outside the vision tower: depths are {-depth - 1}..{depth}"
            )
        config = HCFLlavaConfig(**common, vision_feature_layer=layers, **opts)
        model = HCFLlavaForConditionalGeneration(config)
    logger.info(
        "built llava (%s connector): %s vision + %s text, %.2f M parameters",
        connector,
        vision_config.model_type,
        text_config.model_type,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model


def _as_config(config: PretrainedConfig | dict[str, Any]) -> PretrainedConfig:
    if isinstance(config, dict):
        fields = dict(config)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    # A copy, so models built from one config object do not share (and mutate) it.
    return copy.deepcopy(config)


def tiny_text_config() -> LlamaConfig:
    """A tiny random-init Llama for tests: vocab 64, hidden 32, 2 layers, 4 heads."""
    return LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


TINY_IMAGE_TOKEN = 63


def tiny_llava(connector: str = "mlp") -> LlavaForConditionalGeneration:
    """A tiny llava for tests: CLIP (32 px, patch 8, 16 image tokens) + Llama, image token 63.

    Built by ``build_llava``, the same code as full sizes; HCF: depths [1, 3, 4], 4 heads.
    """
    clip = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
    )
    opts: dict[str, Any] = {}
    if connector == "hcf":
        opts = {"hcf_num_heads": 4, "hcf_gate_hidden": 32}
    return build_llava(
        clip, tiny_text_config(), connector, image_token_index=TINY_IMAGE_TOKEN, **opts
    )


DEMO_VOCAB = 512


def demo_llava(connector: str = "hcf") -> LlavaForConditionalGeneration:
    """The demo's small llava: CLIP (64 px, patch 16, 16 image tokens, width 64, 4 layers) +
    Llama (width 128, 3 layers, vocab 512, image token 511), about 1 M parameters.

    Small enough to train from scratch on phantoms on two CPU cores in minutes, large enough to
    read them: 64 px keeps devices, nodules and pleural lines visible (see ``radixpert demo``).
    Patch 16 rather than 8: a vision tower of this size trained to classify the phantom findings
    reached the same micro F1 with 16 px patches as with 8 px ones (0.86 and 0.86) in 40% of
    the time (2,000 steps of 32, benchmarks/demo_vision_probe.py, docs/benchmarks.md), and
    four times fewer image tokens keep the language model's sequences short.
    """
    clip = CLIPVisionConfig(
        image_size=64,
        patch_size=16,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
    )
    text = LlamaConfig(
        vocab_size=DEMO_VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    opts: dict[str, Any] = {"hcf_num_heads": 4, "hcf_gate_hidden": 64} if connector == "hcf" else {}
    return build_llava(clip, text, connector, image_token_index=DEMO_VOCAB - 1, **opts)


def register_auto_classes() -> None:
    """Lets ``AutoConfig`` and ``AutoModelForImageTextToText`` load HCF llava checkpoints, and
    ``AutoModel`` build open_clip vision towers (BiomedCLIP's) inside any Llava."""
    from radixpert.models import open_clip_tower

    open_clip_tower.register()
    AutoConfig.register(HCF_MODEL_TYPE, HCFLlavaConfig, exist_ok=True)
    AutoModelForImageTextToText.register(
        HCFLlavaConfig, HCFLlavaForConditionalGeneration, exist_ok=True
    )


def load_llava(path: str | Path, **kwargs: Any) -> LlavaForConditionalGeneration:
    """Loads a model saved by ``save_pretrained``: plain Llava or the HCF variant.

    Args:
        path: A local model directory.
        **kwargs: Passed to ``from_pretrained`` (e.g. ``dtype``).

    Raises:
        ValueError: If the directory holds neither a Llava nor an HCF llava model.
    """
    register_auto_classes()  # an open_clip tower's config type must be known first
    classes = {
        "llava": LlavaForConditionalGeneration,
        HCF_MODEL_TYPE: HCFLlavaForConditionalGeneration,
    }
    return load_by_model_type(path, classes, **kwargs)


__all__ = [
    "HCF_MODEL_TYPE",
    "TINY_IMAGE_TOKEN",
    "HCFLlavaConfig",
    "HCFLlavaForConditionalGeneration",
    "HCFLlavaModel",
    "build_llava",
    "load_llava",
    "register_auto_classes",
    "tiny_llava",
    "tiny_text_config",
]


def build_llava_pretrained(
    vision: str | Path,
    text: str | Path,
    connector: str = "mlp",
    image_token_index: int | None = None,
    **opts: Any,
) -> LlavaForConditionalGeneration:
    """A llava-style model whose vision tower and language model come from pretrained weights.

    The connector (MLP projector or HCF) starts random: that is what projector alignment trains.

    Args:
        vision: Hugging Face id or local folder of a vision encoder (a CLIP/SigLIP model or its
            vision half, DINOv2, ViT); loaded with transformers, honouring HF_HUB_OFFLINE.
        text: Hugging Face id or local folder of a causal language model.
        connector: ``"mlp"`` or ``"hcf"``.
        image_token_index: Id of ``<image>``; default: the last id of the vocabulary. It must
            lie inside the vocabulary (add the token to the tokenizer and resize first).
        **opts: As for `build_llava`.

    Returns:
        The assembled model with the pretrained weights in its tower and language model.
    """
    from transformers import AutoModelForCausalLM

    vision_cfg = AutoConfig.from_pretrained(vision)
    vision_cfg = getattr(vision_cfg, "vision_config", None) or vision_cfg
    text_model = AutoModelForCausalLM.from_pretrained(text)
    text_cfg = text_model.config
    if image_token_index is None:
        image_token_index = text_cfg.vocab_size - 1
    model = build_llava(vision_cfg, text_cfg, connector, image_token_index=image_token_index,
                        **opts)  # fmt: skip
    tower = model.model.vision_tower
    tower.load_state_dict(type(tower).from_pretrained(vision).state_dict(), strict=True)
    model.model.language_model.load_state_dict(text_model.model.state_dict(), strict=True)
    model.lm_head.load_state_dict(text_model.lm_head.state_dict(), strict=True)
    return model
