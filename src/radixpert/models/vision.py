"""Vision towers: a transformers vision encoder that returns hidden states at chosen depths.

    tower = build_vision_tower("clip", pretrained="openai/clip-vit-large-patch14-336")
    tower = build_vision_tower(
        "open_clip", pretrained="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    tower = build_vision_tower("dinov2", tiny_vision_config("dinov2"), channels_in=1)  # tests
    low, mid, last = tower(pixel_values, layers=[8, 16, -1])   # each (batch, tokens, hidden)

Depth numbering follows transformers' ``hidden_states`` tuple, as LLaVA's
``vision_feature_layer`` does: ``0`` is the embedding output, ``k`` the output of encoder
layer ``k``, ``num_layers`` (or ``-1``) the last layer. The states are taken before any final
LayerNorm that some models (ViT, DINOv2) apply only to ``last_hidden_state``, so every depth is
read the same way.

``feature_select="patch"`` (the default, LLaVA's default strategy) drops the prefix tokens
(CLS, and register tokens where a model has them) and keeps one token per patch; ``"full"``
keeps them. SigLIP has no CLS, so both give the same tokens there.

Radiographs are grayscale. A tower built with ``channels_in=1`` takes (batch, 1, H, W) input and
replicates it to the encoder's channel count, so pretrained RGB weights are used unchanged.
``pretrained`` is a hub id or a local directory, read by ``from_pretrained``; with
``HF_HUB_OFFLINE=1`` transformers reads only the local cache. ``open_clip`` towers (BiomedCLIP,
``radixpert.models.open_clip_tower``) take open_clip's names (``hf-hub:org/name`` or a local
open_clip folder) and are loaded by open_clip.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTModel,
)

logger = logging.getLogger(__name__)

FeatureSelect = Literal["patch", "full"]

# kind -> (config class, model class, extra model kwargs)
_KINDS: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel], dict[str, Any]]] = {
    "clip": (CLIPVisionConfig, CLIPVisionModel, {}),
    "siglip": (SiglipVisionConfig, SiglipVisionModel, {}),
    "dinov2": (Dinov2Config, Dinov2Model, {}),
    # The pooler is never used (we read hidden states); leaving it out avoids unused weights.
    "vit": (ViTConfig, ViTModel, {"add_pooling_layer": False}),
}
VISION_KINDS: tuple[str, ...] = (*_KINDS, "open_clip", "auto")


def _as_int(value: Any) -> int:
    """Reads an image/patch size that configs store as an int or an (h, w) pair."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"non-square size {value!r} is not supported")
        value = value[0]
    return int(value)


