"""Per-component trainability on a tiny random-init Llava: gradients, reports, stage transitions."""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from transformers import (  # noqa: E402
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from radixpert._optional import MissingDependency  # noqa: E402
from radixpert.models import trainability as tr  # noqa: E402
from radixpert.models.trainability import (  # noqa: E402
    LLAVA_COMPONENTS,
    MLLAMA_COMPONENTS,
    ComponentSpec,
    apply_trainability,
    format_parameter_report,
    lora_target_regex,
    next_stage,
    parameter_report,
    quantization_config,
)

VOCAB = 64
IMAGE_TOKEN = 63  # inside the vocabulary (the default 32000 is not)
N_IMAGE_TOKENS = 16  # 32 px / patch 8, CLS dropped by the default feature strategy


def tiny_llava() -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    text = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-1,
    )
    return LlavaForConditionalGeneration(config).eval()


def batch() -> dict:
    gen = torch.Generator().manual_seed(1)
    text = torch.randint(0, IMAGE_TOKEN, (2, 8), generator=gen)
    image = torch.full((2, N_IMAGE_TOKENS), IMAGE_TOKEN)
    input_ids = torch.cat([text[:, :2], image, text[:, 2:]], dim=1)
    labels = input_ids.masked_fill(input_ids == IMAGE_TOKEN, -100)
    return {
        "input_ids": input_ids,
        "pixel_values": torch.randn(2, 3, 32, 32, generator=gen),
        "labels": labels,
    }


def stage(vision: str = "frozen", connector: str = "full", lm: str = "lora", rank: int = 64):
    return {
        "vision_tower": ComponentSpec(vision),
        "connector": ComponentSpec(connector),
        "language_model": ComponentSpec(lm, rank=rank),
    }


def base_names(model) -> dict:
    return dict(tr._unwrap(model).named_parameters())


def test_gradients_reach_exactly_the_allowed_parameters():
    model = apply_trainability(tiny_llava(), stage(), LLAVA_COMPONENTS)
    model(**batch()).loss.backward()
    params = base_names(model)
    with_grad = {n for n, p in params.items() if p.grad is not None}
    expected = {
        n
        for n in params
        if n.startswith("model.multi_modal_projector.")
        or (n.startswith("model.language_model.") and (".lora_A." in n or ".lora_B." in n))
    }
    assert with_grad == expected
    assert {n for n, p in params.items() if p.requires_grad} == expected
    # LoRA sits on the LM's attention projections only, never in the vision tower.
    lora_modules = {n.rsplit(".lora_", 1)[0] for n in expected if ".lora_" in n}
    assert lora_modules and all(
        re.fullmatch(r"model\.language_model\.layers\.\d\.self_attn\.[qkvo]_proj", m)
        for m in lora_modules
    )
    assert len(lora_modules) == 2 * 4


def test_lora_on_two_components_shares_one_adapter():
    model = apply_trainability(
        tiny_llava(), stage(vision="lora", connector="frozen"), LLAVA_COMPONENTS
    )
    model(**batch()).loss.backward()
    with_grad = {n for n, p in base_names(model).items() if p.grad is not None}
    assert with_grad and all(".lora_" in n for n in with_grad)
    owners = {n.split(".")[1] for n in with_grad}
    assert owners == {"vision_tower", "language_model"}
    # CLIP names its attention output out_proj: only q/k/v there, 2 layers each.
    assert sum("vision_tower" in n and ".lora_A." in n for n in with_grad) == 2 * 3


def test_all_frozen_and_all_full_need_no_peft_wrapper():
    model = apply_trainability(tiny_llava(), stage("frozen", "frozen", "frozen"), LLAVA_COMPONENTS)
    assert not any(p.requires_grad for p in model.parameters())
    model = apply_trainability(tiny_llava(), stage("full", "full", "full"), LLAVA_COMPONENTS)
    assert all(p.requires_grad for p in model.parameters())
    assert not hasattr(model, "peft_config")


