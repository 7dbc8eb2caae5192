"""The model families: what each one is, asked in one place.

A family (``radixpert.vocab.FAMILIES``) is a kind of vision-language model radixpert builds,
loads, trains and exports. Everything that depends on the family asks this module, and nothing
else branches on family names::

    from radixpert.models.families import create_model_and_processor, family_of

    model, processor = create_model_and_processor(recipe.model)   # a recipe's ModelSpec
    family_of(model)          # "llava" | "mllama" | "llava_onevision" | "radscribe"
    connector_of(model)       # "mlp" | "hcf" | "linear" | the RadScribe backbone
    components_of(model)      # {"vision_tower": prefix, "connector": ..., "language_model": ...}
    meta_model(recipe.model)  # the same model on the meta device: shapes, no memory

``FAMILY_REGISTRY[name]`` is a ``Family``: its components, its connectors, how to build a
named or tiny size with random weights, how to load a pretrained checkpoint (a Hugging Face id
or a folder, through transformers' own ``from_pretrained``, so ``HF_HOME``, ``HF_HUB_OFFLINE``
and the cache layout are the hub's), how to assemble one from pretrained parts, and how to
load a saved radixpert bundle.

A connector the checkpoint does not have (HCF on Llama 3.2 Vision or LLaVA-1.5) is added on
top: the model is rebuilt on the meta device with the new connector, the checkpoint's vision
tower, language model and head are moved in as modules (so their weights, buffers and tied
embeddings are the checkpoint's, whatever key layout the checkpoint used), and only the
connector is created with fresh weights, in fp32; ``fresh_modules(model)`` names it and the
run logs it.

``family_of`` is the one way a model's family is told: by class for RadScribe, by
``config.model_type`` otherwise, always through peft, accelerate and DDP wrappers.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from radixpert.errors import RecipeError, UsageError
from radixpert.models.spec import HCFOptions, ModelSpec
from radixpert.models.trainability import (
    LLAVA_COMPONENTS,
    MLLAMA_COMPONENTS,
    ONEVISION_COMPONENTS,
    Prefix,
)
from radixpert.vocab import CONNECTORS, FAMILIES, SIZES

if TYPE_CHECKING:
    from radixpert.models.processor import RadProcessor

logger = logging.getLogger(__name__)

__all__ = [
    "COMPONENTS",
    "ENCODER_DECODER_COMPONENTS",
    "FAMILY_REGISTRY",
    "Family",
    "components_of",
    "connector_of",
    "create_model",
    "create_model_and_processor",
    "family_of",
    "fresh_modules",
    "load_saved",
    "meta_model",
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


# --------------------------------------------------------------------------------------------
# Building: random weights, named or tiny sizes, with the recipe's connector
# --------------------------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FRESH = "_radixpert_fresh_modules"


def fresh_modules(model: Any) -> list[str]:
    """Names of the modules of a pretrained model that start with fresh weights (a connector
    added on top of a checkpoint); empty for a checkpoint loaded as it is."""
    return list(getattr(unwrap(model), _FRESH, []))


def _size_config(name: str) -> Any:
    """The config of a size: a published one's transcription, a tiny one's from its builder
    run on the meta device (no memory, no random numbers drawn)."""
    size = SIZES[name]
    module, fn = size.builder.split(":")
    builder = getattr(importlib.import_module(f"radixpert.models.{module}"), fn)
    if size.published:
        return builder()
    with torch.device("meta"):
        return builder(**size.options).config


def _own_connector(spec: ModelSpec) -> str | None:
    """The connector of a size (its builder's), else the family's own; None for RadScribe."""
    own = (CONNECTORS[spec.family] or (None,))[0]
    if spec.size is not None:
        return SIZES[spec.size].options.get("connector", own)
    return own


def _hcf_options(config: Any, spec: ModelSpec) -> Any:
    """The recipe's HCF options; without them, those of a size that has an HCF already
    (``tiny-llava-hcf``: its builder's), else the defaults."""
    if spec.hcf is not None:
        return spec.hcf
    if not getattr(config, "model_type", "").startswith("radixpert_hcf_"):
        return HCFOptions()
    if hasattr(config, "hcf_groups"):
        levels = len(config.hcf_groups or [0, 0, 0])
    else:
        layer = config.vision_feature_layer
        levels = 1 if isinstance(layer, int) else len(layer)
    return HCFOptions(levels=levels, gate=config.hcf_gate, num_heads=config.hcf_num_heads,
                      gate_hidden=config.hcf_gate_hidden, dropout=config.hcf_dropout)  # fmt: skip


def _llava_options(config: Any, connector: str, spec: ModelSpec) -> dict[str, Any]:
    """``build_llava`` options that keep a llava config's settings under ``connector``."""
    opts: dict[str, Any] = {
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "projector_hidden_act": config.projector_hidden_act,
        "multimodal_projector_bias": config.multimodal_projector_bias,
    }
    if hasattr(config, "tie_word_embeddings"):
        opts["tie_word_embeddings"] = config.tie_word_embeddings
    if connector == "hcf":
        from radixpert.models.vision import fusion_layers

        hcf = _hcf_options(config, spec)
        depth = config.vision_config.num_hidden_layers
        if not 1 <= hcf.levels <= depth:
            raise RecipeError(f"model.hcf.levels: {hcf.levels} outside 1..{depth} (the tower's "
                              "depth)")  # fmt: skip
        opts.update(
            hcf_layers=fusion_layers(depth, hcf.levels),
            hcf_gate=hcf.gate,
            hcf_num_heads=hcf.num_heads,
            hcf_gate_hidden=hcf.gate_hidden,
            hcf_dropout=hcf.dropout,
        )
    else:
        layer = config.vision_feature_layer
        opts["vision_feature_layer"] = layer if isinstance(layer, int) else -2
    return opts


def _build_llava_like(config: Any, connector: str, spec: ModelSpec) -> nn.Module:
    from radixpert.models.llava import build_llava

    opts = _llava_options(config, connector, spec)
    return build_llava(config.vision_config, config.text_config, connector,
                       image_token_index=config.image_token_index, **opts)  # fmt: skip


def mllama_hcf_groups(intermediate_layers_indices: Sequence[int], levels: int) -> list[int]:
    """``levels`` layer groups of Mllama's vision output, evenly spaced by depth from the
    shallowest intermediate layer to the last hidden state (3 levels: early, middle, last, as
    ``mllama.default_hcf_groups``)."""
    count = len(intermediate_layers_indices)
    order = [*sorted(range(count), key=list(intermediate_layers_indices).__getitem__), count]
    if not 1 <= levels <= len(order):
        raise RecipeError(
            f"model.hcf.levels: {levels} outside 1..{len(order)} (Mllama's vision output has "
            f"{len(order)} layer groups: {count} intermediate layers and the last)"
        )
    if levels == 1:
        return [order[-1]]
    return [order[round(i * (len(order) - 1) / (levels - 1))] for i in range(levels)]


def _mllama_hcf(config: Any, spec: ModelSpec) -> dict[str, Any]:
    hcf = _hcf_options(config, spec)
    groups = mllama_hcf_groups(config.vision_config.intermediate_layers_indices or [], hcf.levels)
    return {"groups": groups, "gate": hcf.gate, "num_heads": hcf.num_heads,
            "gate_hidden": hcf.gate_hidden, "dropout": hcf.dropout}  # fmt: skip


def _build_mllama_like(config: Any, connector: str, spec: ModelSpec, tiny: bool) -> nn.Module:
    from radixpert.models.mllama import build_mllama

    fields = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        fields.pop(key, None)
    for key in [k for k in fields if k.startswith("hcf_")]:
        fields.pop(key)
    hcf = _mllama_hcf(config, spec) if connector == "hcf" else False
    # Random-init tiny models start the tanh cross-attention gates open (transformers' zero
    # would make the text ignore the image); published sizes keep transformers' init.
    return build_mllama(fields, hcf=hcf, gate_init=0.5 if tiny else None)


def _build(spec: ModelSpec) -> nn.Module:
    """A random-init model of ``spec.size`` with ``spec.connector`` (or the size's own)."""
    name = spec.size
    connector = spec.connector or _own_connector(spec)
    size = SIZES[name]
    if spec.family == "radscribe":
        module, fn = size.builder.split(":")
        return getattr(importlib.import_module(f"radixpert.models.{module}"), fn)(**size.options)
    config = _size_config(name)
    if spec.family == "llava":
        model = _build_llava_like(config, connector, spec)
    elif spec.family == "mllama":
        model = _build_mllama_like(config, connector, spec, tiny=not size.published)
    else:
        from radixpert.models.onevision import build_onevision

        model = build_onevision(config)
    if size.published:
        logger.warning("model %s built with random weights (no pretrained checkpoint)", name)
    return model


# --------------------------------------------------------------------------------------------
# Loading: pretrained checkpoints (hub id or folder), parts, bundles
# --------------------------------------------------------------------------------------------


def _register_auto_classes() -> None:
    from radixpert.models import llava, mllama

    llava.register_auto_classes()
    mllama.register_auto_classes()


def _load_kwargs(spec: ModelSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": _DTYPES.get(spec.dtype, "auto")}
    if spec.quantize is not None:
        from radixpert.models.trainability import quantization_config

        try:
            kwargs["quantization_config"] = quantization_config(spec.quantize)
        except RuntimeError as err:
            raise UsageError(f"model.quantize: {err}") from err
    return kwargs


def _checkpoint_family(source: str) -> str:
    from transformers import AutoConfig

    _register_auto_classes()
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:
        raise FileNotFoundError(
            f"model.pretrained: {source!r} is neither a model folder nor a Hugging Face id in "
            f"the local cache ({err.__class__.__name__}: {str(err).splitlines()[0]})"
        ) from err
    family = _MODEL_TYPES.get(config.model_type)
    if family is None:
        raise RecipeError(
            f"model.pretrained: {source!r} is a {config.model_type!r} model, not one of the "
            f"families {FAMILIES}"
        )
    return family


def _with_connector(model: nn.Module, connector: str, spec: ModelSpec) -> nn.Module:
    """``model`` (a loaded checkpoint) with ``connector`` in place of its own; see the module
    docstring. The checkpoint's modules are moved, not copied."""
    family = family_of(model)
    own = connector_of(model)
    if connector == own:
        return model
    if connector != "hcf":
        raise RecipeError(
            f"model.connector: {connector!r} cannot replace the checkpoint's {own!r} connector "
            f"(only HCF is added on top of a pretrained {family} model)"
        )
    config = model.config
    with torch.device("meta"):
        if family == "llava":
            new = _build_llava_like(config, "hcf", spec)
        else:
            new = _build_mllama_like(config, "hcf", spec, tiny=False)
    inner, old = new.model, model.model
    if family == "llava":
        inner.vision_tower = old.vision_tower
    else:
        inner.vision_model = old.vision_model
    inner.language_model = old.language_model
    new.lm_head = model.lm_head
    # Created for real (not on meta), in fp32: it trains. Its random draws follow the run's
    # seed, which the runner sets before the model is made.
    with torch.device("cpu"):
        inner.multi_modal_projector = _fresh_hcf(new.config, family)
    device = next(model.parameters()).device
    inner.multi_modal_projector.to(device=device, dtype=torch.float32)
    left = [n for n, t in [*new.named_parameters(), *new.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"HCF on {type(model).__name__}: tensors left unset: {left[:5]}")
    new.generation_config = model.generation_config
    new.config.dtype = getattr(model.config, "dtype", None)
    new.train(model.training)
    setattr(new, _FRESH, ["model.multi_modal_projector"])
    count = sum(p.numel() for p in inner.multi_modal_projector.parameters())
    logger.warning(
        "connector hcf added on top of the pretrained %s model: model.multi_modal_projector "
        "(%s parameters) starts with fresh weights; everything else is the checkpoint's",
        family,
        f"{count:,}",
    )
    return new


def _fresh_hcf(config: Any, family: str) -> nn.Module:
    """A freshly initialised HCF connector for an HCF llava or mllama config (as their model
    classes build it)."""
    from radixpert.models.connectors import HCF

    if family == "llava":
        layer = config.vision_feature_layer
        levels = 1 if isinstance(layer, int) else len(layer)
    else:
        levels = len(config.hcf_groups)
    return HCF(
        config.vision_config.hidden_size,
        config.text_config.hidden_size,
        levels=levels,
        gate=config.hcf_gate,
        num_heads=config.hcf_num_heads,
        gate_hidden=config.hcf_gate_hidden,
        dropout=config.hcf_dropout,
    )


def _load_pretrained(spec: ModelSpec) -> nn.Module:
    from transformers import AutoModelForImageTextToText

    source = str(spec.pretrained)
    family = _checkpoint_family(source)
    if family != spec.family:
        raise RecipeError(f"model.pretrained: {source!r} is a {family} model, not {spec.family}")
    model = AutoModelForImageTextToText.from_pretrained(source, **_load_kwargs(spec))
    logger.info("loaded pretrained %s from %s (%s)", family, source, next(model.parameters()).dtype)
    connector = spec.connector or connector_of(model)
    return _with_connector(model, connector, spec)


def _vision_part(source: str, kwargs: Mapping[str, Any]) -> tuple[nn.Module, Any]:
    """A pretrained vision encoder for a llava-style model, and its image processor.

    ``source``: an open_clip name (``hf-hub:microsoft/BiomedCLIP-...``, or a folder with
    ``open_clip_config.json``), or a transformers id/folder of a CLIP / SigLIP model (its vision
    half is taken), a DINOv2 or a ViT.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    folder = Path(source)
    if source.startswith("hf-hub:") or (folder / "open_clip_config.json").is_file():
        from radixpert.models import open_clip_tower

        tower, preprocess = open_clip_tower.load_open_clip_tower(source)
        return tower, _open_clip_image_processor(preprocess)
    config = AutoConfig.from_pretrained(source)
    vision_config = getattr(config, "vision_config", None) or config
    model_class = AutoModel._model_mapping[type(vision_config)]
    tower = model_class.from_pretrained(source, **kwargs)
    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except OSError as err:
        logger.warning("no image processor in %s (%s): the letterbox preprocessing is used",
                       source, str(err).splitlines()[0])  # fmt: skip
        processor = None
    return tower, processor


def _open_clip_image_processor(preprocess: Mapping[str, Any]) -> Any:
    """An HF image processor doing what open_clip's eval transform does for a checkpoint:
    resize the shortest side to the image size (its ``resize_mode`` "shortest"), centre crop,
    normalise with the checkpoint's mean and std, bicubic unless it says otherwise."""
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    size = int(preprocess["image_size"])
    mode = preprocess.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise RecipeError(f"open_clip resize_mode {mode!r} has no HF image processor here")
    interpolation = str(preprocess.get("interpolation", "bicubic")).upper()
    resample = getattr(PILImageResampling, interpolation, PILImageResampling.BICUBIC)
    return CLIPImageProcessor(
        size={"shortest_edge": size} if mode == "shortest" else {"height": size, "width": size},
        crop_size={"height": size, "width": size},
        do_center_crop=mode == "shortest",
        image_mean=list(preprocess["image_mean"]),
        image_std=list(preprocess["image_std"]),
        resample=resample,
    )


def _assemble_llava(spec: ModelSpec) -> tuple[nn.Module, Any, Any]:
    """(model, tokenizer, image processor) of a llava-style model from a pretrained vision
    encoder and language model (LLaVA's recipe: the projector is new; ``<image>`` and a pad
    token are added to the tokenizer when missing, the embedding rows grown to a multiple of
    64 as llava-hf's checkpoints are, the new rows set to the mean of the old ones)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from radixpert.models.llava import build_llava

    parts = dict(spec.parts or {})
    kwargs = _load_kwargs(spec)
    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer or parts["language"])
    text = AutoModelForCausalLM.from_pretrained(parts["language"], **kwargs)
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_tokens(["<image>"], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if len(tokenizer) > text.config.vocab_size:
        text.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=True)
    tower, image_processor = _vision_part(parts["vision"], kwargs)
    connector = spec.connector or "mlp"
    opts: dict[str, Any] = {}
    if connector == "hcf":
        from radixpert.models.vision import fusion_layers

        hcf = spec.hcf
        opts = {"hcf_layers": fusion_layers(tower.config.num_hidden_layers, hcf.levels),
                "hcf_gate": hcf.gate, "hcf_num_heads": hcf.num_heads,
                "hcf_gate_hidden": hcf.gate_hidden, "hcf_dropout": hcf.dropout}  # fmt: skip
    image_token = int(tokenizer.convert_tokens_to_ids("<image>"))
    with torch.device("meta"):
        model = build_llava(tower.config, text.config, connector, image_token_index=image_token,
                            **opts)  # fmt: skip
    model.model.vision_tower = tower
    model.model.language_model = text.model
    model.lm_head = text.lm_head
    with torch.device("cpu"):
        if connector == "hcf":
            model.model.multi_modal_projector = _fresh_hcf(model.config, "llava")
        else:
            from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

            # nn.Linear's own init, as LLaVA's projector starts.
            model.model.multi_modal_projector = LlavaMultiModalProjector(model.config)
    model.model.multi_modal_projector.to(device=next(text.parameters()).device)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"llava from parts: tensors left unset: {left[:5]}")
    model.config.pad_token_id = tokenizer.pad_token_id
    model.train()
    setattr(model, _FRESH, ["model.multi_modal_projector"])
    logger.warning(
        "llava assembled from %s and %s: model.multi_modal_projector (%s) starts with fresh "
        "weights",
        parts["vision"],
        parts["language"],
        connector,
    )
    return model, tokenizer, image_processor


def _assemble_radscribe(spec: ModelSpec) -> tuple[nn.Module, Any, Any]:
    """(model, joint tokenizer, decoder tokenizer) of RadScribe from pretrained parts."""
    from transformers import AutoTokenizer

    from radixpert.models.encoder_decoder import build_encoder_decoder_pretrained

    parts = dict(spec.parts or {})
    model = build_encoder_decoder_pretrained(
        backbone=parts["backbone"], joint=parts["joint"], decoder=parts["decoder"]
    )
    joint = AutoTokenizer.from_pretrained(spec.tokenizer or parts["joint"])
    decoder = AutoTokenizer.from_pretrained(parts["decoder"])
    return model, joint, decoder


def load_saved(family: str, path: str | Path, **kwargs: Any) -> nn.Module:
    """A family's model from a radixpert bundle folder (``bundle.load_bundle`` calls this)."""
    return FAMILY_REGISTRY[family].load_saved(Path(path), **kwargs)


def _load_saved_llava(path: Path, **kwargs: Any) -> nn.Module:
    from radixpert.models.llava import load_llava

    return load_llava(path, **kwargs)


def _load_saved_mllama(path: Path, **kwargs: Any) -> nn.Module:
    from radixpert.models.mllama import load_mllama

    return load_mllama(path, **kwargs)


def _load_saved_onevision(path: Path, **kwargs: Any) -> nn.Module:
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(path, **kwargs)


def _load_saved_radscribe(path: Path, **kwargs: Any) -> nn.Module:
    from radixpert.models.encoder_decoder import RadScribe

    dtype = kwargs.pop("dtype", None)
    if kwargs:
        raise ValueError(f"RadScribe bundles take only dtype, got {sorted(kwargs)}")
    model = RadScribe.from_pretrained(path)
    return model if dtype is None else model.to(dtype)


def _load_radscribe_pretrained(spec: ModelSpec) -> nn.Module:
    from radixpert.models.encoder_decoder import RadScribe

    return RadScribe.from_pretrained(str(spec.pretrained))


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Family:
    """What radixpert knows of one model family.

    Attributes:
        name: The family (``radixpert.vocab.FAMILIES``).
        components: Module prefix of each component (vision tower, connector, language model).
        connectors: The connectors it can have; the first is its own.
        build: ``f(spec)``: a random-init model of ``spec.size`` with the spec's connector.
        load_pretrained: ``f(spec)``: the model of ``spec.pretrained`` (a hub id or folder),
            with the spec's connector (added on top, fresh, if the checkpoint has another).
        assemble: ``f(spec) -> (model, tokenizer, image processor or decoder tokenizer)`` from
            ``spec.parts``; None if the family is not assembled from parts.
        load_saved: ``f(bundle folder, **from_pretrained kwargs)``.
        export: Per connector (radscribe: per image backbone), how ``radixpert model export``
            serves it: ``"transformers"`` (its own transformers class), ``"hcf-remote-code"``
            (the HCF modeling file shipped beside the weights, ``trust_remote_code=True``) or
            ``"radscribe-remote-code"`` (RadScribe's modeling and processing files likewise);
            a connector not named has no serving format.
    """

    name: str
    components: Mapping[str, Prefix]
    connectors: tuple[str, ...]
    build: Callable[[ModelSpec], nn.Module]
    load_pretrained: Callable[[ModelSpec], nn.Module]
    assemble: Callable[[ModelSpec], tuple[nn.Module, Any, Any]] | None
    load_saved: Callable[..., nn.Module]
    export: Mapping[str, str | None]


FAMILY_REGISTRY: Mapping[str, Family] = {
    "llava": Family("llava", LLAVA_COMPONENTS, CONNECTORS["llava"], _build, _load_pretrained,
                    _assemble_llava, _load_saved_llava,
                    {"mlp": "transformers", "hcf": "hcf-remote-code"}),
    "mllama": Family("mllama", MLLAMA_COMPONENTS, CONNECTORS["mllama"], _build, _load_pretrained,
                     None, _load_saved_mllama,
                     {"linear": "transformers", "hcf": "hcf-remote-code"}),
    "llava_onevision": Family("llava_onevision", ONEVISION_COMPONENTS,
                              CONNECTORS["llava_onevision"], _build, _load_pretrained, None,
                              _load_saved_onevision, {"mlp": "transformers"}),
    "radscribe": Family("radscribe", ENCODER_DECODER_COMPONENTS, CONNECTORS["radscribe"],
                        _build, _load_radscribe_pretrained, _assemble_radscribe,
                        _load_saved_radscribe,
                        dict.fromkeys(("vit", "resnet", "densenet"), "radscribe-remote-code")),
}  # fmt: skip
"""Every family, by name."""


def get_family(name: str) -> Family:
    """The registry entry of a family name."""
    try:
        return FAMILY_REGISTRY[name]
    except KeyError:
        raise RecipeError(f"family: unknown {name!r}; known: {', '.join(FAMILIES)}") from None


def create_model(spec: ModelSpec) -> nn.Module:
    """The model of a ``ModelSpec`` alone (``create_model_and_processor`` gives its processor
    too): random weights of a size, a checkpoint (with the spec's connector), or parts."""
    if spec.parts is not None:
        return _model_and_preprocessing(spec)[0]
    family = get_family(spec.family)
    return family.build(spec) if spec.size is not None else family.load_pretrained(spec)


def _model_and_preprocessing(spec: ModelSpec) -> tuple[nn.Module, Any, Any]:
    """``(model, tokenizer, extra)``: the tokenizer of a pretrained model or of its language
    part (None for random weights), and ``extra``, the checkpoint's own processor or image
    processor (None if it has none), or RadScribe's decoder tokenizer."""
    family = get_family(spec.family)
    if spec.parts is not None:
        if family.assemble is None:
            raise RecipeError(f"model.parts: the {spec.family} family is not built from parts")
        return family.assemble(spec)
    model = create_model(spec)
    if spec.size is not None or spec.family == "radscribe":
        return model, None, None
    from transformers import AutoTokenizer

    source = str(spec.pretrained)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer or source)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"model.tokenizer: no tokenizer in {spec.tokenizer or source!r} "
            f"({str(err).splitlines()[0]}); give model.tokenizer"
        ) from err
    return model, tokenizer, _native_image_processor(source)


def _native_image_processor(source: str) -> Any:
    """The checkpoint's own HF processor (image processor and chat template), or None."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError) as err:
        logger.warning("no processor in %s (%s): the letterbox preprocessing is used", source, err)
        return None


def create_model_and_processor(
    spec: ModelSpec,
    *,
    tokenizer_dir: str | Path | None = None,
    decoder_tokenizer_dir: str | Path | None = None,
    texts: Callable[[], Sequence[str]] | None = None,
) -> tuple[nn.Module, RadProcessor]:
    """The one entry point: a recipe's model and its processor (as open_clip's
    ``create_model_and_transforms``).

    Args:
        spec: The recipe's ``model``.
        tokenizer_dir: Where a tokenizer trained for random weights is kept (read back if it
            is there: a resumed run keeps its tokenizer).
        decoder_tokenizer_dir: The same for RadScribe's decoder tokenizer.
        texts: The training text, called only if a tokenizer must be trained.

    Returns:
        ``(model, processor)``: a pretrained model gets its own tokenizer, chat template and
        image processor (``preprocessing: auto``/``native``) unless the spec says
        ``letterbox``; random weights get the letterboxed grayscale transform.

    Raises:
        RecipeError: A spec the family cannot honour (named field).
        FileNotFoundError: A checkpoint that is neither a folder nor in the hub cache.
    """
    from transformers import AutoTokenizer

    from radixpert.models.processor import RadProcessor

    if spec.pretrained is not None:
        from radixpert.models.bundle import MANIFEST_FILE, load_bundle

        if (Path(spec.pretrained) / MANIFEST_FILE).is_file():
            model, processor = load_bundle(spec.pretrained)
            model.train()
            connector = spec.connector or connector_of(model)
            if connector != connector_of(model):
                raise RecipeError(
                    f"model.connector: {connector!r}, but the bundle {spec.pretrained} has "
                    f"{connector_of(model)!r}"
                )
            return model, processor
    model, tokenizer, extra = _model_and_preprocessing(spec)
    options: dict[str, Any] = {}
    if spec.system_prompt is not None:
        options["system"] = spec.system_prompt
    if spec.family == "radscribe":
        decoder = extra
        if tokenizer is None:
            tokenizer, decoder = _random_init_tokenizers(
                spec, model, (tokenizer_dir, decoder_tokenizer_dir), texts
            )
        return model, RadProcessor.from_model(model, tokenizer, decoder_tokenizer=decoder,
                                              **options)  # fmt: skip
    if tokenizer is None:
        if spec.tokenizer is not None:
            tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
        else:
            tokenizer, _ = _random_init_tokenizers(
                spec, model, (tokenizer_dir, decoder_tokenizer_dir), texts
            )
    native = spec.preprocessing == "native" or (
        spec.preprocessing == "auto" and spec.size is None and extra is not None
    )
    if spec.preprocessing == "native" and extra is None:
        raise RecipeError("model.preprocessing: native, but the checkpoint has no image processor")
    if native:
        return model, RadProcessor.from_model(model, tokenizer, native=extra, **options)
    return model, RadProcessor.from_model(model, tokenizer, **options)


def _random_init_tokenizers(
    spec: ModelSpec,
    model: nn.Module,
    folders: tuple[str | Path | None, str | Path | None],
    texts: Callable[[], Sequence[str]] | None,
) -> tuple[Any, Any]:
    """Tokenizers for random weights: read from ``folders`` (tokenizer, decoder tokenizer) if
    a run made them before, else trained on ``texts`` and saved there."""
    from transformers import AutoTokenizer

    from radixpert.models.tokenizers import train_tokenizers

    main, second = (Path(f) if f is not None else None for f in folders)
    if main is not None and main.is_dir():
        decoder = None
        if second is not None and second.is_dir():
            decoder = AutoTokenizer.from_pretrained(second)
        return AutoTokenizer.from_pretrained(main), decoder
    if texts is None:
        raise RecipeError(f"model.size {spec.size!r} has random weights: give model.tokenizer, "
                          "or the text to train one on")  # fmt: skip
    tokenizer, decoder = train_tokenizers(model, list(texts()))
    if main is not None:
        tokenizer.save_pretrained(main)
    if decoder is not None and second is not None:
        decoder.save_pretrained(second)
    return tokenizer, decoder


def meta_model(spec: ModelSpec) -> nn.Module:
    """The spec's model on the meta device: its shapes and dtypes, no memory, no weights read.

    A pretrained checkpoint is built from its config alone (and the spec's connector); frozen
    weights get the dtype they would load in (``dtype: auto``: the checkpoint's).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    if spec.size is not None:
        with torch.device("meta"):
            return get_family(spec.family).build(spec)
    if spec.pretrained is None or spec.family == "radscribe":
        raise RecipeError(f"model: a shape-only build of {spec.family} from parts or a "
                          "RadScribe checkpoint is not available; give model.size")  # fmt: skip
    _register_auto_classes()
    source = str(spec.pretrained)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:
        stand_in = [n for n, s in SIZES.items() if s.source == source]
        if not stand_in:
            raise FileNotFoundError(
                f"model.pretrained: {source!r} is neither a model folder nor a Hugging Face id "
                "in the local cache; for a shape-only plan give a named size instead "
                "(model.pretrained=null model.size=NAME, `radixpert model list`)"
            ) from err
        logger.info("%s is not in the local cache: its transcribed config (size %s) stands in",
                    source, stand_in[0])  # fmt: skip
        config = _size_config(stand_in[0])
        config.dtype = "bfloat16"  # as the published checkpoints are stored
    dtype = _DTYPES.get(spec.dtype) or getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
        connector = spec.connector or connector_of(model)
        if connector != connector_of(model):
            family = family_of(model)
            if family == "llava":
                model = _build_llava_like(config, connector, spec)
            else:
                model = _build_mllama_like(config, connector, spec, tiny=False)
            for name, param in model.named_parameters():
                if not name.startswith("model.multi_modal_projector"):
                    param.data = param.data.to(dtype)
    return model
