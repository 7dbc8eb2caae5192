"""Contrastive image-report pretraining of a llava model's vision tower (LLaVA-Rad stage 1).

A recipe stage with ``objective: contrastive`` trains the vision tower with the CLIP loss
against a text encoder that ``ContrastiveHead.for_model`` picks from the tower::

    head = ContrastiveHead.for_model(model)
    batch = contrastive_batch(processor, images, reports, max_length=256, head=head)
    loss = contrastive_loss(model, head, batch)        # symmetric InfoNCE over the batch
    loss.backward(); optimizer.step()
    acc = retrieval_accuracy(model, head, batch)       # image -> report top-1, for validation

- An open_clip tower (``radixpert.models.open_clip_tower``, BiomedCLIP) gets an
  ``OpenClipTextHead``: the same open_clip model's text tower (BiomedBERT with its
  projection), its tokenizer and its checkpoint ``logit_scale``: the CLIP objective BiomedCLIP
  was trained with, which LLaVA-Rad continued on 697 K chest X-ray image-report pairs to make
  its BiomedCLIP-CXR encoder. The image side is the tower's pooled output through open_clip's
  visual projection (part of the tower, so it trains with it). The text tower is frozen by
  default (LLaVA-Rad's public code loads BiomedCLIP-CXR but holds no code for training it, so
  whether its text tower was locked is not on record there); ``train_text=True`` trains it.
  The temperature is learned from the checkpoint's value.
- Any other tower gets a ``LanguageModelTextHead``: learned projections of the tower's pooled
  output (CLIP: the CLS token after ``post_layernorm``; SigLIP with its head: the
  attention-pooled output; else the mean of ``last_hidden_state``) and of the frozen language
  model's last hidden state mean-pooled over non-padding tokens, with a temperature starting at
  tau = 0.07. This is an approximation for towers that come without a text encoder.

The loss is CLIP's (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision", https://arxiv.org/abs/2103.00020) as open_clip's ``ClipLoss`` computes it
on one process (https://github.com/mlfoundations/open_clip, ``src/open_clip/loss.py``):
L2-normalised embeddings, logits ``scale * I @ T.T``, cross-entropy with the diagonal as targets
in both directions, averaged. The temperature is learned as ``logit_scale = log(1 / tau)`` and
clamped so that the scale is at most 100, as in both. A peft wrapper (``get_base_model``) and an
accelerate/DDP wrapper (``.module``) around the model or the head are looked through.
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
HEAD_FILE = "contrastive_head.safetensors"
"""The contrastive head (``ContrastiveHead.state_dict()``) that the stage's bundle carries."""
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
    """The text side and the temperature of the contrastive objective.

    ``forward(model, batch)`` gives the (image, text) embeddings of a batch made by
    ``contrastive_batch``; ``logit_scale`` is the log of the similarity scale. Two kinds:

    - ``OpenClipTextHead``: the open_clip model's own text tower, tokenizer and
      ``logit_scale`` (LLaVA-Rad with a BiomedCLIP tower); the image side is the tower's pooled
      output through open_clip's visual projection.
    - ``LanguageModelTextHead``: learned projections of the tower's pooled output and of the
      language model's mean-pooled hidden states (towers without a text tower of their own).

    ``ContrastiveHead.for_model(model)`` picks the one the model's tower calls for.
    """

    logit_scale: nn.Parameter

    @classmethod
    def for_model(
        cls, model: Any, embed_dim: int | None = None, **kwargs: Any
    ) -> LanguageModelTextHead | OpenClipTextHead:
        """The head for a llava-family model (wrappers looked through).

        Args:
            model: The model. An open_clip tower (``OpenClipVisionModel``) gets an
                ``OpenClipTextHead`` loaded from the open_clip model its config names;
                any other tower a ``LanguageModelTextHead``.
            embed_dim: Joint width of a ``LanguageModelTextHead`` (default 256). An open_clip
                head has its checkpoint's; a different value is an error.
            **kwargs: Further arguments of the chosen head's constructor (``init_temperature``
                for the language-model head; ``train_text``, ``train_logit_scale`` and
                ``open_clip.create_model`` arguments for the open_clip head).

        Raises:
            ValueError: When ``embed_dim`` disagrees with an open_clip tower's projection.
        """
        tower, _ = _llava_parts(model)
        if is_open_clip_tower(tower):
            width = int(tower.config.projection_dim)
            if embed_dim is not None and embed_dim != width:
                raise ValueError(
                    f"embed_dim {embed_dim} != the open_clip projection width {width} of "
                    f"{tower.config.open_clip_name}"
                )
            return OpenClipTextHead.from_tower(tower, **kwargs)
        return LanguageModelTextHead.for_model(model, embed_dim=embed_dim or 256, **kwargs)

    @property
    def scale(self) -> Tensor:
        """The multiplier of the cosine similarities: ``exp(min(logit_scale, log 100))``."""
        return effective_scale(self.logit_scale)

    def tokenize(self, reports: Sequence[str], max_length: int) -> dict[str, Tensor] | None:
        """``input_ids`` and ``attention_mask`` of the reports, or None to use the processor's
        tokenizer (the language model's)."""
        return None


