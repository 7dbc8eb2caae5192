"""The llava family on tiny random-init models: parity with transformers, HCF wiring, a
training step, save/reload and generation, and trainability settings."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
)

from radixpert.models.llava import (
    HCF_MODEL_TYPE,
    TINY_IMAGE_TOKEN,
    HCFLlavaForConditionalGeneration,
    build_llava,
    load_llava,
    register_auto_classes,
    tiny_llava,
    tiny_text_config,
)
from radixpert.models.trainability import LLAVA_COMPONENTS, ComponentSpec, apply_trainability
from radixpert.models.vision import tiny_vision_config

IMAGE_TOKENS = 16  # 32 px / patch 8, CLS dropped
PROMPT_END = 1 + IMAGE_TOKENS + 4  # <bos>, image tokens, 4 prompt tokens; the answer follows
SEQ = PROMPT_END + 6


def _model(connector: str, seed: int = 0):
    torch.manual_seed(seed)
    return tiny_llava(connector)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two samples: <bos> <image>x16 prompt(4) answer(6); the second has 2 padded positions."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, TINY_IMAGE_TOKEN, (2, SEQ), generator=gen)
    ids[:, 0] = 1
    ids[:, 1 : 1 + IMAGE_TOKENS] = TINY_IMAGE_TOKEN
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    ids[1, -2:] = 0
    labels = ids.clone()
    labels[:, :PROMPT_END] = -100
    labels[mask == 0] = -100
    pixels = torch.randn(2, 3, 32, 32, generator=gen)
    prompt = torch.zeros_like(mask, dtype=torch.bool)
    prompt[:, :PROMPT_END] = True  # what RadProcessor marks: everything before the answer
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels,
            "prompt_mask": prompt}  # fmt: skip


def _prompt(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        "input_ids": batch["input_ids"][:, :PROMPT_END],
        "attention_mask": batch["attention_mask"][:, :PROMPT_END],
        "pixel_values": batch["pixel_values"],
    }


def test_mlp_matches_transformers_llava() -> None:
    ours = _model("mlp").eval()
    assert type(ours) is LlavaForConditionalGeneration
    reference = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=CLIPVisionConfig(
                image_size=32,
                patch_size=8,
                hidden_size=32,
                num_hidden_layers=4,
                num_attention_heads=2,
                intermediate_size=64,
            ),
            text_config=tiny_text_config(),
            image_token_index=TINY_IMAGE_TOKEN,
        )
    ).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    batch = _batch()
    with torch.no_grad():
        expected = reference(**batch)
        got = ours(**batch)
    assert ours.config.image_seq_length == IMAGE_TOKENS
    assert torch.equal(got.logits, expected.logits)
    assert torch.equal(got.loss, expected.loss)


def test_hcf_forward_backward_reaches_the_connector() -> None:
    model = _model("hcf")
    assert model.config.model_type == HCF_MODEL_TYPE
    assert model.config.vision_feature_layer == [1, 3, 4]
    out = model(**_batch())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    hcf = model.model.multi_modal_projector
    for name, param in hcf.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    gates = model.last_gate_weights
    assert gates.shape == (2, 3) and not gates.requires_grad
    assert torch.allclose(gates.sum(dim=1), torch.ones(2))
    assert torch.cat(list(out.image_outputs.pooler_output)).shape == (2 * IMAGE_TOKENS, 32)


def _fused(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The HCF connector's output h* for ``batch``, (image tokens of all images, text hidden)."""
    return torch.cat(list(model(**batch).image_outputs.pooler_output))


def test_hcf_reads_the_prompt_but_not_the_answer() -> None:
    model = _model("hcf").eval()
    batch = _batch()
    with torch.no_grad():
        base = _fused(model, batch)
        # Another answer, scored without labels (as an evaluation scores a report): the
        # processor's prompt_mask, not the labels, keeps the answer out of the image features.
        other_answer = dict(batch, input_ids=batch["input_ids"].clone())
        other_answer["input_ids"][0, PROMPT_END:] = 5
        other_answer.pop("labels")
        other_prompt = dict(batch, input_ids=batch["input_ids"].clone())
        other_prompt["input_ids"][0, PROMPT_END - 1] = 7
        assert torch.equal(_fused(model, other_answer), base)
        changed = _fused(model, other_prompt)
    first, second = changed[:IMAGE_TOKENS], changed[IMAGE_TOKENS:]
    assert not torch.allclose(first, base[:IMAGE_TOKENS])
    assert torch.equal(second, base[IMAGE_TOKENS:])


def test_hcf_refuses_labels_without_the_prompt_mask() -> None:
    model = _model("hcf")
    batch = _batch()
    batch.pop("prompt_mask")
    with pytest.raises(ValueError, match="labels without prompt_mask"):
        model(**batch)
    batch.pop("labels")  # a generation input: every attended text token is prompt
    assert model(**_prompt(batch)).logits.shape[1] == PROMPT_END


