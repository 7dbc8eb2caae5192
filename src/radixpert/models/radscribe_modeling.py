"""RadScribe (image backbone, BERT joint encoder, T5 decoder) in one self-contained module.

This file imports only torch, transformers, huggingface_hub and safetensors (timm through
transformers' ``TimmWrapperModel`` for DenseNet-121), never radixpert, so that
``radixpert model export`` can copy it into an exported folder (as
``modeling_radixpert_radscribe.py``, named by ``auto_map`` in ``config.json``) and plain
transformers loads the model with::

    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    logits = model(**inputs).logits              # inputs: pixel_values, input_ids, attention_mask,
    tokens = model.generate(**inputs)            # labels (teacher forcing) or none (generate)

radixpert imports ``RadScribe`` and ``build_encoder_decoder`` from here (``encoder_decoder``
re-exports them and adds the pretrained builders and the training stages), so training and
serving run the same code: there is one copy of the model.

The model::

    pixel_values -> ViTModel | ResNetModel | DenseNet-121 (timm) -> linear -> image tokens
    [CLS] image tokens [SEP] text tokens   -> BertModel (inputs_embeds, token types 0 / 1)
    optional label branch: pooled output -> 14 CheXpert logits; sigmoid probabilities weight a
        learned embedding per observation; the image positions attend to these label tokens
        (cross-attention, residual, LayerNorm)
    T5 decoder stack + lm_head cross-attending to the joint (fused) outputs -> report tokens

Loss is the decoder's cross-entropy plus ``label_loss_weight`` times the label BCE when
``labels_target`` is given. ``VisionEncoderDecoderModel`` rejects a T5 decoder, so the decoder is
wired here: a ``T5ForConditionalGeneration`` whose encoder is removed and which always receives
``encoder_outputs``.

``RadScribeForConditionalGeneration`` (``model_type`` ``radixpert_radscribe``,
``RadScribeConfig``) is the transformers face of the same module: its ``forward`` runs
``RadScribe.forward`` (teacher forcing) or, given ``encoder_outputs`` (as ``generate`` does),
``RadScribe.decode`` with a key/value cache; ``generate`` is transformers' own, and greedy
decoding gives the tokens of ``RadScribe.generate``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    BertConfig,
    BertModel,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
    ResNetConfig,
    ResNetModel,
    T5Config,
    T5ForConditionalGeneration,
    TimmWrapperConfig,
    TimmWrapperModel,
    ViTConfig,
    ViTModel,
)
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

logger = logging.getLogger(__name__)

Backbone = Literal["vit", "resnet", "densenet"]
Stage = Literal["decoder", "end_to_end"]

MODEL_TYPE = "radixpert_radscribe"
CONFIG_NAME = "radscribe_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "radixpert.radscribe"
FORMAT_VERSION = 1
# The 14 CheXpert observations the label branch predicts (names: radixpert.vocab.OBSERVATIONS,
# recorded as ``id2label`` in an exported config; a test pins the count to that list).
NUM_LABELS = 14
BACKBONES: dict[str, tuple[type[PretrainedConfig], type[nn.Module]]] = {
    "vit": (ViTConfig, ViTModel),
    "resnet": (ResNetConfig, ResNetModel),
    "densenet": (TimmWrapperConfig, TimmWrapperModel),
}
# Backbones whose output is a (batch, channels, h, w) feature map, flattened to h*w tokens.
_FEATURE_MAPS = ("resnet", "densenet")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
STAGES: tuple[str, ...] = ("decoder", "end_to_end")
# Parts frozen in the "decoder" stage: everything up to and including the joint encoder.
ENCODER_PARTS: tuple[str, ...] = (
    "backbone",
    "image_proj",
    "joint",
    "cls_embedding",
    "sep_embedding",
)
IMAGE_TYPE, TEXT_TYPE = 0, 1


@dataclasses.dataclass
class RadScribeOutput:
    """What `RadScribe.forward` (and `RadScribe.decode`) returns.

    Attributes:
        logits: Decoder vocabulary logits, (batch, target length, vocab).
        loss: lm_loss + label_loss_weight * label_loss over the parts given, else None.
        lm_loss: Report cross-entropy (ignoring -100), when ``labels`` were given.
        label_logits: CheXpert logits (batch, 14) when the label branch exists.
        label_loss: Masked BCE of ``label_logits`` when ``labels_target`` was given.
        memory: The (fused) joint encoder states the decoder attends to.
        memory_mask: Attention mask of ``memory`` (1 = real token).
        cache: The decoder's key/value cache, when decoding with ``use_cache``.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    label_logits: torch.Tensor | None = None
    label_loss: torch.Tensor | None = None
    memory: torch.Tensor | None = None
    memory_mask: torch.Tensor | None = None
    cache: Cache | None = None


