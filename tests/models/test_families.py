"""The family registry: recipe fields honoured, checkpoints loaded with a connector on top,
trainable weights in fp32, LoRA targets, the checkpoint's own preprocessing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from radixpert.errors import RecipeError
from radixpert.models import families
from radixpert.models.connectors import HCF
from radixpert.models.families import (
    components_of,
    connector_of,
    create_model,
    family_of,
    fresh_modules,
    meta_model,
)
from radixpert.models.spec import HCFOptions, ModelSpec
from radixpert.models.trainability import ComponentSpec, apply_trainability

FROZEN_LM_LORA = {
    "vision_tower": ComponentSpec("frozen"),
    "connector": ComponentSpec("full"),
    "language_model": ComponentSpec("lora", rank=4, dropout=0.0),
}


def _build(**fields: Any) -> Any:
    torch.manual_seed(0)
    return create_model(ModelSpec(**fields))


def test_the_recipe_connector_is_honoured_on_every_size() -> None:
    # The demo size named "-hcf" with connector mlp is plain Llava; tiny-llava with hcf is HCF.
    assert connector_of(_build(family="llava", size="demo-llava-hcf", connector="mlp")) == "mlp"
    assert connector_of(_build(family="llava", size="tiny-llava", connector="hcf")) == "hcf"
    # The size's own connector when the recipe names none.
    assert connector_of(_build(family="llava", size="demo-llava-hcf")) == "hcf"
    # tiny-mllama with connector hcf is HCF Mllama (it used to build plain Mllama).
    model = _build(family="mllama", size="tiny-mllama", connector="hcf")
    assert connector_of(model) == "hcf" and family_of(model) == "mllama"


def test_hcf_options_are_honoured() -> None:
    hcf = HCFOptions(levels=2, gate="equal", num_heads=2, gate_hidden=16)
    model = _build(family="llava", size="tiny-llava", connector="hcf", hcf=hcf)
    connector = model.model.multi_modal_projector
    assert isinstance(connector, HCF)
    assert connector.levels == len(connector.fusion) == 2 and connector.gate is None
    assert model.config.vision_feature_layer == [2, 4]
    assert connector.fusion[0].cross_attn.num_heads == 2
    mllama = _build(family="mllama", size="tiny-mllama", connector="hcf", hcf=hcf)
    assert mllama.config.hcf_groups == [0, 2] and mllama.config.hcf_gate == "equal"
    with pytest.raises(RecipeError, match=r"hcf\.levels"):
        _build(family="mllama", size="tiny-mllama", connector="hcf", hcf=HCFOptions(levels=4))


def test_the_demo_size_rebuilt_by_the_registry_is_the_builders_model() -> None:
    from radixpert.models.llava import demo_llava

    spec = ModelSpec(family="llava", size="demo-llava-hcf", connector="hcf",
                     hcf=HCFOptions(levels=3, num_heads=4, gate_hidden=64))  # fmt: skip
    built = create_model(spec)
    reference = demo_llava("hcf")
    assert [(n, p.shape) for n, p in built.named_parameters()] == [
        (n, p.shape) for n, p in reference.named_parameters()
    ]
    assert built.config.to_dict() == reference.config.to_dict()


def test_connectors_a_family_lacks_are_refused() -> None:
    with pytest.raises(ValueError, match="connector"):
        ModelSpec(family="llava_onevision", size="tiny-onevision", connector="hcf")
    with pytest.raises(ValueError, match="connector"):
        ModelSpec(family="mllama", size="tiny-mllama", connector="mlp")
    with pytest.raises(ValueError, match="exactly one of size, pretrained and parts"):
        ModelSpec(family="llava", size="tiny-llava", pretrained="x")


def _save_checkpoint(model: Any, path: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    model.to(dtype).save_pretrained(path)
    return path


@pytest.mark.parametrize("family,size", [("llava", "tiny-llava"), ("mllama", "tiny-mllama")])
def test_hcf_on_top_of_a_checkpoint_keeps_its_weights(tmp_path: Path, family: str, size: str):
    checkpoint = _build(family=family, size=size)
    path = _save_checkpoint(checkpoint, tmp_path / "ckpt")
    reference = {k: v.clone() for k, v in checkpoint.state_dict().items()}
    spec = ModelSpec(family=family, pretrained=str(path), connector="hcf",
                     hcf=HCFOptions(num_heads=4, gate_hidden=16))  # fmt: skip
    model = create_model(spec)
    assert connector_of(model) == "hcf"
    assert fresh_modules(model) == ["model.multi_modal_projector"]
    state = model.state_dict()
    kept = [k for k in reference if not k.startswith("model.multi_modal_projector")]
    assert kept and all(torch.equal(state[k], reference[k]) for k in kept)
    assert all(state[k].dtype == torch.bfloat16 for k in kept)  # loaded as the checkpoint is
    hcf = model.model.multi_modal_projector
    assert all(p.dtype == torch.float32 for p in hcf.parameters())
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def test_a_checkpoint_of_another_family_is_named(tmp_path: Path) -> None:
    path = _save_checkpoint(_build(family="llava", size="tiny-llava"), tmp_path / "ckpt")
    with pytest.raises(RecipeError, match="is a llava model, not mllama"):
        create_model(ModelSpec(family="mllama", pretrained=str(path)))
    with pytest.raises(FileNotFoundError, match="neither a model folder nor a Hugging Face id"):
        create_model(ModelSpec(family="llava", pretrained=str(tmp_path / "missing")))


def test_a_small_update_survives_on_a_bf16_checkpoint(tmp_path: Path) -> None:
    # bf16 0.02 + 1e-6 == 0.02: trained in bf16 the connector would not move at all.
    assert torch.tensor(0.02, dtype=torch.bfloat16) + 1e-6 == torch.tensor(
        0.02, dtype=torch.bfloat16
    )
    path = _save_checkpoint(_build(family="llava", size="tiny-llava"), tmp_path / "ckpt")
    model = create_model(ModelSpec(family="llava", pretrained=str(path)))
    assert model.model.multi_modal_projector.linear_1.weight.dtype == torch.bfloat16
    model = apply_trainability(model, FROZEN_LM_LORA, components_of(model))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-6, weight_decay=0.0)
    image = model.config.image_token_index
    ids = torch.tensor([[1] + [image] * model.config.image_seq_length + [5, 6, 7]])
    labels = torch.where(ids == image, -100, ids)
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
    loss.backward()
    optimizer.step()
    moved = [n for n, p in trainable.items() if not torch.equal(p, before[n])]
    step = max(float((trainable[n] - before[n]).abs().max()) for n in moved)
    assert any("lora_B" in n for n in moved) and any("multi_modal_projector" in n for n in moved)
    assert 0.5e-6 < step < 2e-6  # Adam's first step is lr in size


def test_lora_targets_names_all_linear_and_regex() -> None:
    base = _build(family="llava", size="tiny-llava")

    def targets(spec: ComponentSpec) -> set[str]:
        model = apply_trainability(
            _build(family="llava", size="tiny-llava"),
            {**FROZEN_LM_LORA, "language_model": spec},
            components_of(base),
        )
        suffix = ".lora_A.default.weight"
        names = [n for n, _ in model.named_parameters() if n.endswith(suffix)]
        return {n.removeprefix("base_model.model.").removesuffix(suffix) for n in names}

    default = targets(ComponentSpec("lora", rank=2))
    assert {n.rsplit(".", 1)[-1] for n in default} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    linear = {n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    lm_linear = {n for n in linear if n.startswith("model.language_model.")}
    assert targets(ComponentSpec("lora", rank=2, target_modules="all-linear")) == lm_linear
    regex = targets(
        ComponentSpec("lora", rank=2, target_modules=r"layers\.0\.self_attn\.(q|v)_proj")
    )
    assert regex == {"model.language_model.layers.0.self_attn.q_proj",
                     "model.language_model.layers.0.self_attn.v_proj"}  # fmt: skip
    with pytest.raises(ValueError, match="not a regex"):
        ComponentSpec("lora", target_modules="(")
    with pytest.raises(ValueError, match="no module named"):
        targets(ComponentSpec("lora", rank=2, target_modules=("nope",)))


def test_meta_model_of_a_checkpoint_has_its_dtype_and_connector(tmp_path: Path) -> None:
    path = _save_checkpoint(_build(family="mllama", size="tiny-mllama"), tmp_path / "ckpt")
    spec = ModelSpec(family="mllama", pretrained=str(path), connector="hcf",
                     hcf=HCFOptions(num_heads=4))  # fmt: skip
    model = meta_model(spec)
    assert connector_of(model) == "hcf"
    params = dict(model.named_parameters())
    assert all(p.is_meta for p in params.values())
    assert params["model.language_model.embed_tokens.weight"].dtype == torch.bfloat16
    assert re.match("model.multi_modal_projector", next(n for n in params if ".fusion." in n))


def test_registry_covers_every_family() -> None:
    from radixpert.vocab import CONNECTORS, FAMILIES

    assert tuple(families.FAMILY_REGISTRY) == FAMILIES
    for name, family in families.FAMILY_REGISTRY.items():
        assert family.connectors == CONNECTORS[name]
        assert set(family.components) == {"vision_tower", "connector", "language_model"}


def test_mllama_hcf_gate_ignores_padding_tiles() -> None:
    """The gate pools the real tiles only: what a padding tile holds changes nothing."""
    model = _build(family="mllama", size="tiny-mllama", connector="hcf",
                   hcf=HCFOptions(num_heads=4, gate_hidden=16)).eval()  # fmt: skip
    image = model.config.image_token_index
    ids = torch.tensor([[1, image, 5, 6, 7]])
    pixels = torch.randn(1, 1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tile_mask = torch.tensor([[[1, 0, 0, 0]]])
    cross = torch.zeros(1, 5, 1, 4, dtype=torch.long)
    cross[:, 1:, :, 0] = 1
    inputs = {"input_ids": ids, "aspect_ratio_ids": torch.tensor([[1]]),
              "aspect_ratio_mask": tile_mask, "cross_attention_mask": cross}  # fmt: skip
    with torch.no_grad():
        model(pixel_values=pixels, **inputs)
        first = model.last_gate_weights.clone()
        noisy = pixels.clone()
        noisy[:, :, 1:] = 100.0 * torch.randn_like(noisy[:, :, 1:])
        model(pixel_values=noisy, **inputs)
    torch.testing.assert_close(model.last_gate_weights, first)
