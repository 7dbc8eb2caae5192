"""Contrastive image-report pretraining of a llava model's vision tower (LLaVA-Rad stage 1).

A recipe stage with ``objective: contrastive`` trains the vision tower (and a small
``ContrastiveHead``) with the CLIP loss, the frozen language model serving as text encoder::

    head = ContrastiveHead.for_model(model, embed_dim=256)
    batch = contrastive_batch(processor, images, reports, max_length=256)
    loss = contrastive_loss(model, head, batch)        # symmetric InfoNCE over the batch
    loss.backward(); optimizer.step()
    acc = retrieval_accuracy(model, head, batch)       # image -> report top-1, for validation

The loss is CLIP's (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision", https://arxiv.org/abs/2103.00020) as open_clip's ``ClipLoss`` computes it
on one process (https://github.com/mlfoundations/open_clip, ``src/open_clip/loss.py``):
L2-normalised embeddings, logits ``scale * I @ T.T``, cross-entropy with the diagonal as targets
in both directions, averaged. The temperature is learned as ``logit_scale = log(1 / tau)``,
initialised with tau = 0.07 and clamped so that the scale is at most 100, as in both.

Image features are the tower's ``pooler_output`` (CLIP: the CLS token after
``post_layernorm``; SigLIP with its head: the attention-pooled output), else the mean of
``last_hidden_state`` (SigLIP without head). Text features are the language model's last
hidden state mean-pooled over non-padding tokens. A peft wrapper (``get_base_model``) and an
accelerate/DDP wrapper (``.module``) around the model are looked through.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100.0)
"""Upper bound on ``logit_scale`` (the scale itself is at most 100), as in CLIP / open_clip."""


def unwrap_model(model: Any) -> Any:
    """The transformers model under accelerate/DDP (``.module``) and peft wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        get_base = getattr(model, "get_base_model", None)
        if hasattr(model, "peft_config") and callable(get_base):
            model = get_base()
            continue
        return model


def _llava_parts(model: Any) -> tuple[nn.Module, nn.Module]:
    """(vision tower, language model) of a llava-family model (transformers 5 layout)."""
    base = unwrap_model(model)
    inner = getattr(base, "model", base)  # ...ForConditionalGeneration keeps them in .model
    tower = getattr(inner, "vision_tower", None)
    language_model = getattr(inner, "language_model", None)
    if not isinstance(tower, nn.Module) or not isinstance(language_model, nn.Module):
        raise TypeError(
            f"{type(base).__name__} is not a llava-family model: contrastive pretraining needs "
            "model.model.vision_tower and model.model.language_model"
        )
    return tower, language_model