def test_hcf_refuses_mismatched_images() -> None:
    model = _model("hcf")
    batch = _batch()
    ids = batch["input_ids"].clone()
    ids[1, 1 : 1 + IMAGE_TOKENS] = 4  # the second sample has no <image>, yet two images come
    with pytest.raises(ValueError, match="2 images but image tokens for 1"):
        model(**dict(batch, input_ids=ids))
    ids[1, 1:4] = TINY_IMAGE_TOKEN
    with pytest.raises(ValueError, match="not multiples of image_seq_length=16"):
        model(**dict(batch, input_ids=ids))


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2", "vit"])
def test_hcf_runs_on_every_vision_tower(kind: str) -> None:
    torch.manual_seed(0)
    model = build_llava(
        tiny_vision_config(kind),
        tiny_text_config(),
        "hcf",
        hcf_layers=[2, -1],
        image_token_index=TINY_IMAGE_TOKEN,
        hcf_num_heads=4,
        hcf_gate_hidden=16,
    )
    assert model.config.image_seq_length == IMAGE_TOKENS
    out = model(**_batch())
    assert torch.isfinite(out.loss)
    assert model.last_gate_weights.shape == (2, 2)


def test_hcf_with_another_language_model() -> None:
    torch.manual_seed(0)
    text = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = build_llava(
        tiny_vision_config("clip"), text, "hcf", image_token_index=TINY_IMAGE_TOKEN, hcf_num_heads=4
    )
    out = model(**_batch())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.model.multi_modal_projector.gate[0].weight.grad is not None


def test_build_llava_rejects_bad_settings() -> None:
    vision, text = tiny_vision_config("clip"), tiny_text_config()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_llava(vision, text)  # default image token 32000, vocab 64
    with pytest.raises(ValueError, match="mlp connector"):
        build_llava(vision, text, "mlp", image_token_index=63, hcf_num_heads=4)
    with pytest.raises(ValueError, match="unknown connector"):
        build_llava(vision, text, "qformer", image_token_index=63)
    with pytest.raises(ValueError, match="outside the vision tower"):
        build_llava(vision, text, "hcf", hcf_layers=[2, 5], image_token_index=63)


@pytest.mark.slow
@pytest.mark.parametrize("connector", ["mlp", "hcf"])
def test_train_step_save_reload_generate(connector: str, tmp_path) -> None:
    model = _model(connector)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(**_batch()).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("model.multi_modal_projector.") for n in changed)
    assert any(n.startswith("model.language_model.") for n in changed)

    model.eval()
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    # Plain Llava is saved in its hub layout (keys renamed), so compare counts here.
    assert len(saved) == len(model.state_dict())
    reloaded = load_llava(tmp_path).eval()
    assert type(reloaded) is type(model)

    batch = _batch(1)
    prompt = _prompt(batch)
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, model(**batch).logits)
        first = model.generate(**prompt, max_new_tokens=6, do_sample=False)
        second = reloaded.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert first.shape[1] > PROMPT_END
    assert torch.equal(first, second)
    if connector == "hcf":
        assert isinstance(reloaded, HCFLlavaForConditionalGeneration)
        assert any(k.startswith("model.multi_modal_projector.fusion.") for k in saved)
        register_auto_classes()
        auto = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            assert torch.equal(auto(**batch).logits, model(**batch).logits)
        assert reloaded.last_gate_weights.shape == (2, 3)


def test_hcf_generation_matches_forward() -> None:
    """The first generated token is the argmax of a plain forward on the prompt."""
    model = _model("hcf").eval()
    prompt = _prompt(_batch(2))
    prompt["attention_mask"] = torch.ones_like(prompt["input_ids"])
    with torch.no_grad():
        logits = model(**prompt).logits[:, -1]
        forward_gates = model.last_gate_weights
        generated = model.generate(**prompt, max_new_tokens=1, do_sample=False)
    assert torch.equal(generated[:, -1], logits.argmax(-1))
    assert torch.equal(model.last_gate_weights, forward_gates)


def test_apply_trainability_hcf_connector_full_lm_lora() -> None:
    model = _model("hcf")
    settings = {
        "vision_tower": ComponentSpec("frozen"),
        "connector": ComponentSpec("full"),
        "language_model": ComponentSpec("lora", rank=4),
    }
    peft_model = apply_trainability(model, settings, LLAVA_COMPONENTS)
    trainable = {n for n, p in peft_model.base_model.model.named_parameters() if p.requires_grad}
    connector = {
        n for n, _ in model.named_parameters() if n.startswith("model.multi_modal_projector.")
    }
    assert connector <= trainable
    others = trainable - connector
    assert others and all(".lora_" in n and "language_model" in n for n in others)
    out = peft_model(**_batch())
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
    assert peft_model.last_gate_weights.shape == (2, 3)


def test_pretrained_tower_and_language_model_are_loaded(tmp_path):
    import torch
    from transformers import CLIPVisionModel, LlamaForCausalLM

    from radixpert.models.llava import build_llava_pretrained, tiny_llava, tiny_text_config

    ref = tiny_llava("mlp")
    vision = CLIPVisionModel(ref.config.vision_config)
    vision.save_pretrained(tmp_path / "vision")
    text = LlamaForCausalLM(tiny_text_config())
    text.save_pretrained(tmp_path / "text")
    model = build_llava_pretrained(tmp_path / "vision", tmp_path / "text", connector="hcf")
    for name, p in vision.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], p), name
    assert torch.equal(model.lm_head.weight, text.lm_head.weight)
    emb = model.model.language_model.embed_tokens.weight
    assert torch.equal(emb, text.model.embed_tokens.weight)
    assert model.config.image_token_index == text.config.vocab_size - 1
