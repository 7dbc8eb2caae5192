"""RadScribe-style encoder-decoder: image backbone, BERT joint encoder, T5 decoder.

The family, as the RadScribe paper describes it, assembled from transformers parts::

    pixel_values -> ViTModel | ResNetModel | DenseNet-121 (timm) -> linear -> image tokens
    [CLS] image tokens [SEP] text tokens   -> BertModel (inputs_embeds, token types 0 / 1)
    optional label branch: pooled output -> 14 CheXpert logits; sigmoid probabilities weight a
        learned embedding per observation; the image positions attend to these label tokens
        (cross-attention, residual, LayerNorm)
    T5 decoder stack + lm_head cross-attending to the joint (fused) outputs -> report tokens

Loss is the decoder's cross-entropy plus ``label_loss_weight`` times the label BCE when
``labels_target`` is given. Training is "decoder first, then end to end" (`set_stage`).

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
becomes the image tokens. ``VisionEncoderDecoderModel`` rejects a T5 decoder, so the decoder is
wired here: a ``T5ForConditionalGeneration`` whose encoder is removed and which always receives
``encoder_outputs``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
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
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from radixpert.vocab import OBSERVATIONS

logger = logging.getLogger(__name__)

Backbone = Literal["vit", "resnet", "densenet"]
Stage = Literal["decoder", "end_to_end"]

CONFIG_NAME = "radscribe_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "radixpert.radscribe"
FORMAT_VERSION = 1
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
    """What `RadScribe.forward` returns.

    Attributes:
        logits: Decoder vocabulary logits, (batch, target length, vocab).
        loss: lm_loss + label_loss_weight * label_loss over the parts given, else None.
        lm_loss: Report cross-entropy (ignoring -100), when ``labels`` were given.
        label_logits: CheXpert logits (batch, 14) when the label branch exists.
        label_loss: Masked BCE of ``label_logits`` when ``labels_target`` was given.
        memory: The (fused) joint encoder states the decoder attends to.
        memory_mask: Attention mask of ``memory`` (1 = real token).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    label_logits: torch.Tensor | None = None
    label_loss: torch.Tensor | None = None
    memory: torch.Tensor | None = None
    memory_mask: torch.Tensor | None = None


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
        self.num_labels = len(OBSERVATIONS)
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

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels_target: torch.Tensor | None = None,
    ) -> RadScribeOutput:
        """Teacher-forced forward pass.

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
        out = self.t5(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory),
            attention_mask=mask,
            decoder_input_ids=decoder_input_ids,
            labels=labels,
            use_cache=False,
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
            memory_mask=mask,
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
        encoder_outputs = BaseModelOutput(last_hidden_state=memory)
        batch = memory.shape[0]
        start = torch.full((batch, 1), int(config.decoder_start_token_id), device=memory.device)
        tokens, step_input = start, start
        finished = torch.zeros(batch, dtype=torch.bool, device=memory.device)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        eos, pad = config.eos_token_id, config.pad_token_id
        for _ in range(max_new_tokens):
            out = self.t5(
                encoder_outputs=encoder_outputs,
                attention_mask=mask,
                decoder_input_ids=step_input,
                cache=cache,  # `past_key_values` before transformers 5.24
                use_cache=True,
            )
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
        (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
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
        payload = json.loads(config_path.read_text())
        if payload.get("format") != FORMAT or payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{config_path} is not a {FORMAT} v{FORMAT_VERSION} config "
                f"(format={payload.get('format')!r}, version={payload.get('format_version')!r})"
            )
        backbone = payload["image_backbone"]
        if backbone not in BACKBONES:
            raise ValueError(f"{config_path}: unknown image_backbone {backbone!r}")
        model = build_encoder_decoder(
            image_backbone=backbone,
            backbone_config=BACKBONES[backbone][0].from_dict(payload["backbone_config"]),
            joint_config=BertConfig.from_dict(payload["joint_config"]),
            decoder_config=T5Config.from_dict(payload["decoder_config"]),
            label_branch=bool(payload["label_branch"]),
            label_loss_weight=float(payload["label_loss_weight"]),
            image_config=payload.get("image_config"),
        )
        load_model(model, str(weights_path), strict=True)
        model.eval()
        logger.info("loaded RadScribe (%s) from %s", backbone, directory)
        return model


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