class ContrastiveHead(nn.Module):
    """Projections of image and text features into a joint space, and the learned temperature.

    Args:
        image_dim: Width of the image features (the vision tower's hidden size).
        text_dim: Width of the text features (the language model's hidden size).
        embed_dim: Width of the joint embedding space.
        init_temperature: Initial softmax temperature tau; ``logit_scale`` starts at
            ``log(1 / tau)`` (CLIP: 0.07).
    """

    def __init__(
        self, image_dim: int, text_dim: int, embed_dim: int = 256, init_temperature: float = 0.07
    ) -> None:
        super().__init__()
        if init_temperature <= 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        self.image_proj = nn.Linear(image_dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    @classmethod
    def for_model(cls, model: Any, embed_dim: int = 256, **kwargs: Any) -> ContrastiveHead:
        """A head sized for a llava-family model (wrappers looked through).

        Args:
            model: The model; its config gives ``vision_config.hidden_size`` and
                ``text_config.hidden_size``.
            embed_dim: Width of the joint embedding space.
            **kwargs: Further ``ContrastiveHead`` arguments (``init_temperature``).
        """
        config = unwrap_model(model).config
        return cls(
            int(config.vision_config.hidden_size),
            int(config.text_config.hidden_size),
            embed_dim=embed_dim,
            **kwargs,
        )

    @property
    def scale(self) -> Tensor:
        """The multiplier of the cosine similarities: ``exp(min(logit_scale, log 100))``."""
        return effective_scale(self.logit_scale)


def effective_scale(logit_scale: Tensor | float) -> Tensor:
    """``exp(logit_scale)`` with ``logit_scale`` clamped to at most ``log(100)``."""
    return torch.as_tensor(logit_scale).clamp(max=MAX_LOGIT_SCALE).exp()


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE over a batch of paired embeddings (CLIP; open_clip ``ClipLoss``).

    Pair i is (image i, text i); every other text (image) in the batch is a negative. Computed
    in float32 whatever the inputs' dtype.

    Args:
        image_emb: (B, D) image embeddings, not necessarily normalised.
        text_emb: (B, D) text embeddings, not necessarily normalised.
        logit_scale: The log of the scale, as ``ContrastiveHead.logit_scale`` stores it; it is
            clamped to ``log(100)`` and exponentiated here (open_clip's ``ClipLoss`` takes the
            exponentiated value instead).

    Returns:
        Scalar: (CE(image -> text) + CE(text -> image)) / 2.

    Raises:
        ValueError: If the embeddings are not two (B, D) tensors of one shape with B >= 1.
    """
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape or image_emb.shape[0] == 0:
        raise ValueError(
            f"need two (B, D) embeddings of one shape, got {tuple(image_emb.shape)} and "
            f"{tuple(text_emb.shape)}"
        )
    image = F.normalize(image_emb.float(), dim=-1)
    text = F.normalize(text_emb.float(), dim=-1)
    scale = effective_scale(logit_scale).to(device=image.device, dtype=torch.float32)
    logits_per_image = scale * image @ text.T
    targets = torch.arange(image.shape[0], device=image.device)
    return (
        F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)
    ) / 2


def image_features(model: Any, pixel_values: Tensor) -> Tensor:
    """Pooled vision-tower features of a llava-family model.

    Args:
        model: The model (peft / DDP wrappers allowed).
        pixel_values: (B, C, H, W), as ``RadProcessor.preprocess_image`` makes them.

    Returns:
        (B, vision hidden): ``pooler_output`` when the tower gives one (CLIP: CLS token after
        ``post_layernorm``; SigLIP with head: attention pooling), else the mean of
        ``last_hidden_state`` over tokens.
    """
    tower, _ = _llava_parts(model)
    param = next(tower.parameters())
    out = tower(pixel_values=pixel_values.to(device=param.device, dtype=param.dtype))
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled
    return out.last_hidden_state.mean(dim=1)


def text_features(model: Any, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The language model's last hidden state, mean-pooled over non-padding tokens.

    Use right padding: with a causal LM the attended tokens then do not see the padding, so a
    text's features do not depend on how far it was padded.

    Args:
        model: The model (peft / DDP wrappers allowed); ``model.model.language_model`` (the
            decoder without ``lm_head``) is run.
        input_ids: (B, L) token ids.
        attention_mask: (B, L), 1 on tokens, 0 on padding.

    Returns:
        (B, text hidden).

    Raises:
        ValueError: If a row has no token.
    """
    _, language_model = _llava_parts(model)
    device = next(language_model.parameters()).device
    mask = attention_mask.to(device)
    counts = mask.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise ValueError("a text has no tokens (attention_mask all zero)")
    hidden = language_model(input_ids=input_ids.to(device), attention_mask=mask).last_hidden_state
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / counts.to(hidden.dtype)


def contrastive_batch(
    processor: Any, images: Sequence[Any], reports: Sequence[str], max_length: int = 256
) -> dict[str, Tensor]:
    """Model inputs for one batch of image-report pairs.

    Args:
        processor: A ``RadProcessor`` (image transform and tokenizer of the model).
        images: Radiographs, anything ``processor.preprocess_image`` accepts (paths, arrays).
        reports: One report per image, plain text without ``<image>``.
        max_length: Reports are truncated to this many tokens.

    Returns:
        ``pixel_values`` (B, C, H, W), and ``input_ids`` and ``attention_mask`` (B, L),
        right-padded to the longest report.

    Raises:
        ValueError: On an empty batch, a count mismatch, an empty report, a report holding the
            image token, or a tokenizer without a pad token.
    """
    if len(images) != len(reports) or not reports:
        raise ValueError(f"need as many reports as images (>= 1): {len(images)}, {len(reports)}")
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token")
    image_token = getattr(getattr(processor, "config", None), "image_token", "<image>")
    for i, report in enumerate(reports):
        if not report.strip():
            raise ValueError(f"report {i} is empty")
        if image_token in report:
            raise ValueError(f"report {i} contains the image token {image_token!r}")
    pixel_values = torch.stack([processor.preprocess_image(image) for image in images])
    text = tokenizer(
        list(reports),
        padding="longest",
        truncation=True,
        max_length=max_length,
        padding_side="right",
        return_tensors="pt",
    )
    return {
        "pixel_values": pixel_values,
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
    }


def _embeddings(
    model: Any, head: ContrastiveHead, batch: Mapping[str, Tensor]
) -> tuple[Tensor, Tensor]:
    weight = head.image_proj.weight
    image = image_features(model, batch["pixel_values"]).to(weight.device, weight.dtype)
    text = text_features(model, batch["input_ids"], batch["attention_mask"])
    return head.image_proj(image), head.text_proj(text.to(weight.device, weight.dtype))


def contrastive_loss(model: Any, head: ContrastiveHead, batch: Mapping[str, Tensor]) -> Tensor:
    """CLIP loss of one batch (``contrastive_batch`` output): tower + head, LM as text encoder.

    Gradients reach whatever requires them; freeze the language model to train the tower only.
    """
    image, text = _embeddings(model, head, batch)
    return clip_loss(image, text, head.logit_scale)


@torch.no_grad()
def retrieval_accuracy(model: Any, head: ContrastiveHead, batch: Mapping[str, Tensor]) -> float:
    """Image -> text top-1 accuracy within the batch: how often an image's best report is its own.

    Runs in the model's current mode (call ``model.eval()`` for validation).
    """
    image, text = _embeddings(model, head, batch)
    similarity = F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    targets = torch.arange(similarity.shape[0], device=similarity.device)
    return float((similarity.argmax(dim=1) == targets).float().mean())


__all__ = [
    "MAX_LOGIT_SCALE",
    "ContrastiveHead",
    "clip_loss",
    "contrastive_batch",
    "contrastive_loss",
    "effective_scale",
    "image_features",
    "retrieval_accuracy",
    "text_features",
    "unwrap_model",
]