class LanguageModelTextHead(ContrastiveHead):
    """Projections of image and text features into a joint space, and the learned temperature.

    Text features are the language model's (``text_features``), image features the tower's
    pooled output (``image_features``); both are projected here.

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
    def for_model(  # type: ignore[override]
        cls, model: Any, embed_dim: int = 256, **kwargs: Any
    ) -> LanguageModelTextHead:
        """A head sized for a llava-family model: ``vision_config.hidden_size`` and
        ``text_config.hidden_size``; ``kwargs`` as the constructor's (``init_temperature``)."""
        config = unwrap_model(model).config
        return cls(
            int(config.vision_config.hidden_size),
            int(config.text_config.hidden_size),
            embed_dim=embed_dim,
            **kwargs,
        )

    def forward(self, model: Any, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(image, text) embeddings, (B, embed_dim) each, of a ``contrastive_batch`` batch."""
        weight = self.image_proj.weight
        image = image_features(model, batch["pixel_values"]).to(weight.device, weight.dtype)
        text = text_features(model, batch["input_ids"], batch["attention_mask"])
        return self.image_proj(image), self.text_proj(text.to(weight.device, weight.dtype))


class OpenClipTextHead(ContrastiveHead):
    """The open_clip model's text tower, tokenizer and temperature, against its image tower.

    Args:
        text: open_clip's text tower (BiomedCLIP: BiomedBERT, CLS pooling, MLP projection).
        tokenizer: open_clip's tokenizer for it (``open_clip.get_tokenizer``).
        logit_scale: The checkpoint's ``logit_scale`` (log of the scale).
        train_text: Train the text tower too; by default it is frozen and kept in eval mode.
        train_logit_scale: Learn the temperature (from the checkpoint's value), as open_clip
            training does.
        source: The open_clip name the parts came from, for messages.
    """

    def __init__(
        self,
        text: nn.Module,
        tokenizer: Any,
        logit_scale: float,
        train_text: bool = False,
        train_logit_scale: bool = True,
        source: str | None = None,
    ) -> None:
        super().__init__()
        self.text = text
        self.tokenizer = tokenizer
        self.train_text = bool(train_text)
        self.source = source
        self.text.requires_grad_(self.train_text)
        self.logit_scale = nn.Parameter(
            torch.tensor(float(logit_scale)), requires_grad=bool(train_logit_scale)
        )
        self.train(self.training)

    @classmethod
    def from_tower(
        cls,
        tower: nn.Module,
        train_text: bool = False,
        train_logit_scale: bool = True,
        **kwargs: Any,
    ) -> OpenClipTextHead:
        """Loads the text side of the open_clip model a tower's config names.

        Args:
            tower: An ``OpenClipVisionModel``; ``config.open_clip_name`` is read.
            train_text: See the class.
            train_logit_scale: See the class.
            **kwargs: Passed to ``open_clip.create_model``.

        Raises:
            ValueError: When the config names no open_clip model, when the text tower's width
                is not the tower's projection width, or for a SigLIP-style model (a
                ``logit_bias``: its loss is the sigmoid one, not CLIP's).
        """
        import open_clip

        from radixpert.models.open_clip_tower import create_open_clip, open_clip_model_name

        name = tower.config.open_clip_name
        if not name:
            raise ValueError(
                "the open_clip tower's config records no open_clip_name: load the tower with "
                "load_open_clip_tower(name) so the contrastive stage can find its text tower"
            )
        clip = create_open_clip(name, **kwargs)
        if getattr(clip, "logit_bias", None) is not None:
            raise ValueError(f"{name} has a logit_bias (sigmoid loss); only CLIP's loss is here")
        width = int(clip.text.output_dim)
        if width != int(tower.config.projection_dim):
            raise ValueError(
                f"{name}: text tower width {width} != image projection width "
                f"{tower.config.projection_dim} (vision_config.projection_dim)"
            )
        tokenizer = open_clip.get_tokenizer(open_clip_model_name(name))
        head = cls(
            clip.text,
            tokenizer,
            float(clip.logit_scale.detach()),
            train_text=train_text,
            train_logit_scale=train_logit_scale,
            source=str(name),
        )
        logger.info(
            "contrastive text tower from %s (%s, %.1f M parameters, logit_scale %.3f)",
            name,
            "trained" if train_text else "frozen",
            sum(p.numel() for p in clip.text.parameters()) / 1e6,
            float(head.logit_scale.detach()),
        )
        return head

    def train(self, mode: bool = True) -> OpenClipTextHead:
        """Sets the mode; a frozen text tower stays in eval (no dropout), as open_clip's lock."""
        super().train(mode)
        if not self.train_text:
            self.text.eval()
        return self

    @property
    def pad_token_id(self) -> int:
        """The text tower's padding id (open_clip's text tower masks these positions)."""
        return int(self.text.config.pad_token_id)

    def tokenize(self, reports: Sequence[str], max_length: int) -> dict[str, Tensor]:
        """open_clip's tokenization (its context length, or ``max_length`` if shorter)."""
        length = min(int(max_length), int(self.tokenizer.context_length))
        ids = self.tokenizer(list(reports), context_length=length)
        return {"input_ids": ids, "attention_mask": (ids != self.pad_token_id).long()}

    def forward(self, model: Any, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(image, text) embeddings, (B, projection width) each: the tower's pooled output
        through open_clip's visual projection, and the text tower's projected output.

        Raises:
            ValueError: When ``input_ids`` are not this tokenizer's (made without the head).
        """
        tower, _ = _llava_parts(model)
        param = next(tower.parameters())
        image = tower.get_image_features(batch["pixel_values"].to(param.device, param.dtype))
        device = next(self.text.parameters()).device
        ids = batch["input_ids"].to(device)
        cls_id = getattr(self.tokenizer.tokenizer, "cls_token_id", None)
        if cls_id is not None and not bool((ids[:, 0] == cls_id).all()):
            raise ValueError(
                f"input_ids do not start with the text tower's [CLS] ({cls_id}): make the batch "
                "with contrastive_batch(..., head=head) so the open_clip tokenizer is used"
            )
        return image, self.text(ids).to(image.dtype)


def is_open_clip_tower(tower: nn.Module) -> bool:
    """Whether a vision tower is radixpert's open_clip tower (it has its own text tower)."""
    from radixpert.models.open_clip_tower import MODEL_TYPE

    return getattr(getattr(tower, "config", None), "model_type", None) == MODEL_TYPE


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
    processor: Any,
    images: Sequence[Any],
    reports: Sequence[str],
    max_length: int = 256,
    head: ContrastiveHead | None = None,
) -> dict[str, Tensor]:
    """Model inputs for one batch of image-report pairs.

    Args:
        processor: A ``RadProcessor`` (image transform and tokenizer of the model).
        images: Radiographs, anything ``processor.preprocess_image`` accepts (paths, arrays).
        reports: One report per image, plain text without ``<image>``.
        max_length: Reports are truncated to this many tokens.
        head: The contrastive head (DDP wrapper allowed). One with a tokenizer of its own
            (``OpenClipTextHead``) tokenizes the reports; without a head, or with a
            ``LanguageModelTextHead``, the processor's tokenizer does.

    Returns:
        ``pixel_values`` (B, C, H, W), and ``input_ids`` and ``attention_mask`` (B, L):
        right-padded to the longest report by the processor's tokenizer, or padded to the
        context length by open_clip's.

    Raises:
        ValueError: On an empty batch, a count mismatch, an empty report, a report holding the
            image token, or a tokenizer without a pad token.
    """
    if len(images) != len(reports) or not reports:
        raise ValueError(f"need as many reports as images (>= 1): {len(images)}, {len(reports)}")
    image_token = getattr(getattr(processor, "config", None), "image_token", "<image>")
    for i, report in enumerate(reports):
        if not report.strip():
            raise ValueError(f"report {i} is empty")
        if image_token in report:
            raise ValueError(f"report {i} contains the image token {image_token!r}")
    pixel_values = torch.stack([processor.preprocess_image(image) for image in images])
    text = unwrap_model(head).tokenize(reports, max_length) if head is not None else None
    if text is None:  # the language model's tokenizer
        tokenizer = processor.tokenizer
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token")
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


def contrastive_loss(model: Any, head: ContrastiveHead, batch: Mapping[str, Tensor]) -> Tensor:
    """CLIP loss of one batch (``contrastive_batch`` output) with the head's text side.

    Gradients reach whatever requires them: the tower (and its open_clip projection), the
    head's projections or temperature, and the text tower only if it was left trainable.
    """
    image, text = head(model, batch)
    return clip_loss(image, text, unwrap_model(head).logit_scale)


@torch.no_grad()
def retrieval_accuracy(model: Any, head: ContrastiveHead, batch: Mapping[str, Tensor]) -> float:
    """Image -> text top-1 accuracy within the batch: how often an image's best report is its own.

    Runs in the model's current mode (call ``model.eval()`` for validation).
    """
    image, text = head(model, batch)
    similarity = F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    targets = torch.arange(similarity.shape[0], device=similarity.device)
    return float((similarity.argmax(dim=1) == targets).float().mean())


__all__ = [
    "HEAD_FILE",
    "MAX_LOGIT_SCALE",
    "ContrastiveHead",
    "LanguageModelTextHead",
    "OpenClipTextHead",
    "clip_loss",
    "contrastive_batch",
    "contrastive_loss",
    "effective_scale",
    "image_features",
    "is_open_clip_tower",
    "retrieval_accuracy",
    "text_features",
    "unwrap_model",
]
