"""The open_clip image tower as a transformers vision model: loaded by BiomedCLIP's hub name
(tiny checkpoint, tests/hub/parts.py) and from a local open_clip folder, parity with open_clip's
own forward, and a tiny Llava (plain and HCF) built on it that runs and round-trips save/load."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
pytest.importorskip("timm")

from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    BertConfig,
    BertModel,
    BertTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from radixpert.models.llava import build_llava, load_llava, tiny_text_config  # noqa: E402
from radixpert.models.open_clip_tower import (  # noqa: E402
    MODEL_TYPE,
    OpenClipVisionConfig,
    OpenClipVisionModel,
    create_open_clip,
    load_open_clip_tower,
    open_clip_model_name,
    register,
)

BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
# Both checkpoints hold timm's test ViT (native 160 px, patch 16, width 64, 6 blocks, CLS
# pooling, dynamic image size): the hub one is fed BiomedCLIP's 224 px, the local one 160.
HUB_IMAGE, IMAGE, PATCH, DEPTH, WIDTH = 224, 160, 16, 6, 64
PATCHES = (IMAGE // PATCH) ** 2
HUB_PATCHES = (HUB_IMAGE // PATCH) ** 2
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]  # the local folder's own, to see them read
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tiny_biomedclip(
    root: Path,
    words: list[str] = (),
    seed: int = 0,
    mean: list[float] = CLIP_MEAN,
    std: list[float] = CLIP_STD,
) -> Path:
    """A BiomedCLIP-layout open_clip folder: open_clip_config.json (BiomedCLIP's model_cfg
    with timm's ``test_vit`` for ViT-B/16 and a tiny local BERT for BiomedBERT), the text
    tokenizer (as open_clip's ``push_to_hf_hub`` saves it) and ``open_clip_model.safetensors``
    with seeded random weights; returns the folder."""
    torch.manual_seed(seed)
    bert_dir = root / "bert"
    vocab = list(dict.fromkeys([*SPECIALS, *words, "no", "effusion", "."]))
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    tokenizer.save_pretrained(bert_dir)
    # Weights at std 0.3, not BERT's 0.02: a random 1-layer BERT at 0.02 gives every text the
    # same CLS state, which no frozen-text contrastive test could learn against.
    bert = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0, initializer_range=0.3,
    )  # fmt: skip
    BertModel(bert, add_pooling_layer=False).save_pretrained(bert_dir)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "timm_model_name": "test_vit",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": IMAGE,
        },
        "text_cfg": {
            "hf_model_name": str(bert_dir),
            "hf_tokenizer_name": str(bert_dir),
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 32,
        },
    }
    folder = root / "biomedclip"
    folder.mkdir(parents=True)
    tokenizer.save_pretrained(folder)  # open_clip reads a local folder's tokenizer from it
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": mean, "std": std}}
    (folder / "open_clip_config.json").write_text(json.dumps(config), encoding="utf-8")
    clip = open_clip.model.CustomTextCLIP(**model_cfg)
    with torch.no_grad():
        clip.logit_scale.fill_(3.0)  # not CLIP's initial value, so a loader must read it
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def biomedclip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_biomedclip(tmp_path_factory.mktemp("open_clip"), mean=MEAN, std=STD)


@pytest.fixture(scope="module")
def loaded(hub_checkpoint) -> tuple[OpenClipVisionModel, dict, torch.nn.Module]:
    """BiomedCLIP's tower by its hub name (offline, from the session's hub cache)."""
    hub_checkpoint(BIOMEDCLIP)
    name = f"hf-hub:{BIOMEDCLIP}"
    tower, preprocess = load_open_clip_tower(name)
    return tower, preprocess, create_open_clip(name).eval()


def test_config_and_preprocessing_come_from_the_hub_checkpoint(loaded) -> None:
    tower, preprocess, _ = loaded
    config = tower.config
    assert config.model_type == MODEL_TYPE
    assert (config.image_size, config.patch_size) == (HUB_IMAGE, PATCH)
    assert (config.hidden_size, config.num_hidden_layers) == (WIDTH, DEPTH)
    assert config.projection_dim == 512
    assert config.open_clip_name == f"hf-hub:{BIOMEDCLIP}"
    assert config.open_clip_config["text_cfg"]["hf_model_name"].startswith("microsoft/")
    assert preprocess["image_size"] == HUB_IMAGE
    assert preprocess["image_mean"] == pytest.approx(CLIP_MEAN)
    assert config.image_std == pytest.approx(CLIP_STD)
    assert not tower.training


def test_a_local_open_clip_folder_loads(biomedclip: Path) -> None:
    tower, preprocess = load_open_clip_tower(biomedclip)
    config = tower.config
    assert config.open_clip_name == str(biomedclip)
    assert (config.image_size, config.projection_dim) == (IMAGE, 16)
    assert preprocess["image_mean"] == pytest.approx(MEAN) and config.image_std == pytest.approx(
        STD
    )
    reference = create_open_clip(biomedclip).visual.state_dict()
    for name, value in tower.visual.state_dict().items():
        assert torch.equal(value, reference[name]), name
    with torch.no_grad():
        assert tower(torch.zeros(1, 3, IMAGE, IMAGE)).hidden_states[0].shape == (1, PATCHES + 1, 64)


def test_weights_and_hidden_states_match_open_clip(loaded) -> None:
    tower, _, clip = loaded
    reference = clip.visual.state_dict()
    for name, value in tower.visual.state_dict().items():
        assert torch.equal(value, reference[name]), name
    trunk = clip.visual.trunk
    embeddings: list[torch.Tensor] = []
    hook = trunk.norm_pre.register_forward_hook(lambda m, i, o: embeddings.append(o))
    pixels = torch.randn(2, 3, HUB_IMAGE, HUB_IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = tower(pixels, output_hidden_states=True)
        final, blocks = trunk.forward_intermediates(
            pixels, output_fmt="NLC", return_prefix_tokens=True
        )
        hook.remove()
        encoded = clip.encode_image(pixels)
    assert len(out.hidden_states) == DEPTH + 1
    assert out.hidden_states[0].shape == (2, HUB_PATCHES + 1, WIDTH)
    torch.testing.assert_close(out.hidden_states[0], embeddings[0], rtol=0, atol=0)
    for k, (spatial, prefix) in enumerate(blocks, start=1):  # block k is hidden_states[k]
        torch.testing.assert_close(out.hidden_states[k], torch.cat([prefix, spatial], dim=1))
    torch.testing.assert_close(out.last_hidden_state, final)
    torch.testing.assert_close(out.pooler_output, trunk.forward_head(final))
    torch.testing.assert_close(tower.get_image_features(pixels), encoded)
    # transformers' Llava passes layer indices as output_hidden_states: all states come back.
    assert len(tower(pixels, output_hidden_states=-2).hidden_states) == DEPTH + 1
    assert tower(pixels, output_hidden_states=False).hidden_states is None
    assert isinstance(tower(pixels, return_dict=False), tuple)


def test_as_transformers_vit_gives_the_same_hidden_states(loaded) -> None:
    """The export's conversion: transformers' ViTModel with the tower's weights gives its
    hidden states (the fused qkv split into q / k / v, as transformers' own timm converter)."""
    from transformers import ViTModel

    from radixpert.models.open_clip_tower import to_transformers_vit

    tower, _, _ = loaded
    vit = to_transformers_vit(tower)
    assert isinstance(vit, ViTModel)
    assert vit.config.image_size == tower.config.image_size
    pixels = torch.randn(2, 3, HUB_IMAGE, HUB_IMAGE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = tower(pixels, output_hidden_states=True)
        theirs = vit(pixels, output_hidden_states=True)
    assert len(theirs.hidden_states) == len(ours.hidden_states) == DEPTH + 1
    for k, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=f"hidden state {k}")
    torch.testing.assert_close(theirs.last_hidden_state, ours.last_hidden_state,
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    # A ViT transformers cannot express is refused by name.
    import copy

    odd = copy.deepcopy(tower)
    odd.visual.trunk.blocks[0].ls1 = torch.nn.Linear(WIDTH, WIDTH)
    with pytest.raises(ValueError, match="ls1"):
        to_transformers_vit(odd)


def test_names_and_config_errors(tmp_path: Path, loaded) -> None:
    assert open_clip_model_name("hf-hub:microsoft/x") == "hf-hub:microsoft/x"
    with pytest.raises(ValueError, match="hf-hub"):
        open_clip_model_name("microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    with pytest.raises(ValueError, match=r"open_clip_config\.json missing"):
        open_clip_model_name(tmp_path)
    fields = loaded[0].config.to_dict()
    fields["hidden_size"] = 32
    with pytest.raises(ValueError, match="hidden_size"):
        OpenClipVisionModel(OpenClipVisionConfig.from_dict(fields))
    fields = loaded[0].config.to_dict()
    fields["image_size"] = 225
    with pytest.raises(ValueError, match="multiple of the patch"):
        OpenClipVisionModel(OpenClipVisionConfig.from_dict(fields))
    fields = loaded[0].config.to_dict()
    fields["open_clip_config"]["vision_cfg"]["timm_model_name"] = "vit_tiny_patch16_224"
    fields.update(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, image_size=160)
    with pytest.raises(ValueError, match="no dynamic_img_size"):
        OpenClipVisionModel(OpenClipVisionConfig.from_dict(fields))
    fields = loaded[0].config.to_dict()
    fields["open_clip_config"]["vision_cfg"]["timm_model_name"] = "test_resnet"
    with pytest.raises(ValueError, match="timm ViT"):
        OpenClipVisionModel(OpenClipVisionConfig.from_dict(fields))


def _llava_batch(image_tokens: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 60, (2, image_tokens + 8), generator=gen)
    ids[:, 0] = 1
    ids[:, 1 : 1 + image_tokens] = 63
    labels = ids.clone()
    labels[:, : 1 + image_tokens + 3] = -100
    pixels = torch.randn(2, 3, HUB_IMAGE, HUB_IMAGE, generator=gen)
    return {"input_ids": ids, "labels": labels, "pixel_values": pixels}


def _same_tower_weights(model: LlavaForConditionalGeneration, clip: torch.nn.Module) -> None:
    reference = clip.visual.state_dict()
    for name, value in model.model.vision_tower.visual.state_dict().items():
        assert torch.equal(value, reference[name]), name


def test_tiny_llava_with_the_tower_runs_and_round_trips(tmp_path: Path, loaded) -> None:
    tower, _, clip = loaded
    register()
    config = LlavaConfig(
        vision_config=tower.config,
        text_config=tiny_text_config(),
        image_token_index=63,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=HUB_PATCHES,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    assert isinstance(model.model.vision_tower, OpenClipVisionModel)
    model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    model.eval()
    batch = _llava_batch(HUB_PATCHES)
    with torch.no_grad():
        out = model(**batch)
        features = model.model.get_image_features(batch["pixel_values"]).pooler_output
        states = tower(batch["pixel_values"]).hidden_states[-2][:, 1:]  # CLS dropped
        projected = model.model.multi_modal_projector(states)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(torch.stack(list(features)), projected)

    model.save_pretrained(tmp_path / "llava")
    saved = json.loads((tmp_path / "llava" / "config.json").read_text())
    assert saved["vision_config"]["model_type"] == MODEL_TYPE
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    _same_tower_weights(again, clip)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, out.logits)
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "llava").vision_config,
                      OpenClipVisionConfig)  # fmt: skip


def test_hcf_llava_with_the_tower_round_trips(tmp_path: Path, loaded) -> None:
    tower, _, clip = loaded
    register()
    torch.manual_seed(0)
    model = build_llava(tower.config, tiny_text_config(), "hcf", image_token_index=63,
                        hcf_num_heads=4, hcf_gate_hidden=32)  # fmt: skip
    assert model.config.vision_feature_layer == [2, 4, 6]
    assert model.config.image_seq_length == HUB_PATCHES
    model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    batch = _llava_batch(HUB_PATCHES)
    batch["prompt_mask"] = batch["labels"] == -100  # as RadProcessor marks the prompt
    model.train()
    loss = model(**batch).loss
    loss.backward()
    grads = [p.grad for p in model.model.vision_tower.visual.trunk.blocks[0].parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad()
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    model.save_pretrained(tmp_path / "hcf")
    again = load_llava(tmp_path / "hcf").eval()
    _same_tower_weights(again, clip)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, logits)


def test_gradient_checkpointing_gives_the_same_gradients(loaded) -> None:
    tower, _, _ = loaded
    model = OpenClipVisionModel(tower.config)
    model.load_state_dict(tower.state_dict())
    model.train()
    pixels = torch.randn(2, 3, HUB_IMAGE, HUB_IMAGE, generator=torch.Generator().manual_seed(3))

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(pixels).hidden_states[-2].square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert model.gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)
    assert not any(re.search(r"blocks\.5\.", n) for n in plain)  # blocks past -2 get none


def test_vision_tower_kind_open_clip(loaded) -> None:
    from radixpert.models.vision import build_vision_tower

    tower = loaded[0]
    wrapped = build_vision_tower("open_clip", pretrained=f"hf-hub:{BIOMEDCLIP}", channels_in=1)
    assert (wrapped.num_layers, wrapped.num_patches) == (DEPTH, HUB_PATCHES)
    gray = torch.randn(2, 1, HUB_IMAGE, HUB_IMAGE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        low, last = wrapped(gray, layers=[2, -1])
        states = tower(gray.expand(-1, 3, -1, -1)).hidden_states
    torch.testing.assert_close(low, states[2][:, 1:])  # "patch": CLS dropped
    torch.testing.assert_close(last, states[-1][:, 1:])
    fresh = build_vision_tower("open_clip", tower.config.to_dict())
    assert isinstance(fresh.model, OpenClipVisionModel) and fresh.model.training
