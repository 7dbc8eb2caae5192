"""The HCF connector and the HCF variants of Llava and Mllama, in one self-contained module.

This file imports only torch, transformers and huggingface_hub, never radixpert, so that
``radixpert model export`` can copy it into an exported model folder (as
``modeling_radixpert_hcf.py``, named by ``auto_map`` in ``config.json``) and plain
transformers loads the model with::

    AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)

radixpert itself imports these classes from here (``connectors``, ``llava`` and ``mllama``
re-export them), so training and serving run the same code: there is one copy of the model.

``HCF`` (hierarchical cross-modal fusion, Radixpert paper) has one level per vision depth
(default three: early, middle, last). Level ``l``:

    q_l = proj_l(v_l) + h_{l-1}                       # h_0 := 0; lower levels flow upward
    h_l = LayerNorm_l(q_l + CrossAttn_l(q_l, text, text))
    alpha = softmax(GateMLP([mean(h_1), ..., mean(h_L)]))   # (batch, L)
    h* = sum_l alpha_l h_l                            # (batch, patches, text_hidden)

Lower levels reach higher ones by *addition* of the previous level's fused output to the
projected tokens: it keeps the token count (so ``h*`` replaces a plain projector's output
one-for-one) and adds no parameters, and because ``h_{l-1}`` already contains every level below
it, the top level sees all of them. Visual tokens are the queries and the text prompt the keys
and values; masked text positions are excluded from attention. Without text (e.g. an
image-only alignment stage) the cross-attention term is skipped, and a sample whose text is all
masked gets no cross-attention term either rather than NaNs.

``HCFLlavaForConditionalGeneration`` (``model_type`` ``radixpert_hcf_llava``) is a Llava whose
``multi_modal_projector`` is an HCF over the ``vision_feature_layer`` depths;
``HCFMllamaForConditionalGeneration`` (``radixpert_hcf_mllama``) is a Mllama whose
cross-attention states are the HCF's fusion of the vision output's layer groups. In both the
HCF's text is the embedded prompt: attended tokens that are not image placeholders and, when
the processor says which tokens are prompt (its ``prompt_mask``), not inside an answer. See
``radixpert.models.llava`` and ``radixpert.models.mllama`` for the builders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn
from transformers import (
    AutoModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    MllamaConfig,
    MllamaForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaModel, LlavaPreTrainedModel
from transformers.models.mllama.modeling_mllama import (
    MllamaModel,
    MllamaPreTrainedModel,
    MllamaTextModel,
    MllamaVisionModel,
)

logger = logging.getLogger(__name__)

GateKind = Literal["learned", "equal"]
IGNORE_INDEX = -100  # label of positions that are not training targets
LLAVA_HCF_MODEL_TYPE = "radixpert_hcf_llava"
MLLAMA_HCF_MODEL_TYPE = "radixpert_hcf_mllama"


class MLPProjector(nn.Module):
    """LLaVA-1.5's projector: Linear -> GELU -> Linear.

    Args:
        vision_hidden: Width of the vision features.
        text_hidden: Width of the language model's embeddings.
        bias: Whether the linears have biases (``multimodal_projector_bias`` in LLaVA).
    """

    def __init__(self, vision_hidden: int, text_hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, text_hidden, bias=bias)
        # Exact (erf) GELU, which is what LLaVA's projector_hidden_act="gelu" resolves to.
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=bias)

    def forward(self, image_features: Tensor) -> Tensor:
        """Maps (..., vision_hidden) features to (..., text_hidden)."""
        return self.linear_2(self.act(self.linear_1(image_features)))


@dataclass
class HCFOutput:
    """What ``HCF.forward`` returns.

    Attributes:
        hidden: Fused visual tokens h*, (batch, visual tokens, text hidden).
        gate_weights: Level weights alpha(x), (batch, levels); each row sums to 1.
    """

    hidden: Tensor
    gate_weights: Tensor


class HCFLevel(nn.Module):
    """One fusion level: project visual tokens, cross-attend to the text, residual + LayerNorm.

    Args:
        vision_hidden: Width of this level's vision states.
        text_hidden: Width of the text embeddings and of the output.
        num_heads: Attention heads; must divide ``text_hidden``.
        dropout: Attention dropout.
    """

    def __init__(self, vision_hidden: int, text_hidden: int, num_heads: int, dropout: float):
        super().__init__()
        self.proj = MLPProjector(vision_hidden, text_hidden)
        self.cross_attn = nn.MultiheadAttention(
            text_hidden, num_heads, dropout=dropout, batch_first=True
        )
        self.norm = nn.LayerNorm(text_hidden)

    def forward(
        self,
        visual: Tensor,
        below: Tensor | None,
        text_embeds: Tensor | None,
        text_mask: Tensor | None,
    ) -> Tensor:
        """Fuses one level; ``below`` is the previous level's output (None at the lowest)."""
        query = self.proj(visual)
        if below is not None:
            query = query + below
        if text_embeds is None:
            return self.norm(query)
        if text_mask is None:
            attended, _ = self.cross_attn(query, text_embeds, text_embeds, need_weights=False)
            return self.norm(query + attended)
        valid = text_mask.bool()
        has_text = valid.any(dim=1)
        # A row with every key masked gives NaN from softmax (and NaN gradients even if the
        # value is discarded later), so such rows attend unmasked and their result is zeroed.
        key_padding_mask = ~(valid | ~has_text[:, None])
        attended, _ = self.cross_attn(
            query, text_embeds, text_embeds, key_padding_mask=key_padding_mask, need_weights=False
        )
        attended = attended * has_text[:, None, None].to(attended.dtype)
        return self.norm(query + attended)


