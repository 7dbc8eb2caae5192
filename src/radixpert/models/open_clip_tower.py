"""An open_clip image tower (BiomedCLIP's timm ViT) as a transformers vision model.

LLaVA-Rad's image encoder is an open_clip model: a timm ViT beside a BERT text tower.
``OpenClipVisionModel`` wraps the open_clip visual tower (timm trunk + open_clip projection) as a
``PreTrainedModel``, so transformers' ``LlavaForConditionalGeneration`` (and radixpert's HCF
llava) build it with ``AutoModel.from_config(config.vision_config)`` and read its
``hidden_states`` at ``vision_feature_layer`` as they read CLIP's::

    register()                                   # AutoConfig / AutoModel know the model type
    tower, preprocess = load_open_clip_tower(
        "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    out = tower(pixel_values, output_hidden_states=True)
    out.hidden_states[0]     # embeddings: CLS + patches, after the position embedding
    out.hidden_states[k]     # output of block k (before the final LayerNorm)
    out.last_hidden_state    # final LayerNorm of the last block (timm's forward_features)
    out.pooler_output        # timm's pooled features (BiomedCLIP: CLS after the LayerNorm)
    tower.get_image_features(pixel_values)   # pooled features through open_clip's projection

``hidden_states`` is always returned unless ``output_hidden_states is False``: transformers'
Llava passes the selected layer indices (an int or a list) in that argument, which are all
served by the full tuple. Depths follow transformers' numbering, as LLaVA-Rad's own open_clip
tower numbers them (0 = embeddings, ``-2`` = the second-to-last block, its default layer).

Saving: the tower's state dict is the open_clip visual's (``visual.trunk.*``,
``visual.head.*``), and its config records the open_clip model config and the name it came
from, so a Llava holding it saves and loads with ``save_pretrained`` / ``from_pretrained``
after ``register()``. This module imports only torch, transformers, open_clip and timm, so it
can ship beside a checkpoint as remote code.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling

logger = logging.getLogger(__name__)

MODEL_TYPE = "radixpert_open_clip_vision"
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"


@strict
class OpenClipVisionConfig(PretrainedConfig):
    """Config of an open_clip timm-ViT image tower.

    ``open_clip_config`` (open_clip's ``model_cfg``: ``embed_dim``, ``vision_cfg``,
    ``text_cfg``) is what the tower is built from; the size fields repeat what that
    architecture has, for Llava's code and radixpert's processor, and are checked against it.

    Args:
        open_clip_name: The open_clip name the weights came from (``hf-hub:org/name`` or a
            local open_clip folder); the contrastive stage loads the text tower from it.
        open_clip_config: open_clip's model config (``open_clip_config.json``'s ``model_cfg``).
        image_size: Input side in pixels.
        patch_size: ViT patch side.
        hidden_size: ViT width.
        num_hidden_layers: ViT blocks.
        num_attention_heads: Heads per block.
        num_channels: Input channels.
        projection_dim: Width of open_clip's image projection (the joint embedding space).
        image_mean: Per-channel mean of the checkpoint's preprocessing.
        image_std: Per-channel std of the checkpoint's preprocessing.
    """

    model_type = MODEL_TYPE
    base_config_key = "vision_config"

    open_clip_name: str | None = None
    open_clip_config: dict[str, Any] | None = None
    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    projection_dim: int = 512
    image_mean: list[float] | None = None
    image_std: list[float] | None = None


def _build_visual(model_cfg: dict[str, Any]) -> nn.Module:
    """open_clip's visual tower for ``model_cfg`` (random init, never downloads weights)."""
    from open_clip.model import _build_vision_tower  # open_clip's own builder: same modules
    from open_clip.timm_model import TimmModel
    from timm.models.vision_transformer import VisionTransformer

    if "vision_cfg" not in model_cfg or "embed_dim" not in model_cfg:
        raise ValueError("open_clip_config needs open_clip's model_cfg: embed_dim, vision_cfg")
    vision_cfg = dict(model_cfg["vision_cfg"])
    vision_cfg["timm_model_pretrained"] = False  # weights come from the checkpoint
    visual = _build_vision_tower(int(model_cfg["embed_dim"]), vision_cfg)
    if not isinstance(visual, TimmModel) or not isinstance(visual.trunk, VisionTransformer):
        raise ValueError(
            "open_clip_config.vision_cfg must name a timm ViT (timm_model_name), as BiomedCLIP "
            f"does; got {type(visual).__name__} / {type(getattr(visual, 'trunk', None)).__name__}"
        )
    if "pool" in visual.head:
        raise ValueError(f"open_clip timm_pool {vision_cfg.get('timm_pool')!r} is not supported")
    if visual.trunk.num_prefix_tokens != 1:
        # Llava's "default" feature strategy drops exactly one prefix token (CLS).
        raise ValueError(
            f"{vision_cfg['timm_model_name']} has {visual.trunk.num_prefix_tokens} prefix tokens; "
            "only ViTs with one CLS token (no registers) are supported"
        )
    return visual


