"""What a model is made from: the ``model:`` section of a recipe, as plain data.

``ModelSpec`` (with ``HCFOptions``) is what ``radixpert.models.families.create_model_and_processor``
builds a model from. A recipe's ``model:`` mapping is validated into one
(``radixpert.train.recipe``), and code can make one directly::

    from radixpert.models.spec import HCFOptions, ModelSpec

    spec = ModelSpec(family="mllama", pretrained="meta-llama/Llama-3.2-11B-Vision-Instruct",
                     connector="hcf", hcf=HCFOptions(levels=3))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from radixpert.vocab import CONNECTORS, FAMILIES, PARTS, SIZES

__all__ = ["HCFOptions", "ModelSpec"]


def _positive(value: float | None, name: str) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


@dataclasses.dataclass(frozen=True)
class HCFOptions:
    """Options of the HCF connector (``radixpert.models.connectors.HCF``).

    Args:
        levels: Fusion levels, one per vision depth (3 in the paper).
        gate: "learned" (gate MLP) or "equal" (the ablation).
        num_heads: Cross-attention heads.
        gate_hidden: Hidden width of the gate MLP.
        dropout: Attention dropout.
    """

    levels: int = 3
    gate: Literal["learned", "equal"] = "learned"
    num_heads: int = 8
    gate_hidden: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _positive(self.levels, "levels")
        _positive(self.num_heads, "num_heads")
        _positive(self.gate_hidden, "gate_hidden")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The model a recipe trains: a named size or tiny family, a pretrained checkpoint, or
    pretrained parts to assemble (``radixpert.models.families.create_model_and_processor``).

    Args:
        family: One of ``FAMILIES``.
        size: A named size or tiny family (``SIZES``), built with random weights.
        pretrained: A Hugging Face id (``meta-llama/Llama-3.2-11B-Vision-Instruct``), a local
            model folder or a radixpert bundle to start from. Exactly one of size, pretrained
            and parts.
        parts: Pretrained parts to assemble: llava ``{vision: ID, language: ID}`` (a CLIP /
            SigLIP / DINOv2 id, or an open_clip ``hf-hub:`` name such as BiomedCLIP, with a
            Vicuna / Llama / Qwen2 id), radscribe ``{backbone: ID, joint: ID, decoder: ID}``.
        tokenizer: A tokenizer folder or id; default: the pretrained model's own (or the
            language part's), or for a random-init ``size`` a BPE tokenizer trained on the
            recipe's text.
        system_prompt: The chat template's system prompt; None keeps the template's own
            (Vicuna's for llava), "" drops it.
        connector: The connector: llava ``mlp``/``hcf``, mllama ``linear``/``hcf``,
            llava_onevision ``mlp``; None keeps the family's own (the checkpoint's). A
            connector the checkpoint does not have (HCF on Llama 3.2 Vision) starts freshly
            initialised, and the run says so.
        hcf: HCF options; only with ``connector: hcf`` (defaults when omitted).
        dtype: The dtype the weights are loaded in: ``auto`` (a checkpoint's own, e.g. bf16;
            fp32 for random weights), ``float32``, ``bfloat16`` or ``float16``. Trainable
            weights are kept in fp32 whatever this says.
        preprocessing: ``auto``: a pretrained model's own image processor and chat template
            (``native``), the letterboxed grayscale transform for random weights
            (``letterbox``); or either, explicitly.
        quantize: ``4bit`` loads the frozen base in 4 bits for QLoRA (bitsandbytes, CUDA).
    """

    family: str
    size: str | None = None
    pretrained: str | None = None
    parts: Mapping[str, str] | None = None
    tokenizer: str | None = None
    system_prompt: str | None = None
    connector: str | None = None
    hcf: HCFOptions | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    preprocessing: Literal["auto", "native", "letterbox"] = "auto"
    quantize: Literal["4bit"] | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("size", "pretrained", "parts") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of size, pretrained and parts (got {given})")
        if self.family not in FAMILIES:
            raise ValueError(f"family: unknown {self.family!r}; known: {', '.join(FAMILIES)}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"size: unknown {self.size!r}; known: {', '.join(SIZES)}")
        if self.size is not None and SIZES[self.size].family != self.family:
            raise ValueError(
                f"size: {self.size!r} is a {SIZES[self.size].family} model, not {self.family}"
            )
        if self.parts is not None:
            wanted = PARTS.get(self.family)
            if wanted is None:
                raise ValueError(f"parts: the {self.family} family is not assembled from parts")
            if sorted(self.parts) != sorted(wanted):
                raise ValueError(f"parts: {self.family} needs exactly {list(wanted)}, got "
                                 f"{list(self.parts)}")  # fmt: skip
        allowed = CONNECTORS[self.family]
        if self.connector is not None and self.connector not in allowed:
            raise ValueError(
                f"connector: {self.connector!r} is not one of the {self.family} family's "
                f"{list(allowed) or 'none'}"
            )
        if self.hcf is not None and self.connector != "hcf":
            raise ValueError("hcf: options given but connector is not 'hcf'")
        if self.connector == "hcf" and self.hcf is None:
            object.__setattr__(self, "hcf", HCFOptions())
        if self.quantize is not None and self.size is not None:
            raise ValueError("quantize: QLoRA quantises a pretrained base, not random weights")
