"""RadScribe-style encoder-decoder: image backbone, BERT joint encoder, T5 decoder.

The family as the RadScribe paper describes it (the diagram and the loss are in
``radscribe_modeling``, where the model lives). Training is "decoder first, then end to end"
(`set_stage`)::

    from radixpert.models.encoder_decoder import RadScribe, set_stage, tiny_encoder_decoder

    model = tiny_encoder_decoder("vit", label_branch=True)
    set_stage(model, "decoder")
    out = model(pixel_values, input_ids=prompt_ids, labels=report_ids, labels_target=chexpert)
    out.loss.backward()
    model.save_pretrained("ckpt")
    tokens = RadScribe.from_pretrained("ckpt").generate(pixel_values, max_new_tokens=64)

From pretrained parts (weights copied exactly; the parts that have no source are reported
as freshly initialised)::

    model = build_encoder_decoder_pretrained(
        backbone="timm/densenet121.tv_in1k",  # or a ViT/ResNet id, or a torchvision .pth
        joint="microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
        decoder="luqh/ClinicalT5-base",  # its decoder stack, lm_head and shared embeddings
    )
    model.image_settings()  # {"image_size", "image_mean", "image_std", "channels"}

The CNN of the original RadScribe, DenseNet-121, is timm's ``densenet121`` inside transformers'
``TimmWrapperModel`` (its parameter names are torchvision's, so torchvision weights load too);
ViT and ResNet are transformers' models. Each backbone's last feature map (ViT: all tokens)
becomes the image tokens.

The model itself (``RadScribe``, ``build_encoder_decoder``, its config payload and its
transformers face ``RadScribeForConditionalGeneration``) lives in ``radscribe_modeling``, a
module that imports no radixpert, so that an export can carry it as remote code
(``radscribe_export``); this module re-exports those names and adds the pretrained builders,
the training stages and the tiny test sizes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    PretrainedConfig,
    ResNetConfig,
    ResNetModel,
    T5Config,
    T5ForConditionalGeneration,
    TimmWrapperConfig,
    TimmWrapperModel,
    ViTConfig,
    ViTModel,
)

from radixpert.models.radscribe_modeling import (
    BACKBONES,
    CONFIG_NAME,
    ENCODER_PARTS,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_TYPE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_LABELS,
    STAGES,
    TEXT_TYPE,
    WEIGHTS_NAME,
    Backbone,
    RadScribe,
    RadScribeOutput,
    Stage,
    build_encoder_decoder,
    build_from_payload,
)

logger = logging.getLogger(__name__)


# Parts of a RadScribe that no pretrained checkpoint provides.
FRESH_PARTS: tuple[str, ...] = (
    "image_proj",
    "cls_embedding",
    "sep_embedding",
    "label_head",
    "label_embeddings",
    "label_fusion",
    "label_norm",
    "memory_proj",
)
_TORCH_FILES = (".pt", ".pth", ".bin", ".safetensors")


def _hub_id(name: str | Path) -> str:
    """A transformers-readable id: timm's/open_clip's ``hf-hub:`` prefix dropped."""
    text = str(name)
    return text[len("hf-hub:") :] if text.startswith("hf-hub:") else text


def _torchvision_densenet(path: Path) -> TimmWrapperModel:
    """A torchvision ``densenet121`` state dict (same parameter names as timm's) in timm's
    DenseNet-121; the classifier is dropped, everything else must match."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model = TimmWrapperModel(TimmWrapperConfig(architecture="densenet121"))
    missing, unexpected = model.timm_model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a torchvision DenseNet-121 state dict: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return model


def _image_processor_settings(source: str, channels: int) -> dict[str, Any] | None:
    """Size and statistics from a checkpoint's preprocessor_config.json, None without one."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(source)
    except OSError:
        return None
    size = settings.get("size") or {}
    crop = settings.get("crop_size") if settings.get("do_center_crop") else None
    side = (crop or {}).get("height") or size.get("height") or size.get("shortest_edge")
    if side is None or "image_mean" not in settings or "image_std" not in settings:
        return None
    mean, std = settings["image_mean"], settings["image_std"]
    mean = [mean] * channels if isinstance(mean, (int, float)) else mean
    std = [std] * channels if isinstance(std, (int, float)) else std
    return {
        "image_size": int(side),
        "image_mean": [float(v) for v in mean[:channels]],
        "image_std": [float(v) for v in std[:channels]],
        "channels": channels,
    }


def _load_backbone(
    backbone: str | Path, image_backbone: Backbone | None
) -> tuple[Backbone, nn.Module, list[str], dict[str, Any] | None]:
    """(kind, loaded model, its freshly initialised keys, image settings or None)."""
    from transformers import AutoConfig

    path = Path(str(backbone))
    if path.suffix in _TORCH_FILES and path.is_file():
        if image_backbone not in (None, "densenet"):
            raise ValueError(f"{path}: a weights file is read as a DenseNet-121 state dict")
        return "densenet", _torchvision_densenet(path), [], None
    source = _hub_id(backbone)
    config = AutoConfig.from_pretrained(source)
    kinds = {"vit": "vit", "resnet": "resnet", "timm_wrapper": "densenet"}
    kind = kinds.get(config.model_type)
    if kind is None or (image_backbone is not None and image_backbone != kind):
        raise ValueError(
            f"{backbone}: a {config.model_type!r} checkpoint is not a RadScribe backbone "
            f"{image_backbone or sorted(BACKBONES)}"
        )
    if kind == "densenet":
        # timm's save_for_hf records num_classes and global_pool in model_args, which the
        # wrapper (built without a classifier) refuses; they do not change the features.
        args = {k: v for k, v in (config.model_args or {}).items()
                if k not in ("num_classes", "global_pool")}  # fmt: skip
        config.model_args = args or None
        model, info = TimmWrapperModel.from_pretrained(
            source, config=config, output_loading_info=True
        )
    elif kind == "vit":
        model, info = ViTModel.from_pretrained(
            source, add_pooling_layer=False, output_loading_info=True
        )
    else:
        model, info = ResNetModel.from_pretrained(source, output_loading_info=True)
    settings = None
    if kind != "densenet":  # DenseNet's settings travel in its config's pretrained_cfg
        settings = _image_processor_settings(source, int(getattr(model.config, "num_channels", 3)))
    return kind, model, sorted(info["missing_keys"]), settings


def build_encoder_decoder_pretrained(
    backbone: str | Path,
    joint: str | Path,
    decoder: str | Path,
    label_branch: bool = True,
    label_loss_weight: float = 1.0,
    image_backbone: Backbone | None = None,
) -> RadScribe:
    """A RadScribe whose backbone, joint encoder and decoder carry pretrained weights.

    Sources are hub ids or local folders, read with ``from_pretrained`` (``HF_HUB_OFFLINE``
    and ``HF_HOME`` apply). The weights are copied exactly; the image projection, the
    [CLS]/[SEP] embeddings, the label branch and the memory projection (when the joint and
    decoder widths differ) have no source: they, and any key a checkpoint lacked, are logged
    as freshly initialised.

    Args:
        backbone: A DenseNet-121 in timm's hub layout (``timm/densenet121.tv_in1k``, also
            with timm's ``hf-hub:`` prefix), a torchvision ``densenet121`` state-dict file
            (.pth/.pt/.bin/.safetensors), a ViT (``google/vit-base-patch16-224-in21k``) or a
            ResNet (``microsoft/resnet-50``). The kind is read from the checkpoint's config.
        joint: A BERT checkpoint (``google-bert/bert-base-uncased``, BiomedBERT); its pooler
            feeds the label branch.
        decoder: A T5 checkpoint (``google-t5/t5-small``, Clinical-T5 ``luqh/ClinicalT5-base``):
            its decoder stack, ``lm_head`` and shared embeddings are kept, the encoder dropped.
        label_branch: Add the 14-observation classifier and label fusion.
        label_loss_weight: λ in lm_loss + λ·BCE.
        image_backbone: Expected kind ("vit", "resnet", "densenet"); None accepts any.

    Returns:
        The model in train mode, stage "end_to_end"; ``image_settings()`` gives the backbone's
        pretrained preprocessing.

    Raises:
        ValueError: When ``backbone`` is no supported backbone (or not the expected kind).
    """
    kind, vision, fresh_keys, settings = _load_backbone(backbone, image_backbone)
    bert, bert_info = BertModel.from_pretrained(
        _hub_id(joint), add_pooling_layer=True, output_loading_info=True
    )
    t5 = T5ForConditionalGeneration.from_pretrained(_hub_id(decoder))
    model = build_encoder_decoder(
        kind,
        vision.config,
        bert.config,
        t5.config,
        label_branch=label_branch,
        label_loss_weight=label_loss_weight,
        image_config=settings,
    )
    model.backbone.load_state_dict(vision.state_dict(), strict=True)
    model.joint.load_state_dict(bert.state_dict(), strict=True)
    decoder_state = {k: v for k, v in t5.state_dict().items() if not k.startswith("encoder.")}
    model.t5.load_state_dict(decoder_state, strict=True)
    model.train()

    fresh = [f"backbone.{k}" for k in fresh_keys]
    fresh += [f"joint.{k}" for k in sorted(bert_info["missing_keys"])]
    # memory_proj is an Identity (no parameters) when the joint and decoder widths agree.
    parts = [name for name in FRESH_PARTS if hasattr(model, name) and _params(model, name)]
    fresh += parts
    count = sum(p.numel() for name in parts for p in _params(model, name))
    logger.info(
        "RadScribe from %s + %s + %s: freshly initialised %s (%d new-part parameters of %d)",
        backbone,
        joint,
        decoder,
        ", ".join(fresh),
        count,
        sum(p.numel() for p in model.parameters()),
    )
    return model


def _params(model: RadScribe, name: str) -> list[nn.Parameter]:
    part = getattr(model, name)
    return [part] if isinstance(part, nn.Parameter) else list(part.parameters())


def set_stage(model: RadScribe, stage: Stage) -> RadScribe:
    """Switches between "decoder" (encoder side frozen) and "end_to_end" training.

    In "decoder" the backbone, image projection, [CLS]/[SEP] embeddings and joint encoder get
    no gradient and stay in eval mode; the label branch, memory projection and T5 decoder
    train. In "end_to_end" every parameter trains.

    Args:
        model: A RadScribe model.
        stage: "decoder" or "end_to_end".

    Returns:
        The same model.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    model.stage = stage
    frozen = set(ENCODER_PARTS) if stage == "decoder" else set()
    for name, param in model.named_parameters():
        param.requires_grad_(name.split(".", 1)[0] not in frozen)
    model.train(model.training)
    logger.info(
        "stage %s: %d of %d parameters trainable",
        stage,
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        sum(p.numel() for p in model.parameters()),
    )
    return model


def tiny_configs(image_backbone: Backbone = "vit") -> dict[str, PretrainedConfig]:
    """Tiny sub-configs for tests: 32 px images, width 32, vocabularies of 64 (DenseNet: the
    full-size DenseNet-121, as timm defines no smaller one)."""
    if image_backbone == "vit":
        backbone: PretrainedConfig = ViTConfig(
            image_size=32,
            patch_size=8,
            num_channels=3,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
        )
    elif image_backbone == "resnet":
        backbone = ResNetConfig(
            num_channels=3,
            embedding_size=16,
            hidden_sizes=[16, 24],
            depths=[1, 1],
            layer_type="basic",
        )
    elif image_backbone == "densenet":
        # timm has no smaller DenseNet-121 (its depth and growth rate are the architecture's):
        # the real one, 7 M parameters; at 32 px its last feature map is 1x1 (one token).
        backbone = TimmWrapperConfig(architecture="densenet121")
    else:
        raise ValueError(
            f"image_backbone must be one of {sorted(BACKBONES)}, got {image_backbone!r}"
        )
    joint = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    decoder = T5Config(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return {"backbone_config": backbone, "joint_config": joint, "decoder_config": decoder}


def tiny_encoder_decoder(image_backbone: Backbone = "vit", label_branch: bool = True) -> RadScribe:
    """A tiny random-init RadScribe built by `build_encoder_decoder`, for tests."""
    return build_encoder_decoder(
        image_backbone=image_backbone, label_branch=label_branch, **tiny_configs(image_backbone)
    )


__all__ = [
    "BACKBONES",
    "CONFIG_NAME",
    "ENCODER_PARTS",
    "FORMAT",
    "FORMAT_VERSION",
    "FRESH_PARTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_TYPE",
    "NUM_LABELS",
    "STAGES",
    "TEXT_TYPE",
    "WEIGHTS_NAME",
    "Backbone",
    "RadScribe",
    "RadScribeOutput",
    "Stage",
    "build_encoder_decoder",
    "build_encoder_decoder_pretrained",
    "build_from_payload",
    "set_stage",
    "tiny_configs",
    "tiny_encoder_decoder",
]
