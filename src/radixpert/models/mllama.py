"""The mllama family: transformers' Mllama (Llama 3.2 Vision), optionally with an HCF connector.

    model = build_mllama(MllamaConfig(...))                  # plain Mllama, any tool reads it
    model = build_mllama(config, hcf={"num_heads": 8})       # HCF at the cross-attention states
    out = model(input_ids=ids, pixel_values=px, aspect_ratio_ids=ar, aspect_ratio_mask=am,
                cross_attention_mask=xmask, attention_mask=mask, labels=labels)
    model.last_gate_weights                                  # (images, levels), for logging
    model.save_pretrained(path); model = load_mllama(path)   # HCF weights included
    model = tiny_mllama(hcf=True)                            # tests: same builder, tiny sizes

Mllama does not put visual tokens into the text sequence: its vision model returns, per tile
and patch, the concatenation of the last hidden state and the states of the
``intermediate_layers_indices`` layers (``vision_output_dim`` = hidden x (1 + their number));
``multi_modal_projector`` (one Linear) maps that to the text width, and the result is the
``cross_attention_states`` the gated cross-attention layers of the text model attend to.

With ``hcf`` the projector is replaced by an ``HCF`` (connectors.py), and fusion happens exactly
there. The vision output is split back into its layer groups (``split_vision_output``), the
groups named by ``config.hcf_groups`` are the HCF levels (default: the earliest intermediate
layer, a middle one and the last hidden state), and each image's levels are fused with the
embedded text prompt of its sample: the input embeddings of the attended tokens that are neither
``<|image|>`` tokens nor training targets (``labels != -100``; the answer must not leak into the
image). h* takes the projector output's place, shape (images x tiles, patches, text hidden), and
is handed to transformers' own forward as ``cross_attention_states``, so masks, the KV cache
and generation are transformers' own. In ``generate`` with the cache (the default) the images
are fused once, at prefill, with the prompt; the cross-attention cache holds h* afterwards.

Tiny random-init models must start the tanh cross-attention gates non-zero (``gate_init``):
transformers initialises them to zero, and then the text model ignores the image.

Saving: the HCF model has its own ``model_type`` (``radixpert_hcf_mllama``), so ``load_mllama``
(or the Auto classes after ``register_auto_classes()``) rebuilds it with its HCF weights.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    MllamaConfig,
    MllamaForConditionalGeneration,
)
from transformers.models.mllama.configuration_mllama import MllamaTextConfig, MllamaVisionConfig
from transformers.models.mllama.modeling_mllama import (
    MllamaModel,
    MllamaPreTrainedModel,
    MllamaTextModel,
    MllamaVisionModel,
)

from radixpert.models._loading import load_by_model_type
from radixpert.models.connectors import HCF, prompt_mask

logger = logging.getLogger(__name__)

HCF_MODEL_TYPE = "radixpert_hcf_mllama"
HCF_OPTIONS: tuple[str, ...] = ("groups", "gate", "num_heads", "gate_hidden", "dropout")


@strict
class HCFMllamaConfig(MllamaConfig):
    """``MllamaConfig`` plus the HCF connector's settings.

    Args:
        hcf_groups: Layer groups of the vision output used as HCF levels, lowest first, in the
            numbering of ``split_vision_output`` (``j`` < k: ``intermediate_layers_indices[j]``;
            k: the last hidden state). None: ``default_hcf_groups``.
        hcf_gate: ``"learned"`` or ``"equal"`` (see ``HCF``).
        hcf_num_heads: Cross-attention heads; must divide the text hidden size.
        hcf_gate_hidden: Hidden width of the gate MLP.
        hcf_dropout: Attention dropout inside the HCF.
    """

    model_type = HCF_MODEL_TYPE

    hcf_groups: list[int] | None = None
    hcf_gate: Literal["learned", "equal"] = "learned"
    hcf_num_heads: int = 8
    hcf_gate_hidden: int = 256
    hcf_dropout: float = 0.0


def default_hcf_groups(intermediate_layers_indices: list[int]) -> list[int]:
    """Early, middle and last groups: the shallowest intermediate layer, a middle one, the output.

    Args:
        intermediate_layers_indices: The vision config's intermediate layers.

    Returns:
        Group numbers (see ``split_vision_output``) ordered by depth; all groups if 3 or fewer.
    """
    count = len(intermediate_layers_indices)
    order = [*sorted(range(count), key=intermediate_layers_indices.__getitem__), count]
    if len(order) <= 3:
        return order
    return [order[0], order[(len(order) - 1) // 2], order[-1]]


def split_vision_output(states: Tensor, hidden: int) -> list[Tensor]:
    """Splits Mllama's vision output into its layer groups.

    The vision model concatenates the last hidden state (first ``hidden`` channels) with the
    intermediate states stacked on a new last axis and flattened, so intermediate layer ``j``
    sits at channels ``hidden + d * k + j``.

    Args:
        states: (..., hidden x (1 + k)) vision output.
        hidden: The vision hidden size.

    Returns:
        k + 1 tensors (..., hidden): intermediate layers in config order, then the last state.
    """
    total = states.shape[-1]
    if total % hidden:
        raise ValueError(f"vision output width {total} is not a multiple of hidden {hidden}")
    count = total // hidden - 1
    inter = states[..., hidden:].unflatten(-1, (hidden, count))
    return [inter[..., j] for j in range(count)] + [states[..., :hidden]]


def _groups(config: HCFMllamaConfig) -> list[int]:
    indices = list(config.vision_config.intermediate_layers_indices or [])
    return list(config.hcf_groups) if config.hcf_groups else default_hcf_groups(indices)


class HCFMllamaModel(MllamaModel):
    """``MllamaModel`` whose ``multi_modal_projector`` is an ``HCF`` fed by the prompt."""

    config_class = HCFMllamaConfig

    def __init__(self, config: HCFMllamaConfig) -> None:
        # MllamaModel.__init__ would build (and then waste) a Linear projector.
        MllamaPreTrainedModel.__init__(self, config)
        self.vocab_size = config.text_config.vocab_size
        self.hidden_size = config.text_config.hidden_size
        self.max_num_tiles = config.vision_config.max_num_tiles
        self.vision_output_dim = config.vision_config.vision_output_dim
        self.vision_model = MllamaVisionModel._from_config(config.vision_config)
        self.language_model = MllamaTextModel._from_config(config.text_config)
        groups = _groups(config)
        available = len(config.vision_config.intermediate_layers_indices or []) + 1
        if any(not 0 <= g < available for g in groups):
            raise ValueError(f"hcf_groups {groups} outside the {available} vision layer groups")
        self.multi_modal_projector = HCF(
            config.vision_config.hidden_size,
            config.text_config.hidden_size,
            levels=len(groups),
            gate=config.hcf_gate,
            num_heads=config.hcf_num_heads,
            gate_hidden=config.hcf_gate_hidden,
            dropout=config.hcf_dropout,
        )
        self.last_gate_weights: Tensor | None = None
        self.post_init()

    def fuse_images(
        self,
        pixel_values: Tensor,
        aspect_ratio_ids: Tensor,
        aspect_ratio_mask: Tensor | None,
        text_embeds: Tensor,
        text_mask: Tensor,
    ) -> Tensor:
        """The cross-attention states h*: each image fused with its sample's prompt.

        Args:
            pixel_values: (batch, images, tiles, C, H, W).
            aspect_ratio_ids: (batch, images), 1-based.
            aspect_ratio_mask: (batch, images, tiles) or None.
            text_embeds: (batch, text tokens, text hidden), the embedded sequence.
            text_mask: (batch, text tokens), True at prompt positions (``prompt_mask``).

        Returns:
            (batch x images x tiles, patches, text hidden), where Mllama's projector output
            goes; the gate weights (batch x images, levels) are in ``last_gate_weights``.
        """
        if aspect_ratio_ids is None:
            raise ValueError("`aspect_ratio_ids` must be provided if `pixel_values` is provided")
        if aspect_ratio_mask is None:
            aspect_ratio_mask = torch.ones(
                pixel_values.shape[:3], dtype=torch.long, device=pixel_values.device
            )
        states = self.vision_model(
            pixel_values=pixel_values,
            aspect_ratio_ids=aspect_ratio_ids,
            aspect_ratio_mask=aspect_ratio_mask,
        ).last_hidden_state  # (batch, images, tiles, patches, vision_output_dim)
        batch, images, tiles, patches, _ = states.shape
        groups = split_vision_output(states, self.config.vision_config.hidden_size)
        levels = [
            groups[g].reshape(batch * images, tiles * patches, -1) for g in _groups(self.config)
        ]
        owner = torch.arange(batch, device=states.device).repeat_interleave(images)
        fused = self.multi_modal_projector(levels, text_embeds[owner], text_mask[owner])
        self.last_gate_weights = fused.gate_weights.detach()
        return fused.hidden.reshape(-1, patches, self.hidden_size)

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: Tensor | None = None,
        aspect_ratio_mask: Tensor | None = None,
        aspect_ratio_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Mllama's forward with ``pixel_values`` fused with the prompt by the HCF.

        Arguments are ``MllamaModel``'s; the prompt is every attended non-image token (no
        labels are seen here; ``HCFMllamaForConditionalGeneration`` also drops the targets).
        """
        if pixel_values is not None:
            kwargs["cross_attention_states"] = self.fuse_from_text(
                input_ids=input_ids,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                labels=None,
                pixel_values=pixel_values,
                aspect_ratio_ids=aspect_ratio_ids,
                aspect_ratio_mask=aspect_ratio_mask,
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )

    def fuse_from_text(
        self,
        input_ids: Tensor | None,
        inputs_embeds: Tensor | None,
        attention_mask: Tensor | None,
        labels: Tensor | None,
        pixel_values: Tensor,
        aspect_ratio_ids: Tensor | None,
        aspect_ratio_mask: Tensor | None,
    ) -> Tensor:
        """``fuse_images`` with the prompt taken from the text inputs (see ``prompt_mask``).

        Args:
            input_ids: (batch, text tokens), or None with ``inputs_embeds``.
            inputs_embeds: (batch, text tokens, text hidden), or None with ``input_ids``.
            attention_mask: (batch, text tokens) or None.
            labels: (batch, text tokens) or None; targets (not -100) are not prompt.
            pixel_values: (batch, images, tiles, C, H, W).
            aspect_ratio_ids: (batch, images), 1-based.
            aspect_ratio_mask: (batch, images, tiles) or None.

        Returns:
            The cross-attention states h*, as ``fuse_images``.

        Raises:
            ValueError: Unless exactly one of ``input_ids`` and ``inputs_embeds`` is given.
        """
        if (inputs_embeds is None) == (input_ids is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        mask = prompt_mask(
            input_ids,
            attention_mask,
            labels,
            self.config.image_token_index,
            tuple(inputs_embeds.shape[:2]),
            inputs_embeds.device,
        )
        return self.fuse_images(
            pixel_values, aspect_ratio_ids, aspect_ratio_mask, inputs_embeds, mask
        )


class HCFMllamaForConditionalGeneration(MllamaForConditionalGeneration):
    """Mllama whose cross-attention states are the HCF's fusion of vision depths and prompt.

    ``last_gate_weights`` holds the gate weights of the last forward that saw images,
    (images, levels), detached; None before any.
    """

    config_class = HCFMllamaConfig

    def __init__(self, config: HCFMllamaConfig) -> None:
        # MllamaForConditionalGeneration.__init__ would build a whole plain MllamaModel first.
        MllamaPreTrainedModel.__init__(self, config)
        self.model = HCFMllamaModel(config)
        self.lm_head = nn.Linear(
            config.text_config.hidden_size, config.text_config.vocab_size, bias=False
        )
        self.last_gate_weights: Tensor | None = None
        self.post_init()

    def _supports_mm_encoder_outputs(self) -> bool:
        # The images are fused with the prompt inside forward, never encoded ahead of it.
        return False

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: Tensor | None = None,
        aspect_ratio_mask: Tensor | None = None,
        aspect_ratio_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Mllama's forward; images become HCF-fused ``cross_attention_states``.

        Arguments are ``MllamaForConditionalGeneration``'s. The HCF reads the prompt: attended,
        non-image tokens whose label is -100 (or all attended non-image tokens without labels).

        Raises:
            ValueError: If both ``pixel_values`` and ``cross_attention_states`` are given.
        """
        if pixel_values is not None:
            if kwargs.get("cross_attention_states") is not None:
                raise ValueError("pass pixel_values or cross_attention_states, not both")
            kwargs["cross_attention_states"] = self.model.fuse_from_text(
                input_ids=input_ids,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                labels=labels,
                pixel_values=pixel_values,
                aspect_ratio_ids=aspect_ratio_ids,
                aspect_ratio_mask=aspect_ratio_mask,
            )
            self.last_gate_weights = self.model.last_gate_weights
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            labels=labels,
            **kwargs,
        )


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
