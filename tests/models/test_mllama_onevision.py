"""Mllama (plain and HCF) and LLaVA-OneVision on tiny random-init models: parity with
transformers, HCF wiring at the cross-attention states, a training step, save/reload and
generation, and trainability settings."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, MllamaForConditionalGeneration

from radixpert.models.mllama import (
    HCF_MODEL_TYPE,
    TINY_IMAGE_TOKEN,
    HCFMllamaForConditionalGeneration,
    build_mllama,
    default_hcf_groups,
    load_mllama,
    register_auto_classes,
    split_vision_output,
    tiny_mllama,
    tiny_mllama_config,
)
from radixpert.models.onevision import (
    TINY_IMAGE_TOKEN as OV_IMAGE_TOKEN,
)
from radixpert.models.onevision import (
    build_onevision,
    image_token_count,
    tiny_onevision,
    tiny_onevision_config,
)
from radixpert.models.trainability import (
    MLLAMA_COMPONENTS,
    ONEVISION_COMPONENTS,
    ComponentSpec,
    apply_trainability,
)

PROMPT_END = 6  # <bos> <|image|> prompt(4); the answer follows
SEQ = PROMPT_END + 6


def _mllama(hcf: bool, seed: int = 0) -> MllamaForConditionalGeneration:
    torch.manual_seed(seed)
    return tiny_mllama(hcf)


def _mllama_batch(
    seed: int = 0, prompt_only: bool = False, hcf: bool = True
) -> dict[str, torch.Tensor]:
    """Two samples, one image of one real tile (of 4) each; the second has 2 padded positions.
    For an HCF model, with the ``prompt_mask`` the processor gives (all before the answer)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (2, SEQ), generator=gen)
    ids[:, 0] = 1
    ids[:, 1] = TINY_IMAGE_TOKEN
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    ids[1, -2:] = 0
    labels = ids.clone()
    labels[:, :PROMPT_END] = -100
    labels[mask == 0] = -100
    tiles = torch.zeros(2, 1, 4, dtype=torch.long)
    tiles[:, :, 0] = 1
    xmask = torch.zeros(2, SEQ, 1, 4, dtype=torch.long)
    xmask[:, 1:, :, 0] = 1  # text from the image token on attends to the real tile
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "pixel_values": torch.randn(2, 1, 4, 3, 32, 32, generator=gen),
        "aspect_ratio_ids": torch.ones(2, 1, dtype=torch.long),
        "aspect_ratio_mask": tiles,
        "cross_attention_mask": xmask,
    }
    if hcf:
        batch["prompt_mask"] = torch.arange(SEQ).expand(2, SEQ) < PROMPT_END
    if prompt_only:
        for key in ("input_ids", "attention_mask", "cross_attention_mask"):
            batch[key] = batch[key][:, :PROMPT_END]
        del batch["labels"]
        batch.pop("prompt_mask", None)
    return batch


def test_default_groups_and_split() -> None:
    assert default_hcf_groups([3, 7, 15, 23, 30]) == [0, 2, 5]  # layer 3, layer 15, output
    assert default_hcf_groups([0, 2]) == [0, 1, 2]
    # Rebuild the vision output the way Mllama concatenates it and split it back.
    last, first, second = (torch.randn(2, 5, 4) for _ in range(3))
    inter = torch.stack([first, second], dim=-1).reshape(2, 5, -1)
    parts = split_vision_output(torch.cat([last, inter], dim=-1), 4)
    for got, want in zip(parts, [first, second, last], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_build_mllama_rejects_bad_settings() -> None:
    config = tiny_mllama_config()
    config.vision_config.vision_output_dim = 32
    with pytest.raises(ValueError, match="vision_output_dim"):
        build_mllama(config)
    with pytest.raises(ValueError, match="unknown HCF options"):
        build_mllama(tiny_mllama_config(), hcf={"layers": [0]})


@pytest.mark.slow
@torch.no_grad()
def test_plain_mllama_equals_transformers() -> None:
    model = _mllama(False).eval()
    assert type(model) is MllamaForConditionalGeneration
    reference = MllamaForConditionalGeneration(model.config).eval()
    reference.load_state_dict(model.state_dict())
    batch = _mllama_batch(hcf=False)
    torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=0, atol=0)