class RadScribe(nn.Module):
    """Image backbone + BERT joint encoder + optional label branch + T5 decoder.

    Build it with `build_encoder_decoder`; the arguments mirror that function's.

    Args:
        image_backbone: "vit", "resnet" or "densenet".
        backbone_config: A ViTConfig, ResNetConfig, or TimmWrapperConfig of a timm DenseNet
            (``architecture="densenet121"``).
        joint_config: BertConfig of the joint encoder; its ``input_ids`` vocabulary is the
            prompt/indication vocabulary.
        decoder_config: T5Config of the decoder; its vocabulary is the report vocabulary.
        label_branch: Whether to add the 14-observation classifier and label fusion.
        label_loss_weight: λ in lm_loss + λ·BCE.
        image_config: The image settings the backbone was pretrained with (see
            ``image_settings``); None derives them from the backbone's config.
    """

    def __init__(
        self,
        image_backbone: Backbone,
        backbone_config: PretrainedConfig,
        joint_config: BertConfig,
        decoder_config: T5Config,
        label_branch: bool = True,
        label_loss_weight: float = 1.0,
        image_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if image_backbone not in BACKBONES:
            raise ValueError(
                f"image_backbone must be one of {sorted(BACKBONES)}, got {image_backbone!r}"
            )
        config_cls, model_cls = BACKBONES[image_backbone]
        if not isinstance(backbone_config, config_cls):
            raise TypeError(
                f"{image_backbone!r} needs a {config_cls.__name__}, "
                f"got {type(backbone_config).__name__}"
            )
        if decoder_config.decoder_start_token_id is None:
            raise ValueError("decoder_config.decoder_start_token_id must be set")
        self.image_backbone = image_backbone
        self.label_branch = bool(label_branch)
        self.label_loss_weight = float(label_loss_weight)
        self.num_labels = NUM_LABELS
        self.stage: Stage = "end_to_end"
        self.image_config = dict(image_config) if image_config else None

        if image_backbone == "vit":
            self.backbone = ViTModel(backbone_config, add_pooling_layer=False)
            backbone_width = int(backbone_config.hidden_size)
        elif image_backbone == "densenet":
            if not str(backbone_config.architecture).startswith("densenet"):
                raise ValueError(
                    f"'densenet' needs a timm DenseNet architecture, got "
                    f"{backbone_config.architecture!r} (backbone_config.architecture)"
                )
            self.backbone = model_cls(backbone_config)
            backbone_width = int(self.backbone.timm_model.num_features)
        else:
            self.backbone = model_cls(backbone_config)
            backbone_width = int(backbone_config.hidden_sizes[-1])
        width = int(joint_config.hidden_size)
        self.image_proj = nn.Linear(backbone_width, width)
        self.joint = BertModel(joint_config, add_pooling_layer=True)
        self.cls_embedding = nn.Parameter(torch.randn(width) * joint_config.initializer_range)
        self.sep_embedding = nn.Parameter(torch.randn(width) * joint_config.initializer_range)

        if self.label_branch:
            self.label_head = nn.Linear(width, self.num_labels)
            self.label_embeddings = nn.Parameter(
                torch.randn(self.num_labels, width) * joint_config.initializer_range
            )
            self.label_fusion = nn.MultiheadAttention(
                width,
                int(joint_config.num_attention_heads),
                dropout=float(joint_config.attention_probs_dropout_prob),
                batch_first=True,
            )
            self.label_norm = nn.LayerNorm(width, eps=float(joint_config.layer_norm_eps))

        d_model = int(decoder_config.d_model)
        self.memory_proj: nn.Module = (
            nn.Identity() if d_model == width else nn.Linear(width, d_model)
        )
        self.t5 = T5ForConditionalGeneration(decoder_config)
        # The T5 encoder is never run (the joint encoder replaces it); drop its weights.
        del self.t5.encoder

    @property
    def configs(self) -> dict[str, PretrainedConfig]:
        """The three transformers sub-configs, by role."""
        return {
            "backbone_config": self.backbone.config,
            "joint_config": self.joint.config,
            "decoder_config": self.t5.config,
        }

    def train(self, mode: bool = True) -> RadScribe:
        """Sets train/eval mode; frozen encoder parts stay in eval (dropout off, BN stats fixed)."""
        super().train(mode)
        if self.stage == "decoder":
            for name in ENCODER_PARTS:
                part = getattr(self, name)
                if isinstance(part, nn.Module):
                    part.eval()
        return self

    def image_settings(self) -> dict[str, Any]:
        """The image preprocessing the backbone was pretrained with, for the processor.

        From the pretrained image processor config recorded at build time (ViT, ResNet), else
        the timm ``pretrained_cfg`` (DenseNet), else the backbone config's size (ViT's
        ``image_size``; 224 for a ResNet) with ImageNet statistics.

        Returns:
            ``image_size`` (square side fed to the backbone), ``image_mean``, ``image_std``
            (one value per channel) and ``channels``.
        """
        if self.image_config:
            return copy.deepcopy(self.image_config)
        config = self.backbone.config
        if self.image_backbone == "densenet":
            cfg = getattr(config, "pretrained_cfg", None) or self.backbone.timm_model.pretrained_cfg
            channels, size = int(cfg["input_size"][0]), int(cfg["input_size"][-1])
            mean, std = list(cfg.get("mean", IMAGENET_MEAN)), list(cfg.get("std", IMAGENET_STD))
        else:
            channels = int(getattr(config, "num_channels", 3))
            size = int(getattr(config, "image_size", 224))
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        return {
            "image_size": size,
            "image_mean": [float(v) for v in mean[:channels]],
            "image_std": [float(v) for v in std[:channels]],
            "channels": channels,
        }

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone features as tokens of the joint width, (batch, n_image, width)."""
        features = self.backbone(pixel_values=pixel_values).last_hidden_state
        if self.image_backbone in _FEATURE_MAPS:
            # (batch, channels, h, w) feature map -> h*w tokens.
            features = features.flatten(2).transpose(1, 2)
        return self.image_proj(features)

    def encode(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Runs backbone, joint encoder and label fusion.

        Args:
            pixel_values: (batch, channels, height, width) images.
            input_ids: Optional (batch, text length) prompt/indication ids in the joint
                encoder's vocabulary, without [CLS]/[SEP]; None or zero length for no text.
            attention_mask: (batch, text length) mask of ``input_ids``; all ones if None.

        Returns:
            memory (batch, seq, d_model), its mask (batch, seq) and the label logits
            (batch, 14) or None without a label branch.
        """
        image = self.image_tokens(pixel_values)
        batch, n_image, width = image.shape
        device = image.device
        cls = self.cls_embedding.expand(batch, 1, width)
        sep = self.sep_embedding.expand(batch, 1, width)
        parts = [cls, image, sep]
        n_text = 0
        if input_ids is not None and input_ids.shape[1] > 0:
            if input_ids.shape[0] != batch:
                raise ValueError(f"input_ids batch {input_ids.shape[0]} != image batch {batch}")
            parts.append(self.joint.embeddings.word_embeddings(input_ids))
            n_text = input_ids.shape[1]
        embeds = torch.cat(parts, dim=1)
        seq = embeds.shape[1]
        max_positions = int(self.joint.config.max_position_embeddings)
        if seq > max_positions:
            raise ValueError(
                f"joint sequence of {seq} tokens ({n_image} image + {n_text} text + 2) exceeds "
                f"joint_config.max_position_embeddings={max_positions}"
            )
        mask = torch.ones(batch, seq, dtype=torch.long, device=device)
        if n_text and attention_mask is not None:
            mask[:, n_image + 2 :] = attention_mask.to(device=device, dtype=torch.long)
        token_types = torch.full((batch, seq), IMAGE_TYPE, dtype=torch.long, device=device)
        token_types[:, n_image + 2 :] = TEXT_TYPE
        out = self.joint(inputs_embeds=embeds, attention_mask=mask, token_type_ids=token_types)
        hidden = out.last_hidden_state

        label_logits = None
        if self.label_branch:
            label_logits = self.label_head(out.pooler_output)
            probs = torch.sigmoid(label_logits)
            label_tokens = probs.unsqueeze(-1) * self.label_embeddings  # (batch, 14, width)
            visual = hidden[:, : n_image + 1]  # [CLS] + image positions
            attended, _ = self.label_fusion(visual, label_tokens, label_tokens, need_weights=False)
            visual = self.label_norm(visual + attended)
            hidden = torch.cat([visual, hidden[:, n_image + 1 :]], dim=1)
        return self.memory_proj(hidden), mask, label_logits

    def label_bce(self, label_logits: torch.Tensor, labels_target: torch.Tensor) -> torch.Tensor:
        """BCE over the observations present: NaN targets (missing) are left out.

        Raises:
            ValueError: On a target outside [0, 1] (map uncertain -1 labels before this).
        """
        target = labels_target.to(label_logits.dtype)
        if target.shape != label_logits.shape:
            raise ValueError(
                f"labels_target shape {tuple(target.shape)} != {tuple(label_logits.shape)}"
            )
        present = ~torch.isnan(target)
        values = target[present]
        if values.numel() and (values.min() < 0 or values.max() > 1):
            raise ValueError(
                "labels_target must lie in [0, 1] (NaN = missing); map -1 labels first"
            )
        if not present.any():
            return label_logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(label_logits[present], values)

    def decode(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        label_logits: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels_target: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
    ) -> RadScribeOutput:
        """The T5 decoder over encoded ``memory`` (from `encode`) and the losses.

        Args:
            memory: (batch, seq, d_model) joint encoder states.
            memory_mask: (batch, seq) their mask.
            label_logits: The label branch's logits from `encode` (None without the branch).
            labels: Report ids in the decoder vocabulary, -100 ignored; decoder inputs are
                these shifted right, as in T5.
            decoder_input_ids: Explicit decoder inputs when ``labels`` is not given.
            labels_target: (batch, 14) CheXpert targets in [0, 1], NaN for missing.
            cache: The decoder's key/value cache (an ``EncoderDecoderCache``) when stepping.
            use_cache: Return the updated cache.

        Returns:
            A `RadScribeOutput`.
        """
        if labels is None and decoder_input_ids is None:
            raise ValueError("decoding needs labels or decoder_input_ids")
        if labels_target is not None and not self.label_branch:
            raise ValueError("labels_target given but the model has no label branch")
        out = self.t5(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory),
            attention_mask=memory_mask,
            decoder_input_ids=decoder_input_ids,
            labels=labels,
            cache=cache,  # `past_key_values` before transformers 5.24
            use_cache=use_cache,
        )
        lm_loss = out.loss
        label_loss = None
        if labels_target is not None and label_logits is not None:
            label_loss = self.label_bce(label_logits, labels_target)
        loss = lm_loss
        if label_loss is not None:
            weighted = self.label_loss_weight * label_loss
            loss = weighted if loss is None else loss + weighted
        return RadScribeOutput(
            logits=out.logits,
            loss=loss,
            lm_loss=lm_loss,
            label_logits=label_logits,
            label_loss=label_loss,
            memory=memory,
            memory_mask=memory_mask,
            cache=out.cache if use_cache else None,
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels_target: torch.Tensor | None = None,
    ) -> RadScribeOutput:
        """Teacher-forced forward pass: `encode`, then `decode`.

        Args:
            pixel_values: (batch, channels, height, width) images.
            input_ids: Optional prompt/indication ids for the joint encoder.
            attention_mask: Mask of ``input_ids``.
            labels: (batch, target length) report ids in the decoder vocabulary, -100 ignored;
                decoder inputs are these shifted right, as in T5.
            decoder_input_ids: Explicit decoder inputs when ``labels`` is not given.
            labels_target: (batch, 14) CheXpert targets in [0, 1], NaN for missing.

        Returns:
            A `RadScribeOutput`.
        """
        if labels is None and decoder_input_ids is None:
            raise ValueError("forward needs labels or decoder_input_ids")
        if labels_target is not None and not self.label_branch:
            raise ValueError("labels_target given but the model has no label branch")
        memory, mask, label_logits = self.encode(pixel_values, input_ids, attention_mask)
        return self.decode(
            memory,
            mask,
            label_logits,
            labels=labels,
            decoder_input_ids=decoder_input_ids,
            labels_target=labels_target,
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 64,
    ) -> torch.Tensor:
        """Greedy decoding with a key/value cache; call ``eval()`` first for determinism.

        Args:
            pixel_values: (batch, channels, height, width) images.
            input_ids: Optional prompt/indication ids for the joint encoder.
            attention_mask: Mask of ``input_ids``.
            max_new_tokens: Most tokens generated after the start token.

        Returns:
            (batch, 1 + n) ids starting with ``decoder_start_token_id``; after a sequence's
            ``eos_token_id`` the rest is ``pad_token_id``. Stops early once all have ended.
        """
        config = self.t5.config
        memory, mask, _ = self.encode(pixel_values, input_ids, attention_mask)
        batch = memory.shape[0]
        start = torch.full((batch, 1), int(config.decoder_start_token_id), device=memory.device)
        tokens, step_input = start, start
        finished = torch.zeros(batch, dtype=torch.bool, device=memory.device)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        eos, pad = config.eos_token_id, config.pad_token_id
        for _ in range(max_new_tokens):
            out = self.decode(memory, mask, decoder_input_ids=step_input, cache=cache,
                              use_cache=True)  # fmt: skip
            cache = out.cache
            step_input = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            if pad is not None:
                step_input = step_input.masked_fill(finished.unsqueeze(1), int(pad))
            tokens = torch.cat([tokens, step_input], dim=1)
            if eos is not None:
                finished |= step_input.squeeze(1) == int(eos)
                if bool(finished.all()):
                    break
        return tokens

    def config_payload(self) -> dict[str, Any]:
        """What ``radscribe_config.json`` holds: format, settings and the three sub-configs."""
        payload: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "image_backbone": self.image_backbone,
            "label_branch": self.label_branch,
            "label_loss_weight": self.label_loss_weight,
        }
        if self.image_config:
            payload["image_config"] = self.image_config
        payload.update({role: cfg.to_dict() for role, cfg in self.configs.items()})
        return payload

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes ``model.safetensors`` and ``radscribe_config.json`` (all sub-configs).

        Args:
            directory: Target folder; created if missing.

        Returns:
            The folder.
        """
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.config_payload(), indent=2, sort_keys=True) + "\n"
        (directory / CONFIG_NAME).write_text(text)
        # save_model keeps one copy of tied tensors (T5's shared embedding and lm_head).
        save_model(self, str(directory / WEIGHTS_NAME))
        logger.info("saved RadScribe (%s) to %s", self.image_backbone, directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> RadScribe:
        """Rebuilds a model written by `save_pretrained`, in eval mode.

        Raises:
            FileNotFoundError: When the config or weights file is missing.
            ValueError: When the config is not a RadScribe config of a known version.
        """
        from safetensors.torch import load_model

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"RadScribe checkpoint file missing: {path}")
        model = build_from_payload(json.loads(config_path.read_text()), str(config_path))
        load_model(model, str(weights_path), strict=True)
        model.eval()
        logger.info("loaded RadScribe (%s) from %s", model.image_backbone, directory)
        return model


def build_from_payload(payload: dict[str, Any], source: str = "config") -> RadScribe:
    """A randomly initialised RadScribe from a ``radscribe_config.json`` payload.

    Raises:
        ValueError: When the payload is not a RadScribe config of a known version, or names
            an unknown backbone (``source`` names the file in the message).
    """
    if payload.get("format") != FORMAT or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{source} is not a {FORMAT} v{FORMAT_VERSION} config "
            f"(format={payload.get('format')!r}, version={payload.get('format_version')!r})"
        )
    backbone = payload["image_backbone"]
    if backbone not in BACKBONES:
        raise ValueError(f"{source}: unknown image_backbone {backbone!r}")
    return build_encoder_decoder(
        image_backbone=backbone,
        backbone_config=BACKBONES[backbone][0].from_dict(payload["backbone_config"]),
        joint_config=BertConfig.from_dict(payload["joint_config"]),
        decoder_config=T5Config.from_dict(payload["decoder_config"]),
        label_branch=bool(payload["label_branch"]),
        label_loss_weight=float(payload["label_loss_weight"]),
        image_config=payload.get("image_config"),
    )


def build_encoder_decoder(
    image_backbone: Backbone,
    backbone_config: PretrainedConfig,
    joint_config: BertConfig,
    decoder_config: T5Config,
    label_branch: bool = True,
    label_loss_weight: float = 1.0,
    image_config: dict[str, Any] | None = None,
) -> RadScribe:
    """Builds a randomly initialised RadScribe model from its sub-configs.

    Args:
        image_backbone: "vit" (ViTModel, all tokens kept), "resnet" (ResNetModel) or
            "densenet" (timm DenseNet in ``TimmWrapperModel``); the CNNs' last feature map is
            flattened to tokens.
        backbone_config: ViTConfig, ResNetConfig or TimmWrapperConfig.
        joint_config: BertConfig of the joint encoder.
        decoder_config: T5Config of the decoder (``decoder_start_token_id`` required).
        label_branch: Add the 14-observation classifier and label-enhanced cross-attention.
        label_loss_weight: λ in lm_loss + λ·BCE.
        image_config: Pretrained image settings to record (see `RadScribe.image_settings`).

    Returns:
        The model, in train mode, stage "end_to_end".
    """
    model = RadScribe(
        image_backbone,
        backbone_config,
        joint_config,
        decoder_config,
        label_branch=label_branch,
        label_loss_weight=label_loss_weight,
        image_config=image_config,
    )
    logger.debug(
        "built RadScribe %s label_branch=%s with %d parameters",
        image_backbone,
        label_branch,
        sum(p.numel() for p in model.parameters()),
    )
    return model


# ---------------------------------------------------------------------- transformers face


@strict
class RadScribeConfig(PretrainedConfig):
    """The transformers config of a RadScribe: its settings and three sub-configs.

    Args:
        vision_config: The backbone's config (ViT, ResNet or timm DenseNet-121).
        joint_config: The joint encoder's BertConfig.
        decoder_config: The decoder's T5Config (start, eos and pad ids of generation).
        image_backbone: "vit", "resnet" or "densenet".
        label_branch: Whether the 14-observation label branch exists.
        label_loss_weight: λ in lm_loss + λ·BCE.
        image_settings: The backbone's pretraining image settings (``RadScribe.image_config``).
        tie_word_embeddings: Whether T5's ``lm_head`` and decoder embeddings share ``shared``.
        id2label: Names of the label branch's 14 logits, in order.
    """

    model_type = MODEL_TYPE
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit"),
        "joint_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "decoder_config": SubConfigSpec(
            config_class=AutoConfig, model_type="t5", init_kwargs={"decoder_start_token_id": 0}
        ),
    }

    vision_config: dict | PretrainedConfig | None = None
    joint_config: dict | PretrainedConfig | None = None
    decoder_config: dict | PretrainedConfig | None = None
    image_backbone: Literal["vit", "resnet", "densenet"] = "vit"
    label_branch: bool = True
    label_loss_weight: float = 1.0
    image_settings: dict | None = None
    tie_word_embeddings: bool = True
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        if self.id2label is not None and len(self.id2label) != NUM_LABELS:
            raise ValueError(
                f"id2label names {len(self.id2label)} labels; the label branch has {NUM_LABELS}"
            )
        super().__post_init__(**kwargs)

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> Any:
        """The decoder's T5Config (the text that is generated); with ``encoder=True`` only,
        the joint encoder's BertConfig."""
        if encoder and not decoder:
            return self.joint_config
        return self.decoder_config

    @classmethod
    def from_radscribe(cls, model: RadScribe, **kwargs: Any) -> RadScribeConfig:
        """The config of an existing RadScribe (``kwargs``: e.g. ``id2label``)."""
        t5 = model.t5
        tied = (
            t5.lm_head.weight is t5.shared.weight
            and t5.decoder.embed_tokens.weight is t5.shared.weight
        )
        return cls(
            vision_config=copy.deepcopy(model.backbone.config),
            joint_config=copy.deepcopy(model.joint.config),
            decoder_config=copy.deepcopy(t5.config),
            image_backbone=model.image_backbone,
            label_branch=model.label_branch,
            label_loss_weight=model.label_loss_weight,
            image_settings=model.image_settings(),
            tie_word_embeddings=tied,
            **kwargs,
        )


