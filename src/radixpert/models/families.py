"""The model families: what each one is, asked in one place.

A family (``radixpert.vocab.FAMILIES``) is a kind of vision-language model radixpert builds,
loads, trains and exports. Everything that depends on the family asks this module:

    from radixpert.models.families import family_of, components_of

    family_of(model)          # "llava" | "mllama" | "llava_onevision" | "radscribe"
    connector_of(model)       # "mlp" | "hcf" | "linear" | the RadScribe backbone
    components_of(model)      # {"vision_tower": prefix, "connector": ..., "language_model": ...}

``family_of`` is the one way a model's family is told: by class for the radixpert classes, by
``config.model_type`` otherwise, always through peft, accelerate and DDP wrappers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from radixpert.models.trainability import (
    LLAVA_COMPONENTS,
    MLLAMA_COMPONENTS,
    ONEVISION_COMPONENTS,
    Prefix,
)
from radixpert.vocab import FAMILIES

__all__ = [
    "COMPONENTS",
    "ENCODER_DECODER_COMPONENTS",
    "components_of",
    "connector_of",
    "family_of",
    "unwrap",
]

# RadScribe: backbone + image projection = vision; joint encoder, [CLS]/[SEP] and label
# branch = connector; the T5 decoder (with the memory projection) = language model.
ENCODER_DECODER_COMPONENTS: dict[str, Prefix] = {
    "vision_tower": re.compile(r"backbone|image_proj"),
    "connector": re.compile(
        r"joint|cls_embedding|sep_embedding|label_embeddings|label_fusion|label_head|label_norm"
    ),
    "language_model": re.compile(r"t5|memory_proj"),
}

COMPONENTS: Mapping[str, Mapping[str, Prefix]] = {
    "llava": LLAVA_COMPONENTS,
    "mllama": MLLAMA_COMPONENTS,
    "llava_onevision": ONEVISION_COMPONENTS,
    "radscribe": ENCODER_DECODER_COMPONENTS,
}
"""Per family: the module prefix of each component (vision tower, connector, language model)."""

# config.model_type -> family, for the transformers classes and radixpert's HCF variants.
_MODEL_TYPES: dict[str, str] = {
    "llava": "llava",
    "radixpert_hcf_llava": "llava",
    "mllama": "mllama",
    "radixpert_hcf_mllama": "mllama",
    "llava_onevision": "llava_onevision",
}


def unwrap(model: Any) -> Any:
    """The model under accelerate/DDP (``.module``) and peft (``get_base_model``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
            continue
        return model


def family_of(model: Any) -> str:
    """The family of a model (wrappers looked through).

    Raises:
        ValueError: For a model of no radixpert family, naming its class.
    """
    from radixpert.models.encoder_decoder import RadScribe

    base = unwrap(model)
    if isinstance(base, RadScribe):
        return "radscribe"
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    family = _MODEL_TYPES.get(model_type or "")
    if family is None:
        raise ValueError(
            f"{type(base).__name__} (model_type {model_type!r}) is not a model of the "
            f"families {FAMILIES}"
        )
    return family


def connector_of(model: Any) -> str | None:
    """The connector of a model: llava ``"mlp"``/``"hcf"``, mllama ``"linear"``/``"hcf"``,
    llava_onevision ``"mlp"``, radscribe its image backbone."""
    base = unwrap(model)
    family = family_of(base)
    if family == "radscribe":
        return base.image_backbone
    if base.config.model_type.startswith("radixpert_hcf_"):
        return "hcf"
    return "linear" if family == "mllama" else "mlp"


def components_of(model_or_family: Any) -> Mapping[str, Prefix]:
    """The component prefixes of a family, given its name or one of its models."""
    family = model_or_family if isinstance(model_or_family, str) else family_of(model_or_family)
    return COMPONENTS[family]
