"""Contrastive pretraining: the CLIP loss against a hand computation, feature shapes and
padding invariance on the tiny llavas (plain, HCF, under LoRA), learning on phantoms, and the
open_clip text side (checkpoint text tower, tokenizer and temperature) of a BiomedCLIP tower."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from radixpert.models.llava import tiny_llava
from radixpert.train.contrastive import (
    MAX_LOGIT_SCALE,
    ContrastiveHead,
    LanguageModelTextHead,
    OpenClipTextHead,
    clip_loss,
    contrastive_batch,
    contrastive_loss,
    effective_scale,
    image_features,
    retrieval_accuracy,
    text_features,
)

IMAGE_EMB = [[0.3, -1.2, 0.5], [1.0, 0.2, -0.4], [-0.7, 0.9, 1.1], [0.05, 0.6, -0.8]]
TEXT_EMB = [[0.1, -0.9, 0.8], [1.3, -0.2, 0.1], [-0.2, 1.5, 0.4], [0.9, 0.3, -0.6]]


def _reference_clip_loss(image: np.ndarray, text: np.ndarray, scale: float) -> float:
    """CLIP's symmetric InfoNCE written out in float64 numpy."""
    image = image / np.linalg.norm(image, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    logits = scale * image @ text.T

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    diag = np.arange(len(image))
    per_image = -log_softmax(logits)[diag, diag].mean()
    per_text = -log_softmax(logits.T)[diag, diag].mean()
    return float((per_image + per_text) / 2)


# ---------------------------------------------------------------- loss


@pytest.mark.parametrize("scale", [1.0, 1 / 0.07, 30.0])
def test_clip_loss_matches_hand_computation(scale: float) -> None:
    image, text = np.array(IMAGE_EMB), np.array(TEXT_EMB)
    got = clip_loss(
        torch.tensor(image, dtype=torch.float32),
        torch.tensor(text, dtype=torch.float32),
        torch.tensor(math.log(scale)),
    )
    assert got.shape == ()
    assert float(got) == pytest.approx(_reference_clip_loss(image, text, scale), abs=1e-6)


def test_clip_loss_near_zero_for_matching_embeddings_and_symmetric() -> None:
    emb = torch.eye(4) + 0.1
    assert float(clip_loss(emb, emb.clone(), MAX_LOGIT_SCALE)) < 1e-6
    image, text = torch.tensor(IMAGE_EMB), torch.tensor(TEXT_EMB)
    forward = clip_loss(image, text, 2.0)
    assert float(forward) > 0.1
    assert float(clip_loss(text, image, 2.0)) == pytest.approx(float(forward), abs=1e-6)


def test_clip_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        clip_loss(torch.zeros(3, 4), torch.zeros(2, 4), 0.0)


def test_logit_scale_init_and_clamp() -> None:
    head = LanguageModelTextHead(8, 6, embed_dim=4)
    assert head.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert head.scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert head.image_proj.bias is None and head.text_proj.bias is None
    assert head.image_proj.weight.shape == (4, 8) and head.text_proj.weight.shape == (4, 6)
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    assert head.scale.item() == pytest.approx(100.0, rel=1e-6)
    assert float(effective_scale(10.0)) == pytest.approx(100.0, rel=1e-6)
    # The clamp is in the loss too: log-scale 10 computes with scale 100, not e^10.
    image, text = np.array(IMAGE_EMB), np.array(TEXT_EMB)
    got = clip_loss(torch.tensor(image), torch.tensor(text), head.logit_scale)
    assert got.item() == pytest.approx(_reference_clip_loss(image, text, 100.0), abs=1e-5)


# ---------------------------------------------------------------- features


class _DDPLike(nn.Module):
    """What accelerate/DDP wrapping looks like from outside: the model under ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def _lora(model: Any) -> Any:
    from radixpert.models.trainability import LLAVA_COMPONENTS, ComponentSpec, apply_trainability

    components = {
        "vision_tower": ComponentSpec("full"),
        "connector": ComponentSpec("frozen"),
        "language_model": ComponentSpec("lora", rank=4, dropout=0.0),
    }
    return apply_trainability(model, components, LLAVA_COMPONENTS)


@pytest.mark.slow
@pytest.mark.parametrize("connector", ["mlp", "hcf"])
def test_feature_shapes_wrappers_and_padding(connector: str) -> None:
    torch.manual_seed(0)
    model = tiny_llava(connector).eval()
    config = model.config
    pixels = torch.randn(3, 3, 32, 32)
    ids = torch.tensor([[5, 9, 12, 7, 0, 0], [8, 4, 0, 0, 0, 0], [3, 3, 6, 10, 11, 13]])
    mask = (ids != 0).long()

    img = image_features(model, pixels)
    txt = text_features(model, ids, mask)
    assert img.shape == (3, config.vision_config.hidden_size)
    assert txt.shape == (3, config.text_config.hidden_size)
    # CLIP's pooler_output is the CLS token after post_layernorm (transformers 5).
    tower = model.model.vision_tower
    cls = tower.post_layernorm(tower(pixel_values=pixels).last_hidden_state[:, 0])
    torch.testing.assert_close(img, cls)

    # The same text, right-padded to other lengths (alone or in a longer batch), pools the same.
    alone = text_features(model, ids[1:2, :2], mask[1:2, :2])
    padded = torch.cat([ids[1:2], torch.zeros(1, 5, dtype=torch.long)], dim=1)
    longer = text_features(model, padded, (padded != 0).long())
    torch.testing.assert_close(alone, txt[1:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(longer, txt[1:2], atol=1e-5, rtol=0)

    head = ContrastiveHead.for_model(model, embed_dim=16)
    assert isinstance(head, LanguageModelTextHead)
    assert head.image_proj.in_features == config.vision_config.hidden_size
    assert head.text_proj.in_features == config.text_config.hidden_size

    for wrapped in (_DDPLike(model), _DDPLike(_lora(model))):  # LoRA B = 0: same outputs
        torch.testing.assert_close(image_features(wrapped, pixels), img)
        torch.testing.assert_close(text_features(wrapped, ids, mask), txt)
        assert ContrastiveHead.for_model(wrapped, embed_dim=16).text_proj.in_features == 32


def test_text_features_refuse_empty_rows_and_non_llava() -> None:
    model = tiny_llava("mlp")
    with pytest.raises(ValueError, match="no tokens"):
        text_features(model, torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [0] * 3]))
    with pytest.raises(TypeError, match="llava-family"):
        image_features(nn.Linear(2, 2), torch.zeros(1, 3, 32, 32))


# ---------------------------------------------------------------- learning on phantoms


def _tokenizer(texts: list[str]) -> Any:
    """A tiny BPE trained on the reports: vocab 63 + ``<image>`` (id 63, as tiny_llava expects)."""
    from radixpert.models.tokenizers import train_bpe

    return train_bpe(texts * 10, 63, ["<pad>", "<s>", "</s>", "<unk>"], ["<image>"])


def _phantom_batch(tmp_path: Path, model: Any, n: int = 8) -> tuple[Any, dict[str, torch.Tensor]]:
    from radixpert.data.phantoms import generate_phantoms
    from radixpert.models.processor import RadProcessor

    studies = generate_phantoms(16, tmp_path / "ph", size=64)
    processor = RadProcessor.from_model(model, _tokenizer([s.findings for s in studies]))
    chosen = studies[:n]
    images = [tmp_path / "ph" / s.images[0].path for s in chosen]
    batch = contrastive_batch(processor, images, [s.findings for s in chosen], max_length=64)
    return processor, batch


def test_contrastive_batch_layout(tmp_path: Path) -> None:
    model = tiny_llava("mlp")
    processor, batch = _phantom_batch(tmp_path, model, n=4)
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 4 and ids.shape[1] <= 64
    assert not bool((ids == processor.image_token_id).any())
    lengths = mask.sum(dim=1)
    for row, length in zip(mask, lengths, strict=True):  # right padding: ones, then zeros
        assert row[:length].all() and not row[length:].any()
    assert bool((ids[mask == 0] == processor.tokenizer.pad_token_id).all())
    with pytest.raises(ValueError, match="image token"):
        contrastive_batch(processor, ["x"], ["<image> no effusion"])
    with pytest.raises(ValueError, match="as many"):
        contrastive_batch(processor, ["x", "y"], ["no effusion"])


@pytest.mark.slow
@pytest.mark.parametrize("connector", ["mlp", "hcf"])
def test_training_tower_retrieves_reports_and_leaves_lm_untouched(
    tmp_path: Path, connector: str
) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = tiny_llava(connector)
    _, batch = _phantom_batch(tmp_path, model)
    language_model = model.model.language_model
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(True)
    lm_before = {k: v.clone() for k, v in language_model.state_dict().items()}
    head = ContrastiveHead.for_model(model, embed_dim=32)
    params = [*model.model.vision_tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    model.train()
    losses = []
    for _ in range(30):
        loss = contrastive_loss(model, head, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    accuracy = retrieval_accuracy(model, head, batch)

    assert losses[0] > math.log(8) * 0.5  # chance is log(8) = 2.08
    assert losses[-1] < 0.5 * losses[0], losses
    assert accuracy >= 0.75, (accuracy, losses)
    assert all(p.grad is None for p in language_model.parameters())
    for name, value in language_model.state_dict().items():
        assert torch.equal(value, lm_before[name]), name


# ---------------------------------------------------------------- open_clip text side


def _words(texts: list[str]) -> list[str]:
    import re

    return sorted({w for t in texts for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", t.lower())})


@pytest.fixture(scope="module")
def open_clip_llava(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny llava whose tower is a tiny BiomedCLIP-layout open_clip checkpoint's, the
    open_clip model itself, a processor and eight phantom image-report pairs."""
    pytest.importorskip("open_clip")
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from radixpert.data.phantoms import generate_phantoms
    from radixpert.models.llava import TINY_IMAGE_TOKEN, tiny_text_config
    from radixpert.models.open_clip_tower import create_open_clip, load_open_clip_tower
    from radixpert.models.processor import RadProcessor
    from tests.models.test_open_clip_tower import PATCHES, write_tiny_biomedclip

    root = tmp_path_factory.mktemp("contrastive_open_clip")
    studies = generate_phantoms(16, root / "ph", size=64)
    reports = [s.findings for s in studies]
    folder = write_tiny_biomedclip(root, _words(reports))
    tower, _ = load_open_clip_tower(folder)
    config = LlavaConfig(
        vision_config=tower.config,
        text_config=tiny_text_config(),
        image_token_index=TINY_IMAGE_TOKEN,
        vision_feature_layer=-2,
        image_seq_length=PATCHES,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    processor = RadProcessor.from_model(model, _tokenizer(reports))
    chosen = studies[:8]
    return {
        "model": model,
        "clip": create_open_clip(folder).eval(),
        "processor": processor,
        "images": [root / "ph" / s.images[0].path for s in chosen],
        "reports": [s.findings for s in chosen],
    }


def test_open_clip_head_is_the_checkpoints_text_side(open_clip_llava: dict[str, Any]) -> None:
    model, clip = open_clip_llava["model"], open_clip_llava["clip"]
    head = ContrastiveHead.for_model(model)
    assert isinstance(head, OpenClipTextHead)
    reference = clip.text.state_dict()
    for name, value in head.text.state_dict().items():
        assert torch.equal(value, reference[name]), name
    assert head.logit_scale.item() == pytest.approx(3.0)  # the checkpoint's, not log(1/0.07)
    assert head.logit_scale.requires_grad
    assert not any(p.requires_grad for p in head.text.parameters())
    head.train()
    assert head.training and not head.text.training  # a frozen text tower keeps dropout off
    with pytest.raises(ValueError, match="embed_dim"):
        ContrastiveHead.for_model(model, embed_dim=32)

    processor = open_clip_llava["processor"]
    images, reports = open_clip_llava["images"][:4], open_clip_llava["reports"][:4]
    batch = contrastive_batch(processor, images, reports, head=head)
    ids = batch["input_ids"]
    assert ids.shape == (4, 32)  # open_clip pads to its context length
    assert bool((ids[:, 0] == head.tokenizer.tokenizer.cls_token_id).all())
    assert torch.equal(batch["attention_mask"], (ids != 0).long())
    assert torch.equal(contrastive_batch(processor, images, reports, 12, head)["input_ids"],
                       ids[:, :12].clone().index_put_((torch.arange(4), torch.full((4,), 11)),
                                                      torch.tensor(3)))  # fmt: skip
    model.eval()
    with torch.no_grad():
        image, text = head(model, batch)
        torch.testing.assert_close(image, clip.encode_image(batch["pixel_values"]))
        torch.testing.assert_close(text, clip.encode_text(ids))
    with pytest.raises(ValueError, match="head=head"):
        head(model, contrastive_batch(processor, images, reports))  # the LM's tokenizer


def test_open_clip_loss_falls_and_the_text_tower_stays(open_clip_llava: dict[str, Any]) -> None:
    import copy

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = copy.deepcopy(open_clip_llava["model"])
    head = ContrastiveHead.for_model(model)
    text_before = {k: v.clone() for k, v in head.text.state_dict().items()}
    batch = contrastive_batch(
        open_clip_llava["processor"], open_clip_llava["images"], open_clip_llava["reports"],
        head=head,
    )  # fmt: skip
    tower = model.model.vision_tower
    params = [*tower.parameters(), head.logit_scale]
    optimizer = torch.optim.AdamW(params, lr=3e-4)
    model.train()
    head.train()
    losses = []
    for _ in range(40):
        loss = contrastive_loss(model, head, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Below chance (log 8) by a margin: the tower aligned with the frozen text, not just a
    # smaller temperature (which alone can only bring the loss to log 8).
    assert losses[-1] < 0.6 * losses[0] and losses[-1] < 0.75 * math.log(8), losses
    assert tower.visual.head.proj.weight.grad is not None  # open_clip's projection trains
    assert all(p.grad is None for p in head.text.parameters())
    for name, value in head.text.state_dict().items():
        assert torch.equal(value, text_before[name]), name
    model.eval()
    assert retrieval_accuracy(model, head, batch) >= 0.5  # chance is 1/8


def test_open_clip_head_from_biomedclips_hub_name(hub_checkpoint) -> None:
    """The text side of BiomedCLIP by its hub name: BiomedBERT's tokenizer (256 tokens) and the
    checkpoint's text tower and temperature, found from the tower's config alone."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from radixpert.models.llava import TINY_IMAGE_TOKEN, tiny_text_config
    from radixpert.models.open_clip_tower import create_open_clip, load_open_clip_tower
    from tests.models.test_open_clip_tower import BIOMEDCLIP, HUB_PATCHES

    hub_checkpoint(BIOMEDCLIP)
    tower, _ = load_open_clip_tower(f"hf-hub:{BIOMEDCLIP}")
    config = LlavaConfig(
        vision_config=tower.config,
        text_config=tiny_text_config(),
        image_token_index=TINY_IMAGE_TOKEN,
        image_seq_length=HUB_PATCHES,
    )
    head = ContrastiveHead.for_model(LlavaForConditionalGeneration(config))
    clip = create_open_clip(f"hf-hub:{BIOMEDCLIP}")
    assert isinstance(head, OpenClipTextHead) and head.source == f"hf-hub:{BIOMEDCLIP}"
    reference = clip.text.state_dict()
    for name, value in head.text.state_dict().items():
        assert torch.equal(value, reference[name]), name
    assert head.logit_scale.item() == pytest.approx(clip.logit_scale.item())
    assert head.tokenizer.context_length == 256
    assert head.tokenizer.tokenizer.cls_token_id == 2  # BiomedBERT: [PAD] [UNK] [CLS] ...