class VisionTower(nn.Module):
    """A transformers vision encoder returning hidden states at requested depths.

    Args:
        model: A transformers vision model whose config has ``hidden_size``,
            ``num_hidden_layers``, ``image_size``, ``patch_size`` and ``num_channels`` and whose
            forward accepts ``pixel_values`` and ``output_hidden_states``.
        feature_select: ``"patch"`` drops CLS/register tokens, ``"full"`` keeps every token.
        channels_in: Channels of the input images: the encoder's own count, or 1 for grayscale
            images that are replicated to the encoder's channels.
    """

    def __init__(
        self,
        model: nn.Module,
        feature_select: FeatureSelect = "patch",
        channels_in: int | None = None,
    ) -> None:
        super().__init__()
        if feature_select not in ("patch", "full"):
            raise ValueError(f"feature_select must be 'patch' or 'full', got {feature_select!r}")
        self.model = model
        config = model.config
        self.feature_select: FeatureSelect = feature_select
        self.hidden_size = int(config.hidden_size)
        self.num_layers = int(config.num_hidden_layers)
        self.image_size = _as_int(config.image_size)
        self.patch_size = _as_int(config.patch_size)
        self.model_channels = int(getattr(config, "num_channels", 3))
        self.channels_in = self.model_channels if channels_in is None else int(channels_in)
        if self.channels_in not in (1, self.model_channels):
            raise ValueError(
                f"channels_in must be 1 or the encoder's {self.model_channels}, "
                f"got {self.channels_in}"
            )
        # Follow the wrapped model's mode (eval after from_pretrained, train for random init).
        self.train(model.training)

    @property
    def config(self) -> PretrainedConfig:
        """The wrapped model's config."""
        return self.model.config

    @property
    def num_patches(self) -> int:
        """Patch tokens per image at ``image_size`` (what ``"patch"`` returns)."""
        return (self.image_size // self.patch_size) ** 2

    def resolve_layer(self, layer: int) -> int:
        """Turns a possibly negative depth into its index in ``0..num_layers``.

        Raises:
            IndexError: If the depth is outside the encoder.
        """
        count = self.num_layers + 1
        if not -count <= layer < count:
            raise IndexError(
                f"layer {layer} outside the encoder: valid depths are {-count}..{count - 1} "
                f"(0 = embeddings, {self.num_layers} or -1 = last layer)"
            )
        return layer % count

    def forward(self, pixel_values: Tensor, layers: Sequence[int] = (-1,)) -> list[Tensor]:
        """Encodes images and returns the hidden states at ``layers``.

        Args:
            pixel_values: (batch, channels_in, H, W) images, normalised for the encoder.
            layers: Depths to return, in the order wanted (see the module docstring).

        Returns:
            One (batch, tokens, hidden_size) tensor per requested depth.

        Raises:
            ValueError: If the input does not have ``channels_in`` channels.
            IndexError: If a depth is outside the encoder.
        """
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.channels_in:
            raise ValueError(
                f"expected pixel_values (batch, {self.channels_in}, H, W), got "
                f"{tuple(pixel_values.shape)}; build the tower with channels_in=1 for "
                "grayscale input"
            )
        if not layers:
            raise ValueError("layers must name at least one depth")
        indices = [self.resolve_layer(layer) for layer in layers]
        if self.channels_in != self.model_channels:
            # expand, not repeat: a view, so no copy of the batch is made.
            pixel_values = pixel_values.expand(-1, self.model_channels, -1, -1)
        outputs = self.model(pixel_values=pixel_values, output_hidden_states=True)
        hidden_states = outputs.hidden_states
        height, width = pixel_values.shape[-2:]
        patches = (height // self.patch_size) * (width // self.patch_size)
        states = []
        for index in indices:
            state = hidden_states[index]
            if self.feature_select == "patch":
                # Prefix tokens (CLS, registers) come first in every supported encoder; counting
                # them from the sequence length covers models with or without them.
                state = state[:, state.shape[1] - patches :]
            states.append(state)
        return states

    def save_pretrained(self, path: str, **kwargs: Any) -> None:
        """Saves the wrapped model so ``build_vision_tower(kind, pretrained=path)`` reloads it."""
        self.model.save_pretrained(path, **kwargs)


def tiny_vision_config(kind: str) -> PretrainedConfig:
    """A tiny random-init config of a real architecture, for tests.

    Image 32, patch 8 (16 patches), hidden 32, 4 layers, 2 heads, MLP 64.

    Args:
        kind: One of ``clip``, ``siglip``, ``dinov2``, ``vit``.
    """
    config_cls, _, _ = _kind(kind)
    return config_cls(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        num_channels=3,
    )


def _kind(kind: str) -> tuple[type[PretrainedConfig], type[PreTrainedModel], dict[str, Any]]:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown vision tower {kind!r}; choose one of {VISION_KINDS}") from None


def build_vision_tower(
    kind: str,
    config: dict[str, Any] | PretrainedConfig | None = None,
    pretrained: str | None = None,
    *,
    feature_select: FeatureSelect = "patch",
    channels_in: int | None = None,
    **model_kwargs: Any,
) -> VisionTower:
    """Builds a vision tower, random-init from a config or loaded from weights.

    Args:
        kind: ``clip``, ``siglip``, ``dinov2``, ``vit``, ``open_clip`` (an open_clip timm
            ViT, ``OpenClipVisionModel``; ``pretrained`` is an open_clip name), or ``auto``
            (any encoder that ``AutoModel`` resolves and that has the config fields
            ``VisionTower`` reads).
        config: A config or a dict of config fields. Without ``pretrained`` it is required and
            the model is random-init; with ``pretrained`` it replaces the stored config.
        pretrained: Hub id or local directory for ``from_pretrained``. A full CLIP/SigLIP
            checkpoint works for ``clip``/``siglip``: its vision part is read.
        feature_select: See ``VisionTower``.
        channels_in: See ``VisionTower``.
        **model_kwargs: Passed to ``from_pretrained`` (e.g. ``dtype``); for ``open_clip`` to
            ``open_clip.create_model`` (e.g. ``precision``).

    Returns:
        The tower, in the wrapped model's mode: eval when loaded, training when random-init.

    Raises:
        ValueError: For an unknown kind, or when neither config nor pretrained is given.
    """
    if kind == "open_clip":
        return _open_clip_tower(config, pretrained, feature_select, channels_in, model_kwargs)
    if kind == "auto":
        config_cls: Any = AutoConfig
        model_cls: Any = AutoModel
        extra: dict[str, Any] = {}
    else:
        config_cls, model_cls, extra = _kind(kind)
    if isinstance(config, dict):
        config = AutoConfig.for_model(**config) if kind == "auto" else config_cls(**config)
    if pretrained is not None:
        if config is not None:
            model_kwargs["config"] = config
        logger.info("loading %s vision tower from %s", kind, pretrained)
        model = model_cls.from_pretrained(pretrained, **extra, **model_kwargs)
    elif config is not None:
        if kind == "auto":
            model = AutoModel.from_config(config, **extra)
        else:
            model = model_cls(config, **extra)
    else:
        raise ValueError("build_vision_tower needs a config (random init) or pretrained weights")
    return VisionTower(model, feature_select=feature_select, channels_in=channels_in)


def _open_clip_tower(
    config: dict[str, Any] | PretrainedConfig | None,
    pretrained: str | None,
    feature_select: FeatureSelect,
    channels_in: int | None,
    model_kwargs: dict[str, Any],
) -> VisionTower:
    from radixpert.models.open_clip_tower import (
        OpenClipVisionConfig,
        OpenClipVisionModel,
        load_open_clip_tower,
    )

    if pretrained is not None:
        if config is not None:
            raise ValueError("an open_clip tower takes its config from the checkpoint")
        logger.info("loading open_clip vision tower from %s", pretrained)
        model, _ = load_open_clip_tower(pretrained, **model_kwargs)
    elif config is not None:
        if isinstance(config, dict):
            config = OpenClipVisionConfig(**config)
        model = OpenClipVisionModel(config)
    else:
        raise ValueError("build_vision_tower needs a config (random init) or pretrained weights")
    return VisionTower(model, feature_select=feature_select, channels_in=channels_in)


def fusion_layers(num_layers: int, levels: int = 3) -> list[int]:
    """Evenly spaced depths ending at the last layer, e.g. 24 layers, 3 levels -> [8, 16, 24].

    These feed the HCF connector's levels (early, middle, last); one level gives the last.

    Args:
        num_layers: Encoder depth (``VisionTower.num_layers``).
        levels: Number of depths wanted.
    """
    if not 1 <= levels <= num_layers:
        raise ValueError(f"levels must be in 1..{num_layers}, got {levels}")
    return [round(num_layers * k / levels) for k in range(1, levels + 1)]


__all__ = [
    "VISION_KINDS",
    "FeatureSelect",
    "VisionTower",
    "build_vision_tower",
    "fusion_layers",
    "tiny_vision_config",
]