@torch.no_grad()
@pytest.mark.parametrize("hcf", [False, True])
def test_image_changes_logits(hcf: bool) -> None:
    model = _mllama(hcf).eval()
    batch = _mllama_batch(hcf=hcf)
    other = dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))
    diff = (model(**batch).logits - model(**other).logits)[:, 1:].abs().max()
    assert diff > 1e-4


def test_hcf_forward_backward_gradients_and_gates() -> None:
    model = _mllama(True)
    assert isinstance(model, HCFMllamaForConditionalGeneration)
    assert model.config.model_type == HCF_MODEL_TYPE
    out = model(**_mllama_batch())
    out.loss.backward()
    weights = model.last_gate_weights
    assert weights is not None and weights.shape == (2, 3)  # (images, levels)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    hcf = model.model.multi_modal_projector
    for name, param in hcf.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.model.vision_model.patch_embedding.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_hcf_does_not_read_the_answer() -> None:
    model = _mllama(True).eval()
    batch = _mllama_batch()
    model(**batch)
    before = model.last_gate_weights
    changed = batch["input_ids"].clone()
    changed[:, PROMPT_END:] = torch.randint(3, 64, changed[:, PROMPT_END:].shape)
    scored = {k: v for k, v in batch.items() if k != "labels"}  # scoring without labels
    model(**dict(scored, input_ids=changed))
    torch.testing.assert_close(model.last_gate_weights, before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="labels without prompt_mask"):
        model(**{k: v for k, v in batch.items() if k != "prompt_mask"})


@pytest.mark.slow
@pytest.mark.parametrize("hcf", [False, True])
def test_mllama_training_step(hcf: bool) -> None:
    model = _mllama(hcf)
    batch = _mllama_batch(hcf=hcf)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    assert model(**batch).loss < loss


@pytest.mark.slow
@torch.no_grad()
def test_hcf_mllama_save_reload_logits_and_generation(tmp_path) -> None:
    model = _mllama(True).eval()
    model.save_pretrained(tmp_path)
    reloaded = load_mllama(tmp_path).eval()
    assert isinstance(reloaded, HCFMllamaForConditionalGeneration)
    batch = _mllama_batch()
    torch.testing.assert_close(model(**batch).logits, reloaded(**batch).logits, rtol=0, atol=0)
    register_auto_classes()
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(auto, HCFMllamaForConditionalGeneration)
    prompt = _mllama_batch(prompt_only=True)
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    tokens = model.generate(**prompt, **kwargs)
    assert tokens.shape == (2, PROMPT_END + 5)
    assert torch.equal(tokens, reloaded.generate(**prompt, **kwargs))
    assert torch.equal(tokens, auto.generate(**prompt, **kwargs))


def _onevision(seed: int = 0):
    torch.manual_seed(seed)
    return tiny_onevision()


