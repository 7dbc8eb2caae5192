"""RadScribe from pretrained parts (tiny hub checkpoints of tests/hub/parts.py): every source
weight lands exactly, the fresh parts are reported, the image settings are the backbone's own,
and save/load round-trips for each backbone, DenseNet-121 included (timm hub layout and a
torchvision state-dict file)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers import BertModel, ResNetModel, T5ForConditionalGeneration, ViTModel

from radixpert.models.encoder_decoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RadScribe,
    build_encoder_decoder_pretrained,
)

BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
DENSENET = "timm/densenet121.tv_in1k"
CASES = {
    # backbone, joint, decoder, expected kind, input side used in the forward checks
    "vit": ("google/vit-base-patch16-224-in21k", "google-bert/bert-base-uncased",
            "google-t5/t5-small", "vit", 32),
    "resnet": ("microsoft/resnet-50", BIOMEDBERT, "luqh/ClinicalT5-base", "resnet", 32),
    "densenet": (f"hf-hub:{DENSENET}", BIOMEDBERT, "google-t5/t5-small", "densenet", 64),
}  # fmt: skip


def _assert_same(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert state.keys() == reference.keys()
    for name, value in state.items():
        assert torch.equal(value, reference[name]), name


def _backbone_reference(kind: str, source: str) -> dict[str, torch.Tensor]:
    """The source's weights, read by the source library's own loader."""
    if kind == "vit":
        return ViTModel.from_pretrained(source, add_pooling_layer=False).state_dict()
    if kind == "resnet":
        return ResNetModel.from_pretrained(source).state_dict()
    import timm  # timm's own hub loader, not the wrapper RadScribe uses

    net = timm.create_model(source, pretrained=True)
    return {f"timm_model.{k}": v for k, v in net.state_dict().items()
            if not k.startswith("classifier.")}  # fmt: skip


def _batch(side: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(2, 3, side, side, generator=gen),
        "input_ids": torch.randint(5, 60, (2, 6), generator=gen),
        "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2]),
        "labels": torch.randint(3, 100, (2, 5), generator=gen),
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_pretrained_parts_land_exactly_and_round_trip(
    case: str, hub_checkpoint, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backbone, joint, decoder, kind, side = CASES[case]
    for repo in (backbone, joint, decoder):
        hub_checkpoint(repo.removeprefix("hf-hub:"))
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="radixpert.models.encoder_decoder"):
        model = build_encoder_decoder_pretrained(backbone, joint, decoder, label_branch=True)
    assert model.image_backbone == kind and model.training

    _assert_same(model.backbone.state_dict(), _backbone_reference(kind, backbone))
    bert, info = BertModel.from_pretrained(joint, output_loading_info=True)
    loaded = {k: v for k, v in bert.state_dict().items() if k not in info["missing_keys"]}
    joint_state = model.joint.state_dict()
    _assert_same({k: joint_state[k] for k in loaded}, loaded)
    t5 = T5ForConditionalGeneration.from_pretrained(decoder).state_dict()
    _assert_same(
        model.t5.state_dict(), {k: v for k, v in t5.items() if not k.startswith("encoder.")}
    )

    message = next(
        r.getMessage() for r in caplog.records if "freshly initialised" in r.getMessage()
    )
    for part in ("image_proj", "cls_embedding", "label_head", "label_fusion"):
        assert part in message
    assert ("memory_proj" in message) == (model.joint.config.hidden_size != model.t5.config.d_model)
    for key in info["missing_keys"]:  # BiomedBERT ships no pooler: BertModel's is new
        assert f"joint.{key}" in message
    assert ("joint.pooler" in message) == (joint == BIOMEDBERT)

    batch = _batch(side)
    out = model(**batch, labels_target=torch.rand(2, 14))
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.image_proj.weight.grad is not None
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    model.save_pretrained(tmp_path / case)
    again = RadScribe.from_pretrained(tmp_path / case)
    _assert_same(again.state_dict(), model.state_dict())
    assert again.image_settings() == model.image_settings()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, logits, rtol=0, atol=0)


def test_image_settings_are_each_backbones_own(hub_checkpoint) -> None:
    for repo in ("google/vit-base-patch16-224-in21k", "microsoft/resnet-50", DENSENET,
                 "google-bert/bert-base-uncased", "google-t5/t5-small"):  # fmt: skip
        hub_checkpoint(repo)
    parts = ("google-bert/bert-base-uncased", "google-t5/t5-small")
    vit = build_encoder_decoder_pretrained("google/vit-base-patch16-224-in21k", *parts)
    resnet = build_encoder_decoder_pretrained("microsoft/resnet-50", *parts)
    densenet = build_encoder_decoder_pretrained(DENSENET, *parts, label_branch=False)
    # ViTImageProcessor 32x32 with (0.5, 0.5); ConvNext processor shortest_edge 32 (cropped
    # to 32) with ImageNet stats; timm pretrained_cfg: 3x224x224, ImageNet stats.
    assert vit.image_settings() == {
        "image_size": 32, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "channels": 3,
    }  # fmt: skip
    assert resnet.image_settings() == {
        "image_size": 32, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "channels": 3,
    }  # fmt: skip
    assert densenet.image_settings() == {
        "image_size": 224, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "channels": 3,
    }  # fmt: skip
    assert not densenet.label_branch
    with pytest.raises(ValueError, match="not a RadScribe backbone"):
        build_encoder_decoder_pretrained("google-bert/bert-base-uncased", *parts)
    with pytest.raises(ValueError, match="not a RadScribe backbone"):
        build_encoder_decoder_pretrained(DENSENET, *parts, image_backbone="vit")


def test_torchvision_densenet121_weights_load(hub_checkpoint, tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    from safetensors.torch import save_file

    parts = ("google-bert/bert-base-uncased", "google-t5/t5-small")
    for repo in parts:
        hub_checkpoint(repo)
    torch.manual_seed(1)
    net = torchvision.models.densenet121(weights=None)
    save_file(net.state_dict(), str(tmp_path / "densenet121.safetensors"))
    torch.save(net.state_dict(), tmp_path / "densenet121.pth")
    reference = {f"timm_model.{k}": v for k, v in net.state_dict().items()
                 if not k.startswith("classifier.")}  # fmt: skip
    for name in ("densenet121.safetensors", "densenet121.pth"):
        model = build_encoder_decoder_pretrained(tmp_path / name, *parts)
        assert model.image_backbone == "densenet"
        _assert_same(model.backbone.state_dict(), reference)
    other = dict(net.state_dict())
    other["features.extra.weight"] = other.pop("features.norm5.weight")  # not DenseNet-121's
    save_file(other, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a torchvision DenseNet-121"):
        build_encoder_decoder_pretrained(tmp_path / "other.safetensors", *parts)


def test_random_densenet_backbone_and_its_checks() -> None:
    from transformers import TimmWrapperConfig

    from radixpert.models.encoder_decoder import build_encoder_decoder, tiny_configs

    configs = tiny_configs("densenet")
    model = build_encoder_decoder("densenet", label_branch=False, **configs).eval()
    assert model.image_tokens(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32)  # 1x1 map at 32 px
    assert model.image_tokens(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 32)
    assert model.image_settings()["image_size"] == 224  # timm's densenet121 pretrained_cfg
    configs["backbone_config"] = TimmWrapperConfig(architecture="resnet18")
    with pytest.raises(ValueError, match=r"backbone_config\.architecture"):
        build_encoder_decoder("densenet", **configs)
