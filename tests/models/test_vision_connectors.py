"""Vision towers and connectors on tiny random-init configs of the real architectures."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from radixpert.models.connectors import HCF, MLPProjector, build_connector
from radixpert.models.vision import (
    VisionTower,
    build_vision_tower,
    fusion_layers,
    tiny_vision_config,
)

KINDS = ["clip", "siglip", "dinov2", "vit"]
# Tokens before the patches in each tiny encoder (CLS; SigLIP has none).
PREFIX = {"clip": 1, "siglip": 0, "dinov2": 1, "vit": 1}
VISION, TEXT = 32, 16


def _pixels(seed: int, channels: int = 3, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, channels, 32, 32, generator=torch.Generator().manual_seed(seed))


def _tower(kind: str, **kwargs) -> VisionTower:
    torch.manual_seed(0)
    return build_vision_tower(kind, tiny_vision_config(kind), **kwargs).eval()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_tower_depths_and_shapes(kind: str) -> None:
    tower = _tower(kind)
    assert (tower.hidden_size, tower.num_layers, tower.image_size) == (32, 4, 32)
    pixels = _pixels(0)
    with torch.no_grad():
        states = tower(pixels, layers=[1, 2, -1, 4])
        reference = tower.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        (full,) = VisionTower(tower.model, feature_select="full")(pixels, layers=[-1])
    assert [s.shape for s in states] == [torch.Size([2, 16, 32])] * 4
    assert tower.num_patches == 16
    # -1 and num_layers are the same depth; each state is hidden_states[depth] minus CLS.
    assert torch.equal(states[2], states[3])
    for state, depth in zip(states[:3], (1, 2, 4)):
        assert torch.equal(state, reference[depth][:, PREFIX[kind] :])
    assert full.shape == (2, 16 + PREFIX[kind], 32)
    with pytest.raises(IndexError, match="outside the encoder"):
        tower(pixels, layers=[5])


@pytest.mark.parametrize("kind", KINDS)
def test_tower_save_and_reload(kind: str, tmp_path) -> None:
    tower = _tower(kind)
    tower.save_pretrained(str(tmp_path))
    reloaded = build_vision_tower(kind, pretrained=str(tmp_path))
    assert not reloaded.training
    pixels = _pixels(1)
    with torch.no_grad():
        before = tower(pixels, layers=[1, -1])
        after = reloaded(pixels, layers=[1, -1])
    for a, b in zip(before, after):
        assert torch.equal(a, b)


def test_grayscale_input_is_replicated() -> None:
    rgb = _tower("clip")
    gray = VisionTower(rgb.model, channels_in=1)
    pixels = _pixels(2, channels=1)
    with torch.no_grad():
        (out,) = gray(pixels, layers=[-1])
        (expected,) = rgb(pixels.repeat(1, 3, 1, 1), layers=[-1])
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="channels_in=1"):
        rgb(pixels, layers=[-1])
    with pytest.raises(ValueError, match="channels_in"):
        build_vision_tower("vit", tiny_vision_config("vit"), channels_in=2)


def test_builder_errors_and_dict_config() -> None:
    with pytest.raises(ValueError, match="unknown vision tower"):
        build_vision_tower("resnet", {})
    with pytest.raises(ValueError, match="needs a config"):
        build_vision_tower("clip")
    tower = build_vision_tower("vit", tiny_vision_config("vit").to_dict())
    assert tower.num_layers == 4
    auto = build_vision_tower("auto", {"model_type": "vit", **tiny_vision_config("vit").to_dict()})
    assert auto(_pixels(0), layers=[-1])[0].shape == (2, 16, 32)
    assert type(build_vision_tower("auto", tiny_vision_config("dinov2")).model).__name__ == (
        "Dinov2Model"
    )
    assert fusion_layers(24) == [8, 16, 24]
    assert fusion_layers(4, levels=1) == [4]


def test_mlp_projector_matches_llava_projector() -> None:
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**tiny_vision_config("clip").to_dict()),
        text_config=LlamaConfig(
            hidden_size=TEXT,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=64,
        ),
        image_token_index=63,
    )
    torch.manual_seed(0)
    llava = LlavaMultiModalProjector(config)
    ours = build_connector("mlp", VISION, TEXT)
    assert isinstance(ours, MLPProjector)
    ours.load_state_dict(llava.state_dict())
    features = torch.randn(2, 16, VISION)
    assert torch.equal(ours(features), llava(features))
    # And back: our weights load into LLaVA's projector with the same keys.
    other = MLPProjector(VISION, TEXT)
    llava.load_state_dict(other.state_dict())
    assert torch.equal(other(features), llava(features))


def _hcf_inputs(seed: int = 0, batch: int = 2, levels: int = 3):
    gen = torch.Generator().manual_seed(seed)
    states = [torch.randn(batch, 16, VISION, generator=gen) for _ in range(levels)]
    text = torch.randn(batch, 5, TEXT, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]][:batch])
    return states, text, mask


def _hcf(**opts) -> HCF:
    torch.manual_seed(0)
    hcf = build_connector("hcf", VISION, TEXT, num_heads=2, gate_hidden=16, **opts)
    assert isinstance(hcf, HCF)
    return hcf.eval()


def test_hcf_shape_and_gate_weights() -> None:
    hcf = _hcf()
    states, text, mask = _hcf_inputs()
    out = hcf(states, text, mask)
    assert out.hidden.shape == (2, 16, TEXT)
    assert out.gate_weights.shape == (2, 3)
    assert torch.allclose(out.gate_weights.sum(-1), torch.ones(2))
    # Same text prompt, two different images: the gate depends on the image.
    same_text = hcf(states, text[:1].expand(2, -1, -1)).gate_weights
    assert torch.allclose(same_text.sum(-1), torch.ones(2))
    assert (same_text[0] - same_text[1]).abs().max() > 1e-3
    # h* is the gate-weighted sum of the levels, each projected to the text width.
    assert torch.isfinite(out.hidden).all()
    assert hcf(states).hidden.shape == (2, 16, TEXT)  # no text prompt


def test_hcf_from_vision_tower() -> None:
    tower = _tower("siglip")
    hcf = _hcf()
    states = tower(_pixels(3), layers=fusion_layers(tower.num_layers))
    out = hcf(states, torch.randn(2, 4, TEXT))
    assert out.hidden.shape == (2, tower.num_patches, TEXT)


def test_hcf_equal_gate_and_single_level() -> None:
    states, text, mask = _hcf_inputs()
    equal = _hcf(gate="equal")
    out = equal(states, text, mask)
    assert torch.equal(out.gate_weights, torch.full((2, 3), 1 / 3))
    assert equal.gate is None
    single = _hcf(levels=1)
    out = single(states[-1:], text, mask)
    assert out.hidden.shape == (2, 16, TEXT)
    assert torch.equal(out.gate_weights, torch.ones(2, 1))
    with pytest.raises(ValueError, match="1 levels, got 3"):
        single(states, text, mask)


def test_hcf_gradients_reach_every_parameter() -> None:
    hcf = _hcf().train()
    states, text, mask = _hcf_inputs()
    out = hcf(states, text, mask)
    (out.hidden.square().mean() + out.gate_weights[:, 0].sum()).backward()
    for name, param in hcf.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_hcf_ignores_masked_text() -> None:
    hcf = _hcf()
    states, text, mask = _hcf_inputs()
    changed = text.clone()
    changed[0, 3:] = torch.randn(2, TEXT) * 100  # sample 0's padded positions
    with torch.no_grad():
        before = hcf(states, text, mask)
        after = hcf(states, changed, mask)
        unmasked = hcf(states, changed)
    assert torch.allclose(before.hidden, after.hidden, rtol=0, atol=1e-6)
    assert torch.allclose(before.gate_weights, after.gate_weights, rtol=0, atol=1e-7)
    # Without the mask the same change does reach the output, so the test can fail.
    assert not torch.allclose(before.hidden[0], unmasked.hidden[0], atol=1e-3)


def test_hcf_fully_masked_text_is_finite() -> None:
    hcf = _hcf()
    states, text, _ = _hcf_inputs()
    mask = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    out = hcf(states, text, mask)
    no_text = hcf([s[:1] for s in states])
    assert torch.isfinite(out.hidden).all()
    # A sample with no real text token is fused as if no text were given.
    assert torch.allclose(out.hidden[:1], no_text.hidden, atol=1e-6)