def _architecture(visual: nn.Module, image_size: int | None = None) -> dict[str, int]:
    """The size fields of ``OpenClipVisionConfig`` as the built tower has them.

    ``image_size`` is the size the checkpoint is fed (its ``preprocess_cfg``), default the
    timm model's own. A ViT with ``dynamic_img_size`` (position embeddings interpolated, as
    timm's test ViTs) takes other sizes; any other ViT must be fed its own.

    Raises:
        ValueError: For a non-square model, or a size the ViT cannot take.
    """
    trunk = visual.trunk
    size = trunk.patch_embed.img_size
    patch = trunk.patch_embed.patch_size
    if size[0] != size[1] or patch[0] != patch[1]:
        raise ValueError(f"non-square image {size} or patch {patch} is not supported")
    native = int(size[0])
    image_size = native if image_size is None else int(image_size)
    if image_size != native and not getattr(trunk, "dynamic_img_size", False):
        raise ValueError(
            f"image_size {image_size} (open_clip_config vision_cfg.image_size / preprocess "
            f"size) but the timm ViT takes {native} px and has no dynamic_img_size"
        )
    if image_size % int(patch[0]):
        raise ValueError(f"image_size {image_size} is not a multiple of the patch {patch[0]}")
    return {
        "image_size": image_size,
        "patch_size": int(patch[0]),
        "hidden_size": int(trunk.embed_dim),
        "num_hidden_layers": len(trunk.blocks),
        "num_attention_heads": int(trunk.blocks[0].attn.num_heads),
        "num_channels": int(trunk.patch_embed.proj.in_channels),
        "projection_dim": int(visual.head.proj.out_features)
        if hasattr(visual.head, "proj")
        else int(trunk.embed_dim),
    }


