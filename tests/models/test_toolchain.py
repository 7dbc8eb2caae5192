"""The one torch + torchvision pair carries every tower family the recipes name.

LLaVA-Rad's image encoder (BiomedCLIP) is an open_clip model: a timm ViT beside a Hugging Face
BERT text tower. RadScribe's CheXNet is a DenseNet-121 (torchvision or timm). Here each is
built with random weights, run, saved with safetensors and read back; these failed to import
beside the earlier torch 2.13 CPU build ("operator torchvision::nms does not exist").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

pytestmark = pytest.mark.slow


def _round_trip(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return load_file(str(path))


def test_torchvision_ops_and_densenet121(tmp_path: Path) -> None:
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.9], [2.0, 2.0, 3.0, 3.0]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    torch.manual_seed(0)
    net = torchvision.models.densenet121(weights=None, num_classes=14).eval()
    assert sum(p.numel() for p in net.parameters()) == 6_968_206  # DenseNet-121, 14 outputs
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
    again = torchvision.models.densenet121(weights=None, num_classes=14).eval()
    again.load_state_dict(_round_trip(net, tmp_path / "densenet.safetensors"))
    with torch.no_grad():
        assert torch.equal(again(x), before)


def test_timm_densenet121_matches_torchvisions_shape() -> None:
    net = timm.create_model("densenet121", pretrained=False, num_classes=14)
    assert sum(p.numel() for p in net.parameters()) == 6_968_206
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 14)


def test_open_clip_with_timm_vision_and_hf_text_tower(tmp_path: Path) -> None:
    """A BiomedCLIP-shaped open_clip model (timm ViT + BERT text tower), tiny and random."""
    bert = transformers.BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    transformers.BertModel(bert).save_pretrained(tmp_path / "bert")
    config = {
        "embed_dim": 16,
        "vision_cfg": {
            "timm_model_name": "vit_tiny_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {  # BiomedCLIP's text_cfg, with a local tiny BERT for BiomedBERT
            "hf_model_name": str(tmp_path / "bert"),
            "hf_tokenizer_name": str(tmp_path / "bert"),
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 16,
        },
    }
    path = tmp_path / "tiny-biomedclip.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-biomedclip", pretrained=None).eval()
    images, texts = torch.randn(2, 3, 224, 224), torch.randint(0, 120, (2, 16))
    with torch.no_grad():
        image_features, text_features, logit_scale = model(images, texts)
    assert image_features.shape == text_features.shape == (2, 16)
    assert float(logit_scale) == pytest.approx(1 / 0.07)  # CLIP's initial temperature
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(2), atol=1e-5)
    again = open_clip.create_model("tiny-biomedclip", pretrained=None).eval()
    again.load_state_dict(_round_trip(model, tmp_path / "clip.safetensors"))
    with torch.no_grad():
        assert torch.equal(again.encode_image(images), model.encode_image(images))
