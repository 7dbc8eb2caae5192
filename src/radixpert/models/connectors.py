"""Connectors: turn vision-tower states into visual tokens in the language model's width.

    proj = build_connector("mlp", 1024, 4096)                 # LLaVA-1.5 projector
    tokens = proj(tower(pixels, layers=[-1])[0])              # (batch, patches, 4096)

    hcf = build_connector("hcf", 1024, 4096, num_heads=8)     # Radixpert's fusion
    out = hcf(tower(pixels, layers=fusion_layers(24)), text_embeds, text_mask)
    out.hidden, out.gate_weights                              # (b, patches, 4096), (b, 3)

``MLPProjector`` has the parameter names of transformers' ``LlavaMultiModalProjector``
(``linear_1``, ``linear_2``), so state dicts move between the two unchanged.

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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

GateKind = Literal["learned", "equal"]
CONNECTOR_KINDS: tuple[str, ...] = ("mlp", "hcf")
IGNORE_INDEX = -100  # label of positions that are not training targets


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
    ) -> HCFOutput:
        """Fuses the vision states of each level with the text prompt.

        Args:
            level_states: ``levels`` tensors (batch, tokens, vision_hidden), lowest depth first.
            text_embeds: Embedded text prompt (batch, text tokens, text_hidden), or None.
            text_mask: (batch, text tokens), 1/True for real tokens and 0/False for padding
                (transformers' ``attention_mask``); None means all real.

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
            pooled = stacked.mean(dim=2).flatten(1)  # (batch, levels * hidden)
            weights = self.gate(pooled).softmax(dim=-1)
        hidden = (weights[:, :, None, None] * stacked).sum(dim=1)
        return HCFOutput(hidden=hidden, gate_weights=weights)


def build_connector(kind: str, vision_hidden: int, text_hidden: int, **opts: Any) -> nn.Module:
    """Builds a connector by name.

    Args:
        kind: ``"mlp"`` (``MLPProjector``) or ``"hcf"`` (``HCF``).
        vision_hidden: Width of the vision states.
        text_hidden: Width of the language model's embeddings.
        **opts: Keyword arguments of the chosen class (e.g. ``levels``, ``gate`` for HCF).

    Raises:
        ValueError: For an unknown kind.
    """
    if kind == "mlp":
        return MLPProjector(vision_hidden, text_hidden, **opts)
    if kind == "hcf":
        return HCF(vision_hidden, text_hidden, **opts)
    raise ValueError(f"unknown connector {kind!r}; choose one of {CONNECTOR_KINDS}")


__all__ = ["CONNECTOR_KINDS", "HCF", "HCFLevel", "HCFOutput", "MLPProjector", "build_connector"]


def prompt_mask(
    input_ids: Tensor | None,
    attention_mask: Tensor | None,
    labels: Tensor | None,
    image_token_index: int,
    shape: tuple[int, int],
    device: torch.device,
) -> Tensor:
    """True where a position is prompt text the HCF may read.

    Attended (``attention_mask``), not an ``<|image|>`` token, not a target (``labels``).
    """
    mask = torch.ones(shape, dtype=torch.bool, device=device)
    if input_ids is not None:
        mask &= input_ids != image_token_index
    if attention_mask is not None:
        mask &= attention_mask.bool()
    if labels is not None:
        mask &= labels == IGNORE_INDEX
    return mask
