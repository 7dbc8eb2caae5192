"""Per-component trainability: vision tower, connector and language model each frozen, LoRA or full.

A training stage is a switch (see ARCHITECTURE.md): "projector only", "LoRA on the language
model" and "everything" differ only in the `ComponentSpec` given to each component::

    from radixpert.models.trainability import (
        LLAVA_COMPONENTS, ComponentSpec, apply_trainability, format_parameter_report,
        parameter_report,
    )

    stage = {
        "vision_tower": ComponentSpec("frozen"),
        "connector": ComponentSpec("full"),
        "language_model": ComponentSpec("lora", rank=64),
    }
    model = apply_trainability(model, stage, LLAVA_COMPONENTS)
    print(format_parameter_report(parameter_report(model, LLAVA_COMPONENTS)))

MSA-LoRA stage transitions (rank 64 -> 32 -> 16) use `next_stage`: the current adapter is merged
into the base weights and a fresh adapter of the new rank starts with B = 0, so the model computes
exactly the same function right after the transition and nothing learned is lost.

LoRA goes through peft (imported lazily); a model with a LoRA component comes back as a
`peft.PeftModel`. Parameter and module names are always matched on the model under the peft
wrapper, so the same component prefixes serve both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from radixpert._optional import missing, require
from radixpert.errors import MissingDependency

logger = logging.getLogger(__name__)

Mode = Literal["frozen", "lora", "full"]
Prefix = str | re.Pattern[str]

MODES: tuple[str, ...] = ("frozen", "lora", "full")
COMPONENT_NAMES: tuple[str, ...] = ("vision_tower", "connector", "language_model")

# transformers 5 LlavaForConditionalGeneration: model.{vision_tower, multi_modal_projector,
# language_model} plus the output head, which belongs to the language model.
LLAVA_COMPONENTS: dict[str, Prefix] = {
    "vision_tower": "model.vision_tower",
    "connector": "model.multi_modal_projector",
    "language_model": re.compile(r"model\.language_model|lm_head"),
}

# transformers 5 LlavaOnevisionForConditionalGeneration: as Llava, plus the learned
# `image_newline` embedding between image rows, which belongs with the projector.
ONEVISION_COMPONENTS: dict[str, Prefix] = {
    "vision_tower": "model.vision_tower",
    "connector": re.compile(r"model\.(multi_modal_projector|image_newline)"),
    "language_model": re.compile(r"model\.language_model|lm_head"),
}

# transformers 5 MllamaForConditionalGeneration. The vision model has q_proj/k_proj/v_proj/o_proj
# too, so LoRA names such as "q_proj" alone would also wrap it (toolchain.md); anchoring the
# targets under model.language_model keeps LoRA on the text self- and cross-attention only.
MLLAMA_COMPONENTS: dict[str, Prefix] = {
    "vision_tower": "model.vision_model",
    "connector": "model.multi_modal_projector",
    "language_model": re.compile(r"model\.language_model|lm_head"),
}

DEFAULT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = "all-linear"
_OUTPUT_HEADS = ("lm_head",)
ADAPTER_NAME = "default"


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    r"""How one component trains in a stage.

    Args:
        mode: "frozen" (no gradient), "lora" (base frozen, LoRA adapters trained) or "full".
        rank: LoRA rank r (MSA-LoRA: 64, then 32, then 16).
        alpha: LoRA alpha. None means 2 * rank, so the LoRA scaling alpha / r stays 2 whatever
            the rank and a stage's learning rate keeps its meaning across rank changes.
        dropout: LoRA dropout (0.1 in MSA-LoRA).
        target_modules: which linear layers of the component get adapters, looked for only
            inside the component: a tuple of leaf names (``("q_proj", "v_proj")``, the default
            q/k/v/o), ``"all-linear"`` (every ``nn.Linear`` of the component, as peft's
            ``all-linear``; the output head ``lm_head`` is left out, as peft does), or any other
            string: a regular expression that must match the whole module path *below* the
            component (``r"layers\.\d+\.self_attn\.(q|v)_proj"``).
        quantize: "4bit" asks for QLoRA (a 4-bit NF4 base under the adapters); needs a CUDA GPU
            and bitsandbytes, and the model loaded with `quantization_config()`.
    """

    mode: Mode
    rank: int = 64
    alpha: float | None = None
    dropout: float = 0.1
    target_modules: tuple[str, ...] | str = DEFAULT_LORA_TARGETS
    quantize: Literal["4bit"] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str):
            if self.target_modules != ALL_LINEAR:
                try:
                    re.compile(self.target_modules)
                except re.error as err:
                    raise ValueError(
                        f"target_modules: {self.target_modules!r} is not a regex: {err}"
                    ) from err
        elif not self.target_modules:
            raise ValueError("target_modules must be names, 'all-linear' or a regex; got none")
        else:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.quantize not in (None, "4bit"):
            raise ValueError(f"quantize must be None or '4bit', got {self.quantize!r}")
        if self.quantize is not None and self.mode != "lora":
            raise ValueError(f"quantize={self.quantize!r} is QLoRA and needs mode='lora'")

    @property
    def lora_alpha(self) -> float:
        """The alpha actually used: `alpha`, or 2 * rank when unset."""
        return float(2 * self.rank if self.alpha is None else self.alpha)


def quantization_config(quantize: Literal["4bit"] = "4bit") -> Any:
    """A transformers `BitsAndBytesConfig` for QLoRA (4-bit NF4, double quantisation, bf16 compute).

    Pass it as `from_pretrained(..., quantization_config=...)`: quantisation happens at load time.

    Raises:
        RuntimeError: no CUDA GPU is present (bitsandbytes 4-bit kernels run on CUDA only).
        MissingDependency: bitsandbytes is not installed.
    """
    if quantize != "4bit":
        raise ValueError(f"only '4bit' quantisation (QLoRA) is supported, got {quantize!r}")
    _require_qlora()
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def _require_qlora() -> None:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "4-bit QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels), and none is available "
            "here; use ComponentSpec(mode='lora') without quantize on this machine."
        )
    if missing("bitsandbytes"):
        raise MissingDependency(
            "4-bit QLoRA needs bitsandbytes, which is not installed: pip install bitsandbytes"
        )


def _prefix_regex(prefix: Prefix) -> str:
    """A regex (as text) for a component's module path; a plain string is a literal prefix."""
    return prefix.pattern if isinstance(prefix, re.Pattern) else re.escape(prefix)