class HCF(nn.Module):
    """Hierarchical cross-modal fusion connector (see the module docstring).

    Args:
        vision_hidden: Width of the vision states (the same at every depth of one tower).
        text_hidden: Width of the language model's embeddings.
        levels: Number of fusion levels, one per vision depth; ``1`` is the single-level
            ablation (feed it the last depth).
        gate: ``"learned"`` (gate MLP) or ``"equal"`` (alpha = 1 / levels, the ablation).
        num_heads: Cross-attention heads; must divide ``text_hidden``.
        gate_hidden: Hidden width of the gate MLP.
        dropout: Attention dropout.
    """

    def __init__(
        self,
        vision_hidden: int,
        text_hidden: int,
        levels: int = 3,
        gate: GateKind = "learned",
        num_heads: int = 8,
        gate_hidden: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        if gate not in ("learned", "equal"):
            raise ValueError(f"gate must be 'learned' or 'equal', got {gate!r}")
        if text_hidden % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide text_hidden={text_hidden}")
        self.levels = levels
        self.gate_kind: GateKind = gate
        self.text_hidden = text_hidden
        self.fusion = nn.ModuleList(
            HCFLevel(vision_hidden, text_hidden, num_heads, dropout) for _ in range(levels)
        )
        # The gate sees all pooled levels at once, so each weight can depend on the others.
        self.gate: nn.Module | None = None
        if gate == "learned":
            self.gate = nn.Sequential(
                nn.Linear(levels * text_hidden, gate_hidden),
                nn.GELU(),
                nn.Linear(gate_hidden, levels),
            )

    def forward(
        self,
        level_states: list[Tensor],
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        visual_mask: Tensor | None = None,
    ) -> HCFOutput:
        """Fuses the vision states of each level with the text prompt.

        Args:
            level_states: ``levels`` tensors (batch, tokens, vision_hidden), lowest depth first.
            text_embeds: Embedded text prompt (batch, text tokens, text_hidden), or None.
            text_mask: (batch, text tokens), 1/True for real tokens and 0/False for padding
                (transformers' ``attention_mask``); None means all real.
            visual_mask: (batch, tokens), False at visual tokens that are padding (Mllama's
                empty tiles): the gate's pooling leaves them out. None: all real.

        Returns:
            ``HCFOutput`` with the fused tokens and the gate weights.

        Raises:
            ValueError: On a wrong number of levels or mismatched shapes.
        """
        if len(level_states) != self.levels:
            raise ValueError(f"HCF has {self.levels} levels, got {len(level_states)} states")
        shape = level_states[0].shape[:2]
        if any(state.shape[:2] != shape for state in level_states):
            raise ValueError(
                "all level states need the same (batch, tokens), got "
                f"{[tuple(state.shape) for state in level_states]}"
            )
        if text_embeds is not None and text_embeds.shape[-1] != self.text_hidden:
            raise ValueError(
                f"text_embeds width {text_embeds.shape[-1]} != text_hidden {self.text_hidden}"
            )
        if text_mask is not None and (
            text_embeds is None or text_mask.shape != text_embeds.shape[:2]
        ):
            raise ValueError("text_mask needs text_embeds of shape (batch, text tokens, hidden)")

        outputs: list[Tensor] = []
        below: Tensor | None = None
        for level, state in zip(self.fusion, level_states):
            below = level(state, below, text_embeds, text_mask)
            outputs.append(below)
        stacked = torch.stack(outputs, dim=1)  # (batch, levels, tokens, hidden)

        if self.gate is None:
            weights = stacked.new_full((stacked.shape[0], self.levels), 1.0 / self.levels)
        else:
            if visual_mask is None:
                pooled = stacked.mean(dim=2)
            else:  # the mean over the real visual tokens only
                keep = visual_mask.to(stacked.dtype)[:, None, :, None]
                pooled = (stacked * keep).sum(dim=2) / keep.sum(dim=2).clamp(min=1.0)
            pooled = pooled.flatten(1)  # (batch, levels * hidden)
            weights = self.gate(pooled).softmax(dim=-1)
        hidden = (weights[:, :, None, None] * stacked).sum(dim=1)
        return HCFOutput(hidden=hidden, gate_weights=weights)


def prompt_mask(
    input_ids: Tensor | None,
    attention_mask: Tensor | None,
    image_token_index: int,
    shape: tuple[int, int],
    device: torch.device,
    prompt: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """True where a position is prompt text the HCF may read.

    Attended (``attention_mask``), not an image token, and, when the processor says which
    tokens are prompt (``prompt``: radixpert's processor marks every token outside the
    answers), one of those. Without ``prompt`` every attended text token is prompt, which is
    right for a generation input (it ends where the answer begins) and wrong for a sequence
    that holds its answer, so ``labels`` without ``prompt`` are refused: the HCF would read the
    answer it is trained to predict.

    Raises:
        ValueError: For ``labels`` without ``prompt``, or a ``prompt`` of another shape.
    """
    if prompt is None and labels is not None and bool((labels != IGNORE_INDEX).any()):
        raise ValueError(
            "labels without prompt_mask: the HCF reads the prompt, and only the processor knows "
            "which tokens are prompt (radixpert's RadProcessor returns prompt_mask with the "
            "batch); pass prompt_mask, or no labels"
        )
    mask = torch.ones(shape, dtype=torch.bool, device=device)
    if input_ids is not None:
        mask &= input_ids != image_token_index
    if attention_mask is not None:
        mask &= attention_mask.bool()
    if prompt is not None:
        if tuple(prompt.shape) != tuple(shape):
            raise ValueError(f"prompt_mask has shape {tuple(prompt.shape)}, the text {shape}")
        mask &= prompt.to(device=device).bool()
    return mask


# ------------------------------------------------------------------ llava


@strict
class HCFLlavaConfig(LlavaConfig):
    """``LlavaConfig`` plus the HCF connector's settings (``vision_feature_layer``: its depths).

    Args:
        hcf_gate: ``"learned"`` or ``"equal"`` (see ``HCF``).
        hcf_num_heads: Cross-attention heads; must divide the text hidden size.
        hcf_gate_hidden: Hidden width of the gate MLP.
        hcf_dropout: Attention dropout inside the HCF.
    """

    model_type = LLAVA_HCF_MODEL_TYPE

    hcf_gate: Literal["learned", "equal"] = "learned"
    hcf_num_heads: int = 8
    hcf_gate_hidden: int = 256
    hcf_dropout: float = 0.0


class HCFLlavaModel(LlavaModel):
    """``LlavaModel`` with an ``HCF`` as ``multi_modal_projector``."""

    config_class = HCFLlavaConfig

    def __init__(self, config: HCFLlavaConfig) -> None:
        # LlavaModel.__init__ would build (and then waste) a projector; build the parts here.
        LlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = HCF(
            config.vision_config.hidden_size,
            config.text_config.hidden_size,
            levels=len(_layers(config)),
            gate=config.hcf_gate,
            num_heads=config.hcf_num_heads,
            gate_hidden=config.hcf_gate_hidden,
            dropout=config.hcf_dropout,
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self.last_gate_weights: Tensor | None = None
        self.post_init()

    def get_level_states(self, pixel_values: Tensor) -> list[Tensor]:
        """Vision hidden states at the HCF depths, lowest first, each (images, tokens, hidden).

        Depths and the CLS handling follow Llava's ``vision_feature_layer`` and
        ``vision_feature_select_strategy``.
        """
        outputs = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        states = [outputs.hidden_states[layer] for layer in _layers(self.config)]
        if self.config.vision_feature_select_strategy == "default":
            states = [state[:, 1:] for state in states]
        return states

    def get_image_features(  # type: ignore[override]
        self,
        pixel_values: Tensor,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        """Fuses each image with its text; ``pooler_output`` holds h* per image, as in Llava.

        Args:
            pixel_values: (images, C, H, W).
            text_embeds: (images, text tokens, text hidden), the prompt of each image's sample;
                None fuses without text (the HCF's image-only mode).
            text_mask: (images, text tokens), True where a text token is part of the prompt.
            **kwargs: Accepted for Llava's signature and ignored.

        Returns:
            ``BaseModelOutputWithPooling`` with ``pooler_output`` a list of (tokens, text
            hidden) tensors and ``attentions`` unset; the gate weights are in
            ``self.last_gate_weights`` (images, levels), detached.
        """
        fused = self.multi_modal_projector(
            self.get_level_states(pixel_values), text_embeds, text_mask
        )
        self.last_gate_weights = fused.gate_weights.detach()
        return BaseModelOutputWithPooling(
            last_hidden_state=fused.hidden, pooler_output=list(fused.hidden)
        )


class HCFLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """Llava whose connector is an HCF fed by the vision depths and the embedded prompt.

    ``last_gate_weights`` holds the gate weights of the last forward that saw images,
    (images, levels), detached; None before any.
    """

    config_class = HCFLlavaConfig

    def __init__(self, config: HCFLlavaConfig) -> None:
        # LlavaForConditionalGeneration.__init__ would build a whole plain LlavaModel first.
        LlavaPreTrainedModel.__init__(self, config)
        self.model = HCFLlavaModel(config)
        self.lm_head = nn.Linear(
            config.text_config.hidden_size, config.text_config.vocab_size, bias=False
        )
        self.last_gate_weights: Tensor | None = None
        self.post_init()

    def _supports_mm_encoder_outputs(self) -> bool:
        # generate() would otherwise encode the images before prefill through
        # get_image_features, without the prompt; forward() fuses them with it instead.
        return False

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: torch.LongTensor | None = None,
        prompt_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Llava's forward with the images fused with the prompt by the HCF.

        Arguments are Llava's, plus ``prompt_mask`` (batch, text tokens): True at the tokens
        the HCF may read as the prompt (see ``prompt_mask``; needed with ``labels``). With
        ``pixel_values``, ``input_ids`` are required (they locate the image tokens and the
        prompt); ``mm_encoder_outputs`` are refused, as they carry no prompt.

        Raises:
            ValueError: On the inputs above, or when the image tokens of a sample are not a
                whole number of images.
        """
        if kwargs.get("mm_encoder_outputs"):
            raise ValueError("the HCF connector fuses images with the prompt: pass pixel_values")
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError("the HCF connector needs input_ids with pixel_values")
            features = self._fuse_images(
                input_ids, pixel_values, attention_mask, labels, prompt_mask
            )
            kwargs["mm_encoder_outputs"] = {"image": features}
            self.last_gate_weights = self.model.last_gate_weights
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
        )

    def _fuse_images(
        self,
        input_ids: Tensor,
        pixel_values: Tensor,
        attention_mask: Tensor | None,
        labels: Tensor | None,
        prompt: Tensor | None,
    ) -> BaseModelOutputWithPooling:
        image_tokens = input_ids == self.config.image_token_index
        prompt = prompt_mask(input_ids, attention_mask, self.config.image_token_index,
                             input_ids.shape, input_ids.device, prompt, labels)  # fmt: skip
        text_embeds = self.get_input_embeddings()(input_ids)
        # Which sample's prompt each image gets: images fill the placeholders in order.
        per_image = self.config.image_seq_length
        counts = image_tokens.sum(dim=1)
        if bool((counts % per_image).any()):
            raise ValueError(
                f"image tokens per sample {counts.tolist()} are not multiples of "
                f"image_seq_length={per_image}"
            )
        owner = torch.repeat_interleave(
            torch.arange(input_ids.shape[0], device=input_ids.device), counts // per_image
        )
        if owner.numel() != pixel_values.shape[0]:
            raise ValueError(
                f"{pixel_values.shape[0]} images but image tokens for {owner.numel()} "
                f"({per_image} tokens each)"
            )
        return self.model.get_image_features(
            pixel_values, text_embeds=text_embeds[owner], text_mask=prompt[owner]
        )


def _layers(config: LlavaConfig) -> list[int]:
    layer = config.vision_feature_layer
    return [layer] if isinstance(layer, int) else list(layer)


# ------------------------------------------------------------------ mllama


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

    model_type = MLLAMA_HCF_MODEL_TYPE

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
        # Padding tiles (aspect_ratio_mask 0) must not weigh in the gate's pooled summary.
        real = aspect_ratio_mask.reshape(batch * images, tiles, 1).bool()
        visual_mask = real.expand(-1, -1, patches).reshape(batch * images, tiles * patches)
        fused = self.multi_modal_projector(
            levels, text_embeds[owner], text_mask[owner], visual_mask=visual_mask
        )
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
        prompt_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Mllama's forward with ``pixel_values`` fused with the prompt by the HCF.

        Arguments are ``MllamaModel``'s, plus ``prompt_mask`` (see ``prompt_mask``); without
        it the prompt is every attended non-image token.
        """
        if pixel_values is not None:
            kwargs["cross_attention_states"] = self.fuse_from_text(
                input_ids=input_ids,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                labels=None,
                prompt=prompt_mask,
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
        prompt: Tensor | None = None,
    ) -> Tensor:
        """``fuse_images`` with the prompt taken from the text inputs (see ``prompt_mask``).

        Args:
            input_ids: (batch, text tokens), or None with ``inputs_embeds``.
            inputs_embeds: (batch, text tokens, text hidden), or None with ``input_ids``.
            attention_mask: (batch, text tokens) or None.
            labels: (batch, text tokens) or None; refused without ``prompt``.
            pixel_values: (batch, images, tiles, C, H, W).
            aspect_ratio_ids: (batch, images), 1-based.
            aspect_ratio_mask: (batch, images, tiles) or None.
            prompt: (batch, text tokens), True at the processor's prompt tokens, or None.

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
            self.config.image_token_index,
            tuple(inputs_embeds.shape[:2]),
            inputs_embeds.device,
            prompt,
            labels,
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
        prompt_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Mllama's forward; images become HCF-fused ``cross_attention_states``.

        Arguments are ``MllamaForConditionalGeneration``'s, plus ``prompt_mask`` (batch, text
        tokens): the tokens the HCF reads as the prompt (see ``prompt_mask``; needed with
        ``labels``; without it, every attended non-image token).

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
                prompt=prompt_mask,
            )
            self.last_gate_weights = self.model.last_gate_weights
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            labels=labels,
            **kwargs,
        )


__all__ = [
    "HCF",
    "IGNORE_INDEX",
    "LLAVA_HCF_MODEL_TYPE",
    "MLLAMA_HCF_MODEL_TYPE",
    "HCFLevel",
    "HCFLlavaConfig",
    "HCFLlavaForConditionalGeneration",
    "HCFLlavaModel",
    "HCFMllamaConfig",
    "HCFMllamaForConditionalGeneration",
    "HCFMllamaModel",
    "HCFOutput",
    "MLPProjector",
    "default_hcf_groups",
    "prompt_mask",
    "split_vision_output",
]
