"""Named sizes: each builds on the meta device, fast, with the published parameter count."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    MllamaConfig,
    MllamaForConditionalGeneration,
)

from radixpert.models import sizes  # noqa: E402
from radixpert.models.sizes import SIZES, build_meta, size_names  # noqa: E402

# name -> exact parameter count of the meta model (see each test below for the source).
PINNED: dict[str, int] = {
    # Published: Hub safetensors metadata of meta-llama/Llama-3.2-11B-Vision-Instruct.
    "llama32_vision_11b": 10_670_220_835,
    # Published: parameter sum of the loaded llava-hf/llava-1.5-7b-hf checkpoint.
    "llava15_7b": 7_063_427_072,
    # Computed (only "8.03B" is published for llava-hf/llava-onevision-qwen2-7b-ov-hf).
    "llava_onevision_7b": 8_030_807_584,
    # Computed: a shape, not a published checkpoint.
    "llava_rad_shape": 6_844_670_464,
}

BUILD_SECONDS = 5.0


def _count(model: torch.nn.Module) -> int:
    """Counts distinct parameters (tied weights once, as ``model.parameters()`` yields them)."""
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", params=sorted(PINNED))
def built(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, float]:
    """Builds each named size once on the meta device, timing the build."""
    start = time.perf_counter()
    model = build_meta(request.param)
    return request.param, model, time.perf_counter() - start


def test_registry_lists_every_size() -> None:
    """``SIZES``, ``size_names`` and the pinned counts cover the same four names."""
    assert set(SIZES) == set(PINNED)
    assert size_names() == tuple(SIZES)
    assert set(sizes.__all__) >= {"SIZES", "build_meta", *SIZES}


def test_configs_are_fresh_objects() -> None:
    """Each call returns a new config, so callers can edit theirs without touching others."""
    for make in SIZES.values():
        first, second = make(), make()
        assert first is not second
        assert first.to_dict() == second.to_dict()


def test_builds_on_meta_fast_without_memory(built: tuple[str, torch.nn.Module, float]) -> None:
    """Every parameter and buffer is on the meta device, and the build takes under 5 s."""
    name, model, seconds = built
    assert seconds < BUILD_SECONDS, f"{name} took {seconds:.2f} s"
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {b.device.type for b in model.buffers()} <= {"meta"}


def test_parameter_count_is_pinned(built: tuple[str, torch.nn.Module, float]) -> None:
    """The meta model's parameter count equals the pinned (published or computed) number."""
    name, model, _ = built
    assert _count(model) == PINNED[name]


def test_llama32_vision_11b_matches_published_config_and_count() -> None:
    """Llama 3.2 11B Vision: the transcribed config and the published 10,670,220,835.

    Published count: the Hugging Face safetensors metadata parameter count of
    meta-llama/Llama-3.2-11B-Vision-Instruct (recorded in floschne/gimmick,
    src/gimmick/models/__init__.py). Word embeddings are untied, as in the real config.
    """
    config = sizes.llama32_vision_11b()
    assert isinstance(config, MllamaConfig)
    text, vision = config.text_config, config.vision_config
    assert text.num_hidden_layers == 40
    assert text.cross_attention_layers == [3, 8, 13, 18, 23, 28, 33, 38]
    assert (text.hidden_size, text.intermediate_size, text.vocab_size) == (4096, 14336, 128256)
    assert (text.num_attention_heads, text.num_key_value_heads) == (32, 8)
    assert text.tie_word_embeddings is False
    assert (vision.num_hidden_layers, vision.num_global_layers, vision.hidden_size) == (
        32,
        8,
        1280,
    )
    assert (vision.image_size, vision.patch_size, vision.max_num_tiles) == (560, 14, 4)
    assert vision.intermediate_layers_indices == [3, 7, 15, 23, 30]
    assert vision.vision_output_dim == 7680
    assert config.image_token_index == 128256

    model = build_meta("llama32_vision_11b")
    assert isinstance(model, MllamaForConditionalGeneration)
    assert _count(model) == 10_670_220_835


def test_llava15_7b_matches_published_config_and_count() -> None:
    """LLaVA-1.5-7B: the transcribed config and the published 7,063,427,072.

    Published count: the parameter sum of the loaded llava-hf/llava-1.5-7b-hf checkpoint
    (reported in nnethercott/nnethercott.github.io's LLaVA post and asserted by a public test
    that builds the model from that checkpoint's config.json).
    """
    config = sizes.llava15_7b()
    assert isinstance(config, LlavaConfig)
    assert config.text_config.vocab_size == 32064
    assert config.image_token_index == 32000
    assert config.projector_hidden_act == "gelu"
    assert config.vision_feature_layer == -2
    vision = config.vision_config
    assert (vision.image_size, vision.patch_size, vision.num_hidden_layers) == (336, 14, 24)
    assert config.text_config.tie_word_embeddings is False

    model = build_meta("llava15_7b")
    assert isinstance(model, LlavaForConditionalGeneration)
    assert _count(model) == 7_063_427_072


def test_llava_onevision_7b_count_is_computed_and_rounds_to_published() -> None:
    """LLaVA-OneVision Qwen2-7B: no exact published count was found, so the computed one is pinned.

    The model page (llava-hf/llava-onevision-qwen2-7b-ov-hf) shows only the rounded "8.03B
    params", and no model.safetensors.index.json total_size could be looked up here. The count
    pinned is the one computed from the transcribed config (SigLIP so400m with 26 layers and no
    head, Qwen2-7B with vocabulary 152064 + 2 tokens padded to 152128, untied head, and the
    ``image_newline`` vector); it rounds to the published 8.03B.
    """
    config = sizes.llava_onevision_7b()
    assert isinstance(config, LlavaOnevisionConfig)
    assert config.text_config.vocab_size == 152128
    assert config.vision_config.num_hidden_layers == 26
    assert config.vision_config.vision_use_head is False
    assert len(config.image_grid_pinpoints) == 36
    assert config.image_grid_pinpoints[-1] == [2304, 2304]

    model = build_meta("llava_onevision_7b")
    assert isinstance(model, LlavaOnevisionForConditionalGeneration)
    count = _count(model)
    assert count == 8_030_807_584
    assert round(count / 1e9, 2) == 8.03


def test_llava_rad_shape_count_is_computed() -> None:
    """LLaVA-Rad shape: a shape, not a published checkpoint, so its computed count is pinned.

    Vicuna-7B (vocabulary padded to 32064 as in llava15_7b) with a ViT-B/16 at 224 px
    (BiomedCLIP-style dimensions) and LLaVA-1.5's two-layer projector. It therefore differs from
    llava15_7b only by the vision tower and the projector's input width.
    """
    config = sizes.llava_rad_shape()
    assert isinstance(config, LlavaConfig)
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (
        768,
        12,
        12,
    )
    assert (vision.image_size, vision.patch_size) == (224, 16)
    assert config.text_config.to_dict() == sizes.llava15_7b().text_config.to_dict()

    rad = build_meta("llava_rad_shape")
    llava = build_meta("llava15_7b")
    assert _count(rad) == 6_844_670_464
    assert _count(rad.model.language_model) == _count(llava.model.language_model)
    assert _count(rad.lm_head) == _count(llava.lm_head)


def test_unknown_size_raises_with_known_names() -> None:
    """An unknown name raises ``KeyError`` listing the known names."""
    with pytest.raises(KeyError, match="llava15_7b"):
        build_meta("llava_13b")