def test_parameter_report_adds_up():
    model = apply_trainability(tiny_llava(), stage(), LLAVA_COMPONENTS)
    rows = parameter_report(model, LLAVA_COMPONENTS)
    by = {r["component"]: r for r in rows}
    assert [r["component"] for r in rows] == [*LLAVA_COMPONENTS, "all"]
    params = list(tr._unwrap(model).parameters())
    assert by["all"]["total"] == sum(p.numel() for p in params)
    assert by["all"]["trainable"] == sum(p.numel() for p in params if p.requires_grad)
    for key in ("total", "trainable"):
        assert sum(by[c][key] for c in LLAVA_COMPONENTS) == by["all"][key]
    assert by["vision_tower"]["trainable"] == 0
    assert by["connector"]["trainable"] == by["connector"]["total"]
    # 2 layers x 4 projections x (A: r x 32 + B: 32 x r) at r = 64.
    assert by["language_model"]["trainable"] == 2 * 4 * 2 * 64 * 32
    assert by["connector"]["percent"] == pytest.approx(100.0)
    table = format_parameter_report(rows)
    assert "language_model" in table and f"{by['all']['total']:,}" in table


def _perturb_lora(model, seed: int) -> None:
    """Stand in for training: give every LoRA B a non-zero value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tr._unwrap(model).named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]).logits


@pytest.mark.slow
def test_stage_transitions_keep_logits_and_change_rank():
    inputs = batch()
    model = tiny_llava()
    original = _logits(model, inputs)
    model = apply_trainability(model, stage(rank=64), LLAVA_COMPONENTS)
    for i, rank in enumerate((32, 16)):
        _perturb_lora(model, seed=i)
        model.eval()
        before = _logits(model, inputs)
        assert not torch.allclose(before, original, atol=1e-4)  # the adapter changed something
        model = next_stage(model, rank, stage(rank=rank), LLAVA_COMPONENTS)
        model.eval()
        torch.testing.assert_close(_logits(model, inputs), before, atol=1e-5, rtol=0)

        params = base_names(model)
        lora = {n: p for n, p in params.items() if ".lora_" in n}
        assert len(lora) == 2 * 2 * 4  # one fresh adapter: A and B per wrapped module
        assert all(".default." in n for n in lora)
        assert {p.shape[0] for n, p in lora.items() if ".lora_A." in n} == {rank}
        assert {p.shape[1] for n, p in lora.items() if ".lora_B." in n} == {rank}
        assert all(p.requires_grad for p in lora.values())
        assert all(not torch.count_nonzero(p) for n, p in lora.items() if ".lora_B." in n)
        trainable = {n for n, p in params.items() if p.requires_grad}
        assert trainable == set(lora) | {
            n for n in params if n.startswith("model.multi_modal_projector.")
        }
        assert model.peft_config["default"].lora_alpha == 2 * rank


def test_next_stage_can_switch_settings():
    model = apply_trainability(tiny_llava(), stage(rank=64), LLAVA_COMPONENTS)
    model = next_stage(model, 32, stage(connector="frozen", rank=32), LLAVA_COMPONENTS)
    rows = {r["component"]: r for r in parameter_report(model, LLAVA_COMPONENTS)}
    assert rows["connector"]["trainable"] == 0
    assert rows["language_model"]["trainable"] == 2 * 4 * 2 * 32 * 32


def test_explicit_alpha_keeps_its_ratio_to_rank():
    specs = stage(rank=64)
    specs["language_model"] = ComponentSpec("lora", rank=64, alpha=16)
    model = apply_trainability(tiny_llava(), specs, LLAVA_COMPONENTS)
    model = next_stage(model, 16, specs, LLAVA_COMPONENTS)
    assert model.peft_config["default"].r == 16
    assert model.peft_config["default"].lora_alpha == pytest.approx(4.0)


def test_mllama_lora_targets_only_text_attention():
    pattern = lora_target_regex(
        {
            "vision_tower": ComponentSpec("frozen"),
            "connector": ComponentSpec("full"),
            "language_model": ComponentSpec("lora", target_modules=("q_proj", "v_proj")),
        },
        MLLAMA_COMPONENTS,
    )
    assert re.fullmatch(pattern, "model.language_model.layers.3.cross_attn.q_proj")
    assert re.fullmatch(pattern, "model.language_model.layers.0.self_attn.v_proj")
    assert not re.fullmatch(pattern, "model.language_model.layers.0.self_attn.k_proj")
    assert not re.fullmatch(pattern, "model.vision_model.transformer.layers.0.self_attn.q_proj")
    assert not re.fullmatch(
        pattern, "model.vision_model.global_transformer.layers.0.self_attn.q_proj"
    )


def test_mllama_lora_lands_on_text_self_and_cross_attention():
    from transformers import MllamaConfig, MllamaForConditionalGeneration
    from transformers.models.mllama.configuration_mllama import (
        MllamaTextConfig,
        MllamaVisionConfig,
    )

    torch.manual_seed(0)
    vision = MllamaVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=2,
        image_size=32,
        patch_size=8,
        max_num_tiles=4,
        intermediate_layers_indices=[0],
        vision_output_dim=32,  # hidden 16 x (1 + one intermediate layer)
    )
    text = MllamaTextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        cross_attention_layers=[1, 3],
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = MllamaForConditionalGeneration(
        MllamaConfig(vision_config=vision, text_config=text, image_token_index=VOCAB)
    )
    specs = {
        "vision_tower": ComponentSpec("frozen"),
        "connector": ComponentSpec("full"),
        "language_model": ComponentSpec("lora", rank=8),
    }
    model = apply_trainability(model, specs, MLLAMA_COMPONENTS)
    lora = {n.rsplit(".lora_", 1)[0] for n in base_names(model) if ".lora_" in n}
    kinds = {re.sub(r"\.\d+\.", ".N.", m) for m in lora}
    assert kinds == {
        f"model.language_model.layers.N.{attn}.{proj}"
        for attn in ("self_attn", "cross_attn")
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj")
    }
    rows = {r["component"]: r for r in parameter_report(model, MLLAMA_COMPONENTS)}
    assert rows["vision_tower"]["trainable"] == 0
    assert rows["language_model"]["trainable"] == 4 * 4 * 2 * 8 * 32


def test_bad_settings_fail_loudly():
    with pytest.raises(ValueError, match="mode must be one of"):
        ComponentSpec("partial")
    with pytest.raises(ValueError, match="needs mode='lora'"):
        ComponentSpec("full", quantize="4bit")
    with pytest.raises(ValueError, match="every component"):
        apply_trainability(tiny_llava(), {"connector": ComponentSpec("full")}, LLAVA_COMPONENTS)
    partial = {"vision_tower": "model.vision_tower", "connector": "model.multi_modal_projector"}
    with pytest.raises(ValueError, match="belongs to no component"):
        apply_trainability(
            tiny_llava(),
            {"vision_tower": ComponentSpec("full"), "connector": ComponentSpec("full")},
            partial,
        )
    specs = stage()
    specs["language_model"] = ComponentSpec("lora", target_modules=("no_such_proj",))
    with pytest.raises(ValueError, match="'language_model': no module named"):
        apply_trainability(tiny_llava(), specs, LLAVA_COMPONENTS)
    specs = stage(vision="lora", rank=64)
    specs["vision_tower"] = ComponentSpec("lora", rank=8)
    with pytest.raises(ValueError, match="share rank"):
        apply_trainability(tiny_llava(), specs, LLAVA_COMPONENTS)
    wrapped = apply_trainability(tiny_llava(), stage(), LLAVA_COMPONENTS)
    with pytest.raises(ValueError, match="next_stage"):
        apply_trainability(wrapped, stage(), LLAVA_COMPONENTS)


def test_qlora_refused_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    specs = stage()
    specs["language_model"] = ComponentSpec("lora", quantize="4bit")
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        apply_trainability(tiny_llava(), specs, LLAVA_COMPONENTS)
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        quantization_config("4bit")


def test_qlora_refused_without_bitsandbytes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tr, "missing", lambda *mods: list(mods))
    with pytest.raises(MissingDependency, match="pip install bitsandbytes"):
        quantization_config("4bit")
    specs = stage()
    specs["language_model"] = ComponentSpec("lora", quantize="4bit")
    with pytest.raises(MissingDependency, match="bitsandbytes"):
        apply_trainability(tiny_llava(), specs, LLAVA_COMPONENTS)