def _member(name: str, prefix: Prefix) -> bool:
    # A prefix names a module: match whole path segments, so "model.vision" is not inside
    # "model.vision_tower".
    return re.match(rf"(?:{_prefix_regex(prefix)})(?:\.|$)", name) is not None


def _unwrap(model: Any) -> Any:
    """The model under a peft wrapper (names there do not carry 'base_model.model.')."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _component_of(name: str, component_prefixes: Mapping[str, Prefix]) -> str:
    owners = [c for c, p in component_prefixes.items() if _member(name, p)]
    if len(owners) != 1:
        what = "no component" if not owners else f"several components {owners}"
        raise ValueError(
            f"parameter {name!r} belongs to {what}; every parameter must lie in exactly one of "
            f"{dict(component_prefixes)}"
        )
    return owners[0]


def _component_lora_regex(spec: ComponentSpec, prefix: Prefix, model: Any = None) -> str:
    """The full-match regex of the module paths given adapters in one component.

    ``"all-linear"`` needs ``model``: its linear layers inside the component are listed by name.
    """
    inside = _prefix_regex(prefix)
    targets = spec.target_modules
    if targets == ALL_LINEAR:
        if model is None:
            raise ValueError("target_modules 'all-linear' needs the model to list its layers")
        import torch

        names = [
            n
            for n, m in _unwrap(model).named_modules()
            if isinstance(m, torch.nn.Linear)
            and _member(n, prefix)
            and n.rsplit(".", 1)[-1] not in _OUTPUT_HEADS
        ]
        return "|".join(re.escape(n) for n in names) or r"(?!)"
    if isinstance(targets, str):
        return rf"(?:{inside})\.(?:{targets})"
    names = "|".join(re.escape(t) for t in targets)
    return rf"(?:{inside})\.(?:.*\.)?(?:{names})"


def lora_target_regex(
    components: Mapping[str, ComponentSpec],
    component_prefixes: Mapping[str, Prefix],
    model: Any = None,
) -> str | None:
    """The peft `target_modules` regex (full match) for the LoRA components, or None if none.

    Each LoRA component contributes `<prefix>.(...).<target name>` (or its own regex below the
    prefix, or its linear layers for ``"all-linear"``, which needs ``model``), so adapters can
    only land inside the components that asked for them.
    """
    parts = [
        _component_lora_regex(spec, component_prefixes[comp], model)
        for comp, spec in components.items()
        if spec.mode == "lora"
    ]
    return "|".join(f"(?:{p})" for p in parts) if parts else None


def _check_components(
    components: Mapping[str, ComponentSpec], component_prefixes: Mapping[str, Prefix]
) -> None:
    if set(components) != set(component_prefixes):
        raise ValueError(
            f"a setting is needed for every component and only those: settings for "
            f"{sorted(components)}, components {sorted(component_prefixes)}"
        )
    lora = {(s.rank, s.lora_alpha, s.dropout) for s in components.values() if s.mode == "lora"}
    # One peft adapter serves all LoRA components; peft has one dropout per adapter, so
    # differing settings would be silently unified. Refuse instead.
    if len(lora) > 1:
        raise ValueError(f"all LoRA components must share rank, alpha and dropout, got {lora}")


def apply_trainability(
    model: Any,
    components: Mapping[str, ComponentSpec],
    component_prefixes: Mapping[str, Prefix],
) -> Any:
    """Set each component frozen, LoRA or full.

    Args:
        model: a transformers model (not already wrapped by peft; see `next_stage`).
        components: the setting of each component, e.g. {"vision_tower": ComponentSpec("frozen")}.
        component_prefixes: module path of each component: a plain string is a literal prefix,
            a compiled regex may name several modules (`LLAVA_COMPONENTS`, `MLLAMA_COMPONENTS`).

    Returns:
        The model with requires_grad set; a `peft.PeftModel` around it if any component is LoRA.

    Raises:
        ValueError: settings and components differ, a parameter lies in no component or in
            several, LoRA settings differ between components, or a LoRA component has no
            target module.
        RuntimeError, MissingDependency: QLoRA asked for without a CUDA GPU or bitsandbytes.
    """
    _check_components(components, component_prefixes)
    if hasattr(model, "peft_config"):
        raise ValueError("model already carries peft adapters; use next_stage() to change stage")
    # Check every parameter has exactly one owner before anything is changed.
    for name, _ in _unwrap(model).named_parameters():
        _component_of(name, component_prefixes)

    if any(s.quantize for s in components.values()):
        _require_qlora()
        if not getattr(model, "is_loaded_in_4bit", False):
            raise ValueError(
                "QLoRA needs the base model loaded in 4 bits: "
                "from_pretrained(..., quantization_config=quantization_config())"
            )

    target = lora_target_regex(components, component_prefixes, model)
    if target is not None:
        model = _add_lora(model, components, component_prefixes, target)

    # get_peft_model freezes every base parameter, so requires_grad is set after it.
    inner = _unwrap(model)
    for name, param in inner.named_parameters():
        spec = components[_component_of(name, component_prefixes)]
        if spec.mode == "full":
            param.requires_grad_(True)
        elif spec.mode == "lora":
            param.requires_grad_(_is_lora_param(name))
        else:
            param.requires_grad_(False)
    _trainable_in_fp32(inner)
    logger.info(
        "trainability: %s",
        ", ".join(
            f"{c}={s.mode}" + (f"(r={s.rank})" if s.mode == "lora" else "")
            for c, s in components.items()
        ),
    )
    return model


def _trainable_in_fp32(model: Any) -> int:
    """Keeps every trainable floating-point parameter in fp32; returns how many were cast.

    A pretrained checkpoint loads in bf16, and an update of a bf16 weight below its precision
    is lost (bf16 0.02 + 2e-6 == 0.02: RadVLM's learning rates would not move the weights).
    As the transformers Trainer with ``bf16=True`` and torchtune do, the weights that train
    are kept in fp32 and mixed precision only autocasts the compute; frozen weights keep the
    dtype they were loaded in. 4-bit (QLoRA) base weights are frozen and are not touched.
    """
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != _fp32():
            param.data = param.data.float()
            cast += 1
    if cast:
        logger.info("trainability: %d trainable tensors kept in fp32 (frozen ones as loaded)", cast)
    return cast


def _fp32() -> Any:
    import torch

    return torch.float32


def _is_lora_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def _add_lora(
    model: Any,
    components: Mapping[str, ComponentSpec],
    component_prefixes: Mapping[str, Prefix],
    target: str,
) -> Any:
    require("peft", purpose="LoRA training")
    from peft import LoraConfig, get_peft_model

    spec = next(s for s in components.values() if s.mode == "lora")
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.dropout,
        target_modules=target,
        bias="none",
        # peft's default init: A random, B zero, so a new adapter leaves outputs unchanged.
        init_lora_weights=True,
    )
    # Checked before peft touches the model, whose own error would not name the component.
    module_names = [n for n, _ in model.named_modules()]
    for comp, s in components.items():
        if s.mode != "lora":
            continue
        pattern = _component_lora_regex(s, component_prefixes[comp], model)
        if not any(re.fullmatch(pattern, n) for n in module_names):
            raise ValueError(f"LoRA on {comp!r}: no module named {s.target_modules} in it")
    with peft_quietly():
        return get_peft_model(model, config, adapter_name=ADAPTER_NAME)


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """Silences the one FutureWarning peft 0.21 triggers in transformers 5 on every wrap
    (it reads ``is_gradient_checkpointing``, deprecated for ``is_activation_checkpointing``):
    the user can do nothing about it. Every other warning passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def next_stage(
    model: Any,
    new_rank: int,
    components: Mapping[str, ComponentSpec],
    component_prefixes: Mapping[str, Prefix],
) -> Any:
    """Move to the next MSA-LoRA stage: merge the current adapter, start one of rank `new_rank`.

    The adapter's update B @ A * alpha / r is added into the base weights (peft
    `merge_and_unload`), then `apply_trainability` adds a fresh adapter whose B is zero, so the
    model's outputs right after the transition equal those right before. Restarting the
    adapter (instead of truncating it to the new rank, e.g. by SVD) keeps all that was learned,
    exactly, and gives the next stage a lower-rank update on top of it.

    Args:
        model: the model from the previous stage (a `PeftModel`, or a plain model with no LoRA).
        new_rank: rank of the new adapter; every LoRA component gets it. An explicit `alpha`
            is scaled with the rank so that alpha / r (the update's scale) stays as it was.
        components: the new stage's settings (the stage may also freeze or unfreeze components).
        component_prefixes: as for `apply_trainability`.

    Returns:
        The model with the previous adapter merged and the new settings applied.
    """
    if hasattr(model, "merge_and_unload"):
        # Merging into 4-bit weights re-quantises them and is lossy; say so rather than hide it.
        if getattr(_unwrap(model), "is_loaded_in_4bit", False):
            logger.warning("merging a LoRA adapter into 4-bit base weights is not exact")
        model = model.merge_and_unload()
    new = {
        c: dataclasses.replace(
            s,
            rank=new_rank,
            alpha=None if s.alpha is None else s.alpha * new_rank / s.rank,
        )
        if s.mode == "lora"
        else s
        for c, s in components.items()
    }
    logger.info("next stage: adapter merged into the base weights, new LoRA rank %d", new_rank)
    return apply_trainability(model, new, component_prefixes)


def parameter_report(model: Any, component_prefixes: Mapping[str, Prefix]) -> list[dict[str, Any]]:
    """Parameters per component: total, trainable and percent trainable, then an "all" row.

    LoRA parameters count in the component they were added to.
    """
    counts = {c: [0, 0] for c in component_prefixes}
    for name, param in _unwrap(model).named_parameters():
        row = counts[_component_of(name, component_prefixes)]
        row[0] += param.numel()
        row[1] += param.numel() if param.requires_grad else 0
    total = [sum(r[0] for r in counts.values()), sum(r[1] for r in counts.values())]
    return [
        {
            "component": comp,
            "total": t,
            "trainable": tr,
            "percent": 100.0 * tr / t if t else 0.0,
        }
        for comp, (t, tr) in [*counts.items(), ("all", total)]
    ]


def format_parameter_report(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of `parameter_report` rows."""
    lines = [f"{'component':<16} {'total':>14} {'trainable':>14} {'%':>8}"]
    lines += [
        f"{r['component']:<16} {r['total']:>14,} {r['trainable']:>14,} {r['percent']:>7.2f}%"
        for r in rows
    ]
    return "\n".join(lines)