@dataclasses.dataclass
class RadScribeEncoderOutput(ModelOutput):
    """What the encoder hands the decoder in ``generate``: the memory, its mask and the label
    branch's logits (None without it)."""

    last_hidden_state: torch.Tensor | None = None
    memory_mask: torch.Tensor | None = None
    label_logits: torch.Tensor | None = None


@dataclasses.dataclass
class RadScribeLMOutput(ModelOutput):
    """``RadScribeForConditionalGeneration.forward``'s output (fields as in `RadScribeOutput`;
    ``cache`` is the decoder's key/value cache while generating)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    lm_loss: torch.Tensor | None = None
    label_logits: torch.Tensor | None = None
    label_loss: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_attention_mask: torch.Tensor | None = None


class RadScribeEncoder:
    """The encoder side of a RadScribe as ``generate`` calls it (no parameters of its own)."""

    main_input_name = "pixel_values"

    def __init__(self, model: RadScribe) -> None:
        self.model = model

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> RadScribeEncoderOutput:
        """`RadScribe.encode` as a ``ModelOutput``.

        Raises:
            ValueError: When attentions or hidden states are asked for (not recorded).
        """
        if output_attentions or output_hidden_states:
            raise ValueError("RadScribe's encoder records no attentions or hidden states")
        memory, mask, label_logits = self.model.encode(pixel_values, input_ids, attention_mask)
        return RadScribeEncoderOutput(
            last_hidden_state=memory, memory_mask=mask, label_logits=label_logits
        )

    __call__ = forward


class RadScribePreTrainedModel(PreTrainedModel):
    """Base of the RadScribe transformers classes."""

    config_class = RadScribeConfig
    base_model_prefix = "radscribe"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")

    def _init_weights(self, module: nn.Module) -> None:
        # RadScribe initialises its own parts when built (as build_encoder_decoder does) and
        # its transformers parts initialise themselves; nothing is re-drawn here.
        return


class RadScribeForConditionalGeneration(RadScribePreTrainedModel, GenerationMixin):
    """A `RadScribe` as a transformers model: ``forward`` with ``.logits``/``.loss`` and
    ``generate``.

    Args:
        config: A `RadScribeConfig`.
        radscribe: An existing RadScribe to wrap (its weights are used as they are); None
            builds one from ``config``.
    """

    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "radscribe.t5.decoder.embed_tokens.weight": "radscribe.t5.shared.weight",
        "radscribe.t5.lm_head.weight": "radscribe.t5.shared.weight",
    }

    def __init__(self, config: RadScribeConfig, radscribe: RadScribe | None = None) -> None:
        super().__init__(config)
        if radscribe is None:
            radscribe = build_encoder_decoder(
                image_backbone=config.image_backbone,
                backbone_config=config.vision_config,
                joint_config=config.joint_config,
                decoder_config=config.decoder_config,
                label_branch=config.label_branch,
                label_loss_weight=config.label_loss_weight,
                image_config=config.image_settings,
            )
        self.radscribe = radscribe
        self.post_init()

    @classmethod
    def from_radscribe(
        cls, model: RadScribe, **config_kwargs: Any
    ) -> RadScribeForConditionalGeneration:
        """Wraps an existing RadScribe (sharing its weights), e.g. to ``save_pretrained`` it."""
        wrapped = cls(RadScribeConfig.from_radscribe(model, **config_kwargs), radscribe=model)
        wrapped.train(model.training)
        return wrapped

    def get_encoder(self, modality: str | None = None) -> RadScribeEncoder:
        """The image + prompt encoder that ``generate`` runs once before decoding."""
        return RadScribeEncoder(self.radscribe)

    def get_input_embeddings(self) -> nn.Module:
        return self.radscribe.t5.shared

    def get_output_embeddings(self) -> nn.Module:
        return self.radscribe.t5.lm_head

    def _prepare_decoder_input_ids_for_generation(
        self, batch_size: int, model_input_name: str, model_kwargs: dict[str, Any], *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, Any]]:  # fmt: skip
        # The prompt (input_ids, attention_mask) is the encoder's input, consumed by the time
        # decoding starts: the decoder must not take it for its own start (transformers reads
        # a leftover `input_ids` as decoder input), and the memory carries its own mask.
        model_kwargs = dict(model_kwargs)
        model_kwargs.pop("input_ids", None)
        model_kwargs.pop("attention_mask", None)
        return super()._prepare_decoder_input_ids_for_generation(
            batch_size, model_input_name, model_kwargs, *args, **kwargs
        )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels_target: torch.Tensor | None = None,
        encoder_outputs: RadScribeEncoderOutput | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> RadScribeLMOutput:
        """Teacher forcing (``RadScribe.forward``) or, with ``encoder_outputs``, one decoding
        step (``RadScribe.decode``).

        Args:
            pixel_values: (batch, channels, size, size) images; not needed with
                ``encoder_outputs``.
            input_ids: Prompt ids in the joint encoder's vocabulary.
            attention_mask: Their mask.
            labels: Report ids in the decoder's vocabulary, -100 ignored.
            decoder_input_ids: Explicit decoder inputs.
            decoder_attention_mask: Must be None or all ones (RadScribe decodes unmasked).
            labels_target: (batch, 14) CheXpert targets in [0, 1], NaN for missing.
            encoder_outputs: A `RadScribeEncoderOutput` (what ``get_encoder()`` returns).
            cache: The decoder's key/value cache.
            use_cache: Return the updated cache.
            **kwargs: ``return_dict`` and transformers' ``output_*`` flags (when False).

        Raises:
            ValueError: For inputs RadScribe does not take (a decoder mask with zeros,
                attentions asked for, unknown arguments).
        """
        unexpected = sorted(k for k, v in kwargs.items() if v is not None and v is not False
                            and k != "return_dict")  # fmt: skip
        if unexpected:
            raise ValueError(f"RadScribe's forward does not take {unexpected}")
        if decoder_attention_mask is not None and not bool((decoder_attention_mask == 1).all()):
            raise ValueError("RadScribe decodes without a decoder_attention_mask (padding)")
        if encoder_outputs is None:
            if pixel_values is None:
                raise ValueError("forward needs pixel_values (or encoder_outputs)")
            out = self.radscribe(
                pixel_values,
                input_ids=input_ids,
                attention_mask=attention_mask,
                labels=labels,
                decoder_input_ids=decoder_input_ids,
                labels_target=labels_target,
            )
        else:
            if getattr(encoder_outputs, "memory_mask", None) is None:
                raise ValueError("encoder_outputs needs the memory_mask of get_encoder()'s output")
            out = self.radscribe.decode(
                encoder_outputs.last_hidden_state,
                encoder_outputs.memory_mask,
                encoder_outputs.label_logits,
                labels=labels,
                decoder_input_ids=decoder_input_ids,
                labels_target=labels_target,
                cache=cache,
                use_cache=bool(use_cache),
            )
        return RadScribeLMOutput(
            loss=out.loss,
            logits=out.logits,
            cache=out.cache,
            lm_loss=out.lm_loss,
            label_logits=out.label_logits,
            label_loss=out.label_loss,
            encoder_last_hidden_state=out.memory,
            encoder_attention_mask=out.memory_mask,
        )


__all__ = [
    "BACKBONES",
    "CONFIG_NAME",
    "ENCODER_PARTS",
    "FORMAT",
    "FORMAT_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_TYPE",
    "NUM_LABELS",
    "STAGES",
    "WEIGHTS_NAME",
    "RadScribe",
    "RadScribeConfig",
    "RadScribeEncoderOutput",
    "RadScribeForConditionalGeneration",
    "RadScribeLMOutput",
    "RadScribeOutput",
    "build_encoder_decoder",
    "build_from_payload",
]
