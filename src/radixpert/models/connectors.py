"""Connectors: turn vision-tower states into visual tokens in the language model's width.

    proj = build_connector("mlp", 1024, 4096)                 # LLaVA-1.5 projector
    tokens = proj(tower(pixels, layers=[-1])[0])              # (batch, patches, 4096)

    hcf = build_connector("hcf", 1024, 4096, num_heads=8)     # Radixpert's fusion
    out = hcf(tower(pixels, layers=fusion_layers(24)), text_embeds, text_mask)
    out.hidden, out.gate_weights                              # (b, patches, 4096), (b, 3)

``MLPProjector`` has the parameter names of transformers' ``LlavaMultiModalProjector``
(``linear_1``, ``linear_2``), so state dicts move between the two unchanged.

``HCF`` (hierarchical cross-modal fusion, Radixpert paper; the equations are in
``hcf_modeling``) fuses one level per vision depth with the text prompt and weighs the levels
by a gate. ``MLPProjector``, ``HCF``, ``HCFLevel``, ``HCFOutput`` and ``prompt_mask`` live in
``radixpert.models.hcf_modeling``, the self-contained module that exported HCF models carry
with them, and are re-exported here.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from radixpert.models.hcf_modeling import (
    HCF,
    IGNORE_INDEX,
    GateKind,
    HCFLevel,
    HCFOutput,
    MLPProjector,
    prompt_mask,
)

logger = logging.getLogger(__name__)

CONNECTOR_KINDS: tuple[str, ...] = ("mlp", "hcf")


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


__all__ = [
    "CONNECTOR_KINDS",
    "HCF",
    "IGNORE_INDEX",
    "GateKind",
    "HCFLevel",
    "HCFOutput",
    "MLPProjector",
    "build_connector",
    "prompt_mask",
]