def _onevision_batch(model, seed: int = 0) -> tuple[dict[str, torch.Tensor], int]:
    """<bos> <image>xN prompt(3) answer(5); base view + one 32x32 tile per image."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 2, 3, 32, 32, generator=gen)
    sizes = torch.tensor([[32, 32], [32, 32]])
    count = image_token_count(model, pixels, sizes)[0]
    prompt_end = 1 + count + 3
    ids = torch.randint(3, 60, (2, prompt_end + 5), generator=gen)
    ids[:, 0] = 1
    ids[:, 1 : 1 + count] = OV_IMAGE_TOKEN
    labels = ids.clone()
    labels[:, :prompt_end] = -100
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "pixel_values": pixels,
        "image_sizes": sizes,
    }
    return batch, prompt_end


def test_build_onevision_rejects_token_outside_vocab() -> None:
    config = tiny_onevision_config()
    config.image_token_index = 64
    with pytest.raises(ValueError, match="image_token_index"):
        build_onevision(config)


@pytest.mark.slow
def test_onevision_train_save_reload_generate(tmp_path) -> None:
    model = _onevision()
    batch, prompt_end = _onevision_batch(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        assert model(**batch).loss < loss
        model.save_pretrained(tmp_path)
        reloaded = type(model).from_pretrained(tmp_path).eval()
        torch.testing.assert_close(model(**batch).logits, reloaded(**batch).logits, rtol=0, atol=0)
        prompt = {
            "input_ids": batch["input_ids"][:, :prompt_end],
            "attention_mask": batch["attention_mask"][:, :prompt_end],
            "pixel_values": batch["pixel_values"],
            "image_sizes": batch["image_sizes"],
        }
        kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
        tokens = model.generate(**prompt, **kwargs)
        assert tokens.shape == (2, prompt_end + 5)
        assert torch.equal(tokens, reloaded.generate(**prompt, **kwargs))


@pytest.mark.slow
def test_onevision_trainability_gradients_only_where_allowed() -> None:
    model = _onevision()
    batch, _ = _onevision_batch(model)
    settings = {
        "vision_tower": ComponentSpec("frozen"),
        "connector": ComponentSpec("full"),
        "language_model": ComponentSpec("lora", rank=4, dropout=0.0),
    }
    wrapped = apply_trainability(model, settings, ONEVISION_COMPONENTS)
    wrapped(**batch).loss.backward()
    inner = wrapped.get_base_model()
    seen = {"lora": False, "connector": False}
    for name, param in inner.named_parameters():
        if name.startswith("model.vision_tower"):
            assert not param.requires_grad and param.grad is None, name
        elif name.startswith(("model.multi_modal_projector", "model.image_newline")):
            assert param.requires_grad and param.grad is not None, name
            seen["connector"] = True
        elif ".lora_A." in name or ".lora_B." in name:
            assert name.startswith("model.language_model"), name
            assert param.requires_grad and param.grad is not None, name
            seen["lora"] = True
        else:
            assert not param.requires_grad and param.grad is None, name
    assert all(seen.values())


@pytest.mark.slow
@torch.no_grad()
def test_hcf_base_model_forward_and_single_level() -> None:
    model = _mllama(True).eval()
    batch = _mllama_batch()
    del batch["labels"]
    hidden = model.model(**batch).last_hidden_state
    torch.testing.assert_close(model.lm_head(hidden), model(**batch).logits, rtol=0, atol=0)
    torch.manual_seed(0)
    single = build_mllama(tiny_mllama_config(), hcf={"groups": [2], "num_heads": 4}).eval()
    single(**batch)
    assert single.last_gate_weights.shape == (2, 1)


def test_hcf_mllama_trainability() -> None:
    model = _mllama(True)
    settings = {
        "vision_tower": ComponentSpec("frozen"),
        "connector": ComponentSpec("full"),
        "language_model": ComponentSpec("lora", rank=4, dropout=0.0),
    }
    wrapped = apply_trainability(model, settings, MLLAMA_COMPONENTS)
    wrapped(**_mllama_batch()).loss.backward()
    for name, param in wrapped.get_base_model().named_parameters():
        lora = ".lora_A." in name or ".lora_B." in name
        if name.startswith("model.multi_modal_projector") or lora:
            assert not name.startswith("model.vision_model"), name
            assert param.requires_grad and param.grad is not None, name
        else:
            assert not param.requires_grad and param.grad is None, name
    cross = "model.language_model.layers.1.cross_attn.q_proj.lora_B.default.weight"
    assert dict(wrapped.get_base_model().named_parameters())[cross].grad.abs().sum() > 0
