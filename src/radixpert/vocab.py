"""The names every layer shares: observations, instruction tasks, model families and sizes.

A Study record, an instruction set, a recipe, a model and a metric all speak of the same 14
observations, the same tasks and the same models. Their names are defined here once, as plain
data, so that reading a record or validating a recipe imports no torch and no metrics package,
and no list is kept in step with another by hand.

    from radixpert.vocab import OBSERVATIONS, TASKS, FAMILIES, SIZES
    SIZES["tiny-llava-hcf"].family            # "llava"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "CONNECTORS",
    "FAMILIES",
    "LABEL_VALUES",
    "LLM_TASKS",
    "OBSERVATIONS",
    "OBSERVATIONS_5",
    "PARTS",
    "SIZES",
    "TASKS",
    "Size",
]

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The 14 CheXpert observations, in the column order of CheXpert's and CheXbert's label files."""

OBSERVATIONS_5: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)
"""The five CheXpert competition observations (F1-CheXbert-5, SembScore's subset)."""

LABEL_VALUES: tuple[int | None, ...] = (1, 0, -1, None)
"""An observation's label: positive, negative, uncertain, not mentioned."""

TASKS: tuple[str, ...] = (
    "report",
    "report-full",
    "classification",
    "grounding-phrase",
    "grounding-abnormality",
    "detection",
    "conversation",
)
"""Instruction tasks built from a Study alone (``radixpert.instruct.tasks``)."""

LLM_TASKS: tuple[str, ...] = ("conversation-llm",)
"""Instruction tasks that need the opt-in local LLM endpoint (``radixpert.instruct.llm_tasks``)."""

FAMILIES: tuple[str, ...] = ("llava", "mllama", "llava_onevision", "radscribe")
"""Model families: LLaVA-style, Llama 3.2 Vision, LLaVA-OneVision, RadScribe encoder-decoder."""

CONNECTORS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "llava": ("mlp", "hcf"),
        "mllama": ("linear", "hcf"),
        "llava_onevision": ("mlp",),
        "radscribe": (),
    }
)
"""Per family, the connectors it can have; the first is the family's own (its checkpoints')."""

PARTS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "llava": ("vision", "language"),
        "radscribe": ("backbone", "joint", "decoder"),
    }
)
"""Per family, the pretrained parts a model can be assembled from (LLaVA-style: a vision
encoder and a language model; RadScribe: an image backbone, a BERT and a T5)."""


@dataclass(frozen=True)
class Size:
    """A model size that ``radixpert.models`` can build by name.

    Attributes:
        family: One of ``FAMILIES``.
        builder: ``"module:function"`` under ``radixpert.models``, imported only when the size
            is built. A published size's function returns the checkpoint's config (built on
            the meta device, no weights); a tiny or demo size's function returns a model with
            random weights.
        options: Keyword arguments of the builder.
        published: True for the transcribed configs of published checkpoints.
        source: The hub id of the checkpoint a published size transcribes (its shape stands in
            for the checkpoint's when the checkpoint is not in the local cache: plans and
            parameter tables work without the weights).
    """

    family: str
    builder: str
    options: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    published: bool = False
    source: str | None = None


def _size(
    family: str, builder: str, published: bool = False, source: str | None = None, **options: Any
) -> Size:
    return Size(family, builder, MappingProxyType(options), published, source)


SIZES: MappingProxyType[str, Size] = MappingProxyType(
    {
        "llama32_vision_11b": _size(
            "mllama",
            "sizes:llama32_vision_11b",
            published=True,
            source="meta-llama/Llama-3.2-11B-Vision-Instruct",
        ),
        "llava15_7b": _size(
            "llava", "sizes:llava15_7b", published=True, source="llava-hf/llava-1.5-7b-hf"
        ),
        "llava_onevision_7b": _size(
            "llava_onevision",
            "sizes:llava_onevision_7b",
            published=True,
            source="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        ),
        "llava_rad_shape": _size("llava", "sizes:llava_rad_shape", published=True),
        "tiny-llava": _size("llava", "llava:tiny_llava", connector="mlp"),
        "tiny-llava-hcf": _size("llava", "llava:tiny_llava", connector="hcf"),
        "demo-llava": _size("llava", "llava:demo_llava", connector="mlp"),
        "demo-llava-hcf": _size("llava", "llava:demo_llava", connector="hcf"),
        "tiny-encoder-decoder": _size("radscribe", "encoder_decoder:tiny_encoder_decoder"),
        "tiny-mllama": _size("mllama", "mllama:tiny_mllama"),
        "tiny-onevision": _size("llava_onevision", "onevision:tiny_onevision"),
    }
)
"""Every size name a recipe or ``radixpert model info`` accepts."""