class OpenClipVisionModel(PreTrainedModel):
    """open_clip's timm-ViT image tower with transformers' vision-model interface.

    ``visual`` is the open_clip module itself (``visual.trunk``: the timm ViT,
    ``visual.head``: open_clip's projection), so weights load unchanged from open_clip.
    """

    config_class = OpenClipVisionConfig
    config: OpenClipVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["Block"]

    def __init__(self, config: OpenClipVisionConfig) -> None:
        super().__init__(config)
        if not config.open_clip_config:
            raise ValueError("OpenClipVisionConfig.open_clip_config is required")
        self.visual = _build_visual(config.open_clip_config)
        built = _architecture(self.visual, config.image_size)
        wrong = {k: (getattr(config, k), v) for k, v in built.items() if getattr(config, k) != v}
        if wrong:
            raise ValueError(
                "OpenClipVisionConfig fields disagree with open_clip_config's architecture "
                f"(config, built): {wrong}"
            )
        self.gradient_checkpointing = False
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' generic init, plus the ViT's own parameters as timm initialises them."""
        from timm.models.vision_transformer import VisionTransformer

        super()._init_weights(module)
        if isinstance(module, VisionTransformer):
            if module.pos_embed is not None:
                init.trunc_normal_(module.pos_embed, std=0.02)
            if module.cls_token is not None:
                init.normal_(module.cls_token, std=1e-6)
            if module.reg_token is not None:
                init.normal_(module.reg_token, std=1e-6)
        elif hasattr(module, "gamma") and hasattr(module, "init_values"):  # timm LayerScale
            init.constant_(module.gamma, float(module.init_values))

    def get_input_embeddings(self) -> nn.Module:
        return self.visual.trunk.patch_embed

    def forward(
        self,
        pixel_values: Tensor,
        output_hidden_states: bool | int | list[int] | None = True,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling | tuple[Tensor, ...]:
        """Runs the ViT block by block.

        Args:
            pixel_values: (batch, channels, image_size, image_size), normalised with the
                checkpoint's mean and std.
            output_hidden_states: ``False`` leaves ``hidden_states`` out; anything else (True,
                None, or the layer indices transformers passes) returns all of them.
            output_attentions: Not supported (timm's fused attention keeps no weights).
            return_dict: ``False`` returns the output as a tuple.
            **kwargs: Accepted for transformers' calling conventions and ignored.

        Returns:
            ``BaseModelOutputWithPooling``: ``last_hidden_state`` (timm's ``forward_features``),
            ``pooler_output`` (timm's ``forward_head`` without classifier: the pooled features
            open_clip projects) and ``hidden_states`` (embeddings, then each block's output).

        Raises:
            ValueError: If attentions are requested.
        """
        if output_attentions:
            raise ValueError("OpenClipVisionModel cannot return attention weights")
        trunk = self.visual.trunk
        x = pixel_values.to(dtype=trunk.patch_embed.proj.weight.dtype)
        x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(x))))
        states = [x]
        for block in trunk.blocks:
            if self.gradient_checkpointing and self.training:
                x = self._gradient_checkpointing_func(block.__call__, x)
            else:
                x = block(x)
            states.append(x)
        last = trunk.norm(x)
        output = BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=trunk.forward_head(last),
            hidden_states=None if output_hidden_states is False else tuple(states),
        )
        return output if return_dict is not False else output.to_tuple()

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        """Pooled features through open_clip's projection (open_clip ``encode_image``, not
        normalised): the image side of the contrastive objective, (batch, projection_dim)."""
        pooled = self(pixel_values, output_hidden_states=False).pooler_output
        return self.visual.head(pooled)


def to_transformers_vit(tower: OpenClipVisionModel) -> nn.Module:
    """The tower as transformers' own ``ViTModel``, same weights and same hidden states.

    A timm ViT with one CLS token, learned absolute position embeddings, no pre-norm, no
    LayerScale and exact GELU is, layer for layer, the ViT of transformers (whose conversion
    script, ``convert_vit_timm_to_pytorch.py``, maps timm's weights the same way): the fused
    ``qkv`` is split into q / k / v, the rest is renamed. ``radixpert model export`` uses it so
    an exported LLaVA-Rad needs neither open_clip nor remote code. Position embeddings
    resampled by timm's ``dynamic_img_size`` at the configured image size are resampled once,
    here, as timm does on every call. The ViT's pooler is left as initialised (LLaVA reads
    hidden states, never the pooler); open_clip's projection (``visual.head``) is not part of
    the ViT (only the contrastive stage uses it).

    Raises:
        ValueError: For a timm ViT that transformers' ViT cannot express, naming what differs.
    """
    from timm.layers import resample_abs_pos_embed
    from transformers import ViTConfig, ViTModel

    trunk = tower.visual.trunk
    block = trunk.blocks[0]
    identity = {
        "norm_pre": trunk.norm_pre,
        "patch_embed.norm": trunk.patch_embed.norm,
        "ls1": block.ls1,
        "ls2": block.ls2,
        "attn.q_norm": block.attn.q_norm,
        "attn.k_norm": block.attn.k_norm,
        "attn.norm": getattr(block.attn, "norm", nn.Identity()),
        "mlp.norm": getattr(block.mlp, "norm", nn.Identity()),
    }
    unlike = [name for name, module in identity.items() if not isinstance(module, nn.Identity)]
    act = getattr(block.mlp, "act", None)
    if not (isinstance(act, nn.GELU) and act.approximate == "none"):
        unlike.append(f"mlp.act={type(act).__name__}")
    if trunk.no_embed_class or trunk.cls_token is None or trunk.pos_embed is None:
        unlike.append("class token / absolute position embeddings")
    if getattr(trunk.patch_embed, "dynamic_img_pad", False):
        unlike.append("dynamic_img_pad")
    if unlike:
        raise ValueError(
            "this open_clip timm ViT has parts transformers' ViTModel lacks: "
            + ", ".join(unlike)
            + "; it can be trained in radixpert but not exported without remote code"
        )
    config = tower.config
    grid = config.image_size // config.patch_size
    vit_config = ViTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=int(block.mlp.fc1.out_features),
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=float(block.norm1.eps),
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        qkv_bias=block.attn.qkv.bias is not None,
        dtype=config.dtype,
    )
    vit = ViTModel(vit_config, add_pooling_layer=True)
    pos = trunk.pos_embed.detach()
    if tuple(trunk.patch_embed.grid_size) != (grid, grid):
        pos = resample_abs_pos_embed(pos, new_size=[grid, grid],
                                     old_size=list(trunk.patch_embed.grid_size),
                                     num_prefix_tokens=trunk.num_prefix_tokens)  # fmt: skip
    state = {
        "embeddings.cls_token": trunk.cls_token,
        "embeddings.position_embeddings": pos,
        "embeddings.patch_embeddings.projection.weight": trunk.patch_embed.proj.weight,
        "embeddings.patch_embeddings.projection.bias": trunk.patch_embed.proj.bias,
        "layernorm.weight": trunk.norm.weight,
        "layernorm.bias": trunk.norm.bias,
    }
    for i, blk in enumerate(trunk.blocks):
        prefix = f"layers.{i}."
        q, k, v = blk.attn.qkv.weight.chunk(3, dim=0)
        state |= {
            f"{prefix}attention.q_proj.weight": q,
            f"{prefix}attention.k_proj.weight": k,
            f"{prefix}attention.v_proj.weight": v,
            f"{prefix}attention.o_proj.weight": blk.attn.proj.weight,
            f"{prefix}attention.o_proj.bias": blk.attn.proj.bias,
            f"{prefix}layernorm_before.weight": blk.norm1.weight,
            f"{prefix}layernorm_before.bias": blk.norm1.bias,
            f"{prefix}layernorm_after.weight": blk.norm2.weight,
            f"{prefix}layernorm_after.bias": blk.norm2.bias,
            f"{prefix}mlp.fc1.weight": blk.mlp.fc1.weight,
            f"{prefix}mlp.fc1.bias": blk.mlp.fc1.bias,
            f"{prefix}mlp.fc2.weight": blk.mlp.fc2.weight,
            f"{prefix}mlp.fc2.bias": blk.mlp.fc2.bias,
        }
        if blk.attn.qkv.bias is not None:
            qb, kb, vb = blk.attn.qkv.bias.chunk(3, dim=0)
            state |= {f"{prefix}attention.q_proj.bias": qb, f"{prefix}attention.k_proj.bias": kb,
                      f"{prefix}attention.v_proj.bias": vb}  # fmt: skip
    missing, unexpected = vit.load_state_dict(
        {k: t.detach().clone() for k, t in state.items()}, strict=False
    )
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing or unexpected:
        raise ValueError(f"ViT conversion: missing {missing}, unexpected {unexpected}")
    return vit.to(dtype=trunk.patch_embed.proj.weight.dtype).eval()


def register() -> None:
    """Lets ``AutoConfig`` / ``AutoModel`` (and so Llava's configs and models) build the tower.

    Call it before building or loading a Llava whose ``vision_config`` has this model type.
    """
    AutoConfig.register(MODEL_TYPE, OpenClipVisionConfig, exist_ok=True)
    AutoModel.register(OpenClipVisionConfig, OpenClipVisionModel, exist_ok=True)


def open_clip_model_name(name: str | Path) -> str:
    """open_clip's schema-prefixed name: ``hf-hub:`` names pass, a folder gets ``local-dir:``.

    Raises:
        ValueError: For anything else (a bare hub id is refused rather than guessed).
    """
    text = str(name)
    if text.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
        return text
    if Path(text).is_dir():
        if not (Path(text) / "open_clip_config.json").is_file():
            raise ValueError(f"{text} is not an open_clip folder: open_clip_config.json missing")
        return LOCAL_DIR_PREFIX + text
    raise ValueError(
        f"open_clip model {text!r}: give 'hf-hub:<org>/<name>' or a local open_clip folder "
        "(holding open_clip_config.json and the weights)"
    )


def create_open_clip(name: str | Path, **kwargs: Any) -> nn.Module:
    """The pretrained open_clip model (both towers, ``logit_scale``), loaded by open_clip.

    Hub files come through huggingface_hub, so ``HF_HUB_OFFLINE`` and ``HF_HOME`` apply.

    Args:
        name: ``hf-hub:<org>/<name>`` or a local open_clip folder.
        **kwargs: Passed to ``open_clip.create_model`` (e.g. ``precision``, ``device``).

    Raises:
        ValueError: For a name that is neither.
        RuntimeError: When open_clip finds no weights for it.
    """
    import open_clip

    kwargs.setdefault("require_pretrained", True)
    return open_clip.create_model(open_clip_model_name(name), **kwargs)


def open_clip_config(name: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``model_cfg``, ``preprocess_cfg``) of an open_clip model, as open_clip reads them."""
    import json

    from open_clip.factory import _get_hf_config

    full = open_clip_model_name(name)
    if full.startswith(HF_HUB_PREFIX):
        payload = _get_hf_config(full[len(HF_HUB_PREFIX) :])
        where = full
    else:
        path = Path(full[len(LOCAL_DIR_PREFIX) :]) / "open_clip_config.json"
        payload = json.loads(path.read_text(encoding="utf-8"))
        where = str(path)
    if "model_cfg" not in payload:
        raise ValueError(f"{where}: open_clip config has no 'model_cfg'")
    return payload["model_cfg"], payload.get("preprocess_cfg", {})


def load_open_clip_tower(
    name: str | Path, **kwargs: Any
) -> tuple[OpenClipVisionModel, dict[str, Any]]:
    """The image tower of a pretrained open_clip model, with its preprocessing settings.

    Args:
        name: ``hf-hub:<org>/<name>`` (e.g.
            ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``) or a local
            open_clip folder (``open_clip_config.json`` + weights).
        **kwargs: Passed to ``open_clip.create_model``.

    Returns:
        (tower in eval mode with the checkpoint's visual weights, preprocessing dict with
        ``image_size``, ``image_mean``, ``image_std``, ``interpolation``, ``resize_mode``
        from the checkpoint's ``preprocess_cfg``).
    """
    register()
    clip = create_open_clip(name, **kwargs)
    model_cfg, _ = open_clip_config(name)
    preprocess = dict(clip.visual.preprocess_cfg)
    size = preprocess["size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    config = OpenClipVisionConfig(
        open_clip_name=str(name),
        open_clip_config=copy.deepcopy(model_cfg),
        image_mean=[float(v) for v in preprocess["mean"]],
        image_std=[float(v) for v in preprocess["std"]],
        **_architecture(clip.visual, int(size)),
    )
    tower = OpenClipVisionModel(config)
    tower.visual.load_state_dict(clip.visual.state_dict(), strict=True)
    tower.to(dtype=next(clip.visual.parameters()).dtype).eval()
    logger.info(
        "loaded open_clip image tower %s: %s, %d blocks, width %d, %.1f M parameters",
        name,
        model_cfg["vision_cfg"].get("timm_model_name"),
        config.num_hidden_layers,
        config.hidden_size,
        sum(p.numel() for p in tower.parameters()) / 1e6,
    )
    settings = {
        "image_size": int(size),
        "image_mean": list(config.image_mean),
        "image_std": list(config.image_std),
        "interpolation": preprocess.get("interpolation"),
        "resize_mode": preprocess.get("resize_mode"),
    }
    return tower, settings


__all__ = [
    "MODEL_TYPE",
    "OpenClipVisionConfig",
    "OpenClipVisionModel",
    "create_open_clip",
    "load_open_clip_tower",
    "open_clip_config",
    "open_clip_model_name",
    "register",
    "to_transformers_vit",
]
