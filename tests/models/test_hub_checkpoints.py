"""The tiny hub checkpoints (tests/hub) load by their real hub ids, offline, through the real
classes (AutoProcessor, AutoModelForImageTextToText, AutoModel, AutoTokenizer, open_clip, timm),
and run a forward pass on what their own processors make of a phantom radiograph and a chat
rendered with their own chat template."""

from __future__ import annotations

import json

import pytest
import torch

from tests.hub import BUILDERS, hub_cache

QUESTION = "Describe the findings."


@pytest.fixture(scope="module")
def phantom():
    """A grayscale phantom chest radiograph (64 px) as the RGB image a user would send."""
    from PIL import Image

    from radixpert.data.phantoms import generate_phantom

    pixels, truth = generate_phantom(3, size=64)
    return Image.fromarray(pixels).convert("RGB"), truth


def _chat(answer: str | None = None) -> list[dict]:
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    if answer is not None:
        chat.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return chat


def _vlm(repo_id: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(repo_id)
    model = AutoModelForImageTextToText.from_pretrained(repo_id).eval()
    return processor, model


def _image_changes_logits(model, inputs) -> bool:
    with torch.no_grad():
        a = model(**inputs).logits
        other = dict(inputs)
        other["pixel_values"] = torch.flip(inputs["pixel_values"], dims=[-1]) * -1.0
        b = model(**other).logits
    return not torch.allclose(a, b)


def check_mllama(repo_id, phantom):
    image, truth = phantom
    processor, model = _vlm(repo_id)
    assert type(model).__name__ == "MllamaForConditionalGeneration"
    assert type(processor).__name__ == "MllamaProcessor"
    tok = processor.tokenizer
    vocab = model.config.text_config.vocab_size
    assert tok.convert_tokens_to_ids("<|image|>") == vocab == model.config.image_token_index
    assert tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|eot_id|>"
    assert tok.pad_token == "<|finetune_right_pad_id|>"
    prompt = processor.apply_chat_template(_chat(truth.impression))
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
    assert "<|image|>" + QUESTION + "<|eot_id|>" in prompt
    inputs = processor(images=image, text=prompt, add_special_tokens=False, return_tensors="pt")
    assert inputs["input_ids"][0, 0].item() == tok.bos_token_id
    assert (inputs["input_ids"] == vocab).sum().item() == 1
    tile = processor.image_processor.size["height"]
    assert tuple(inputs["pixel_values"].shape) == (1, 1, 4, 3, tile, tile)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], vocab)
    assert model.get_input_embeddings().num_embeddings == vocab + 8
    assert _image_changes_logits(model, inputs)


def check_llava(repo_id, phantom):
    image, _ = phantom
    processor, model = _vlm(repo_id)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    assert type(processor.image_processor).__name__.startswith("CLIPImageProcessor")
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == model.config.image_token_index
    assert tok.pad_token == "<pad>" and tok.pad_token_id == model.config.image_token_index + 1
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    prompt = processor.apply_chat_template(_chat(), add_generation_prompt=True)
    assert prompt == f"USER: <image>\n{QUESTION} ASSISTANT:"
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    assert inputs["input_ids"][0, 0].item() == tok.bos_token_id
    side = model.config.vision_config.image_size
    assert tuple(inputs["pixel_values"].shape) == (1, 3, side, side)
    patches = (side // model.config.vision_config.patch_size) ** 2  # CLS dropped ("default")
    assert (inputs["input_ids"] == model.config.image_token_index).sum().item() == patches
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert _image_changes_logits(model, inputs)


def check_onevision(repo_id, phantom):
    image, _ = phantom
    processor, model = _vlm(repo_id)
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert type(processor).__name__ == "LlavaOnevisionProcessor"
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == model.config.image_token_index
    assert tok.convert_tokens_to_ids("<video>") == model.config.video_token_index
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    assert tok.convert_tokens_to_ids(specials) == list(range(len(tok) - 5, len(tok)))
    prompt = processor.apply_chat_template(_chat(), add_generation_prompt=True)
    assert prompt == (f"<|im_start|>user\n<image>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    side = model.config.vision_config.image_size
    # anyres: the 64 px phantom fits the 2 x 2 grid, so 4 tiles and the resized whole image.
    assert tuple(inputs["pixel_values"].shape) == (1, 5, 3, side, side)
    with torch.no_grad():
        features = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]
        )
        logits = model(**inputs).logits
    count = sum(f.shape[0] for f in getattr(features, "pooler_output", features))
    assert (inputs["input_ids"] == model.config.image_token_index).sum().item() == count
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert _image_changes_logits(model, inputs)


def _causal_lm(repo_id):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(repo_id), AutoModelForCausalLM.from_pretrained(repo_id)


def check_vicuna(repo_id, phantom):
    _, truth = phantom
    tok, model = _causal_lm(repo_id)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<0x00>"]) == [0, 1, 2, 3]
    inputs = tok(truth.findings, return_tensors="pt")
    assert inputs["input_ids"][0, 0].item() == 1
    assert tok.decode(inputs["input_ids"][0], skip_special_tokens=True) == truth.findings
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(tok))


def check_qwen2(repo_id, phantom):
    _, truth = phantom
    tok, model = _causal_lm(repo_id)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
    specials = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert specials == [len(tok) - 3, len(tok) - 2, len(tok) - 1]
    assert model.config.eos_token_id == specials[2]
    chat = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": truth.impression},
    ]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{truth.impression}<|im_end|>\n"
    )
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert (ids == tok.convert_tokens_to_ids("<|im_start|>")).sum().item() == 3
    assert tok.decode(ids[0]) == text
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert model.config.vocab_size >= len(tok)


def check_clip(repo_id, phantom):
    from transformers import AutoModel, AutoProcessor

    image, truth = phantom
    processor, model = AutoProcessor.from_pretrained(repo_id), AutoModel.from_pretrained(repo_id)
    assert (type(processor).__name__, type(model).__name__) == ("CLIPProcessor", "CLIPModel")
    tok = processor.tokenizer
    inputs = processor(
        text=[truth.impression, QUESTION], images=image, padding=True, return_tensors="pt"
    )
    ids = inputs["input_ids"]
    assert (ids[:, 0] == tok.convert_tokens_to_ids("<|startoftext|>")).all()
    assert tok.convert_tokens_to_ids("<|endoftext|>") == len(tok) - 1 == tok.pad_token_id
    # CLIP's decoder turns every end of word (</w>) into a space, before punctuation too.
    decoded = tok.decode(ids[0], skip_special_tokens=True)
    assert decoded.replace(" ", "") == truth.impression.lower().replace(" ", "")
    side = model.config.vision_config.image_size
    assert tuple(inputs["pixel_values"].shape) == (1, 3, side, side)
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits_per_image.shape == (1, 2)
    assert out.image_embeds.shape == (1, model.config.projection_dim)


def check_siglip(repo_id, phantom):
    from transformers import AutoModel, AutoProcessor

    image, truth = phantom
    processor, model = AutoProcessor.from_pretrained(repo_id), AutoModel.from_pretrained(repo_id)
    assert (type(processor).__name__, type(model).__name__) == ("SiglipProcessor", "SiglipModel")
    tok = processor.tokenizer
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("</s>", "</s>", "<unk>")
    # SigLIP was trained on text padded to its full length (64).
    inputs = processor(
        text=[truth.impression], images=image, padding="max_length", return_tensors="pt"
    )
    assert inputs["input_ids"].shape == (1, model.config.text_config.max_position_embeddings)
    side = model.config.vision_config.image_size
    assert tuple(inputs["pixel_values"].shape) == (1, 3, side, side)
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits_per_image.shape == (1, 1)


def check_dinov2(repo_id, phantom):
    from transformers import AutoImageProcessor, AutoModel

    image, _ = phantom
    processor = AutoImageProcessor.from_pretrained(repo_id)
    model = AutoModel.from_pretrained(repo_id)
    assert type(processor).__name__.startswith("BitImageProcessor")
    assert type(model).__name__ == "Dinov2Model"
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    side, patch = model.config.image_size, model.config.patch_size
    assert tuple(pixels.shape) == (1, 3, side, side)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    tokens = 1 + (side // patch) ** 2
    assert out.last_hidden_state.shape == (1, tokens, model.config.hidden_size)


def check_biomedclip(repo_id, phantom):
    import open_clip

    image, truth = phantom
    model, preprocess = open_clip.create_model_from_pretrained(f"hf-hub:{repo_id}")
    tokenizer = open_clip.get_tokenizer(f"hf-hub:{repo_id}")
    assert type(model).__name__ == "CustomTextCLIP"
    pixels = preprocess(image).unsqueeze(0)
    assert tuple(pixels.shape) == (1, 3, 224, 224)
    text = tokenizer([truth.impression, QUESTION])
    assert tuple(text.shape) == (2, 256)
    assert (text[:, 0] == tokenizer.tokenizer.cls_token_id).all()
    with torch.no_grad():
        image_features = model.encode_image(pixels, normalize=True)
        text_features = model.encode_text(text, normalize=True)
    assert image_features.shape == text_features[:1].shape == (1, 512)


def check_biomedbert(repo_id, phantom):
    from transformers import AutoModel, AutoTokenizer

    _, truth = phantom
    tok, model = AutoTokenizer.from_pretrained(repo_id), AutoModel.from_pretrained(repo_id)
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [
        0,
        1,
        2,
        3,
        4,
    ]
    inputs = tok(truth.findings, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert out.last_hidden_state.shape == (
        1,
        inputs["input_ids"].shape[1],
        model.config.hidden_size,
    )


def check_bert(repo_id, phantom):
    from transformers import AutoModel, AutoTokenizer

    _, truth = phantom
    tok, model = AutoTokenizer.from_pretrained(repo_id), AutoModel.from_pretrained(repo_id)
    assert type(model).__name__ == "BertModel"
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [
        0,
        100,
        101,
        102,
        103,
    ]
    inputs = tok(truth.findings, truth.impression, return_tensors="pt")
    assert inputs["input_ids"][0, 0].item() == 101
    assert tok.decode(inputs["input_ids"][0], skip_special_tokens=True).startswith(
        truth.findings.lower()[:10]
    )
    with torch.no_grad():
        out = model(**inputs)
    assert out.pooler_output.shape == (1, model.config.hidden_size)


def check_densenet(repo_id, phantom):
    import timm

    image, _ = phantom
    model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    config = timm.data.resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 224, 224) and config["crop_pct"] == 0.875
    pixels = timm.data.create_transform(**config)(image).unsqueeze(0)
    with torch.no_grad():
        logits = model(pixels)
    assert logits.shape == (1, 1000)
    # The weights came from the hub file, not a fresh random init.
    again = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(again(pixels), logits)


def check_vit(repo_id, phantom):
    from transformers import AutoImageProcessor, AutoModel

    image, _ = phantom
    processor, model = (
        AutoImageProcessor.from_pretrained(repo_id),
        AutoModel.from_pretrained(repo_id),
    )
    assert type(model).__name__ == "ViTModel"
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    side = model.config.image_size
    assert tuple(pixels.shape) == (1, 3, side, side)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    tokens = 1 + (side // model.config.patch_size) ** 2
    assert out.last_hidden_state.shape == (1, tokens, model.config.hidden_size)
    assert out.pooler_output.shape == (1, model.config.hidden_size)


def check_resnet(repo_id, phantom):
    from transformers import AutoImageProcessor, AutoModel

    image, _ = phantom
    processor, model = (
        AutoImageProcessor.from_pretrained(repo_id),
        AutoModel.from_pretrained(repo_id),
    )
    assert type(model).__name__ == "ResNetModel"
    assert type(processor).__name__.startswith("ConvNextImageProcessor")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    assert out.pooler_output.shape == (1, model.config.hidden_sizes[-1], 1, 1)


def check_t5(repo_id, phantom):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    _, truth = phantom
    tok = AutoTokenizer.from_pretrained(repo_id)
    model = AutoModelForSeq2SeqLM.from_pretrained(repo_id)
    assert type(model).__name__ == "T5ForConditionalGeneration"
    assert tok.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    inputs = tok([truth.findings], return_tensors="pt")
    labels = tok([truth.impression], return_tensors="pt")["input_ids"]
    assert inputs["input_ids"][0, -1].item() == 1 and labels[0, -1].item() == 1
    assert tok.decode(labels[0], skip_special_tokens=True) == truth.impression
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    assert out.logits.shape == (1, labels.shape[1], model.config.vocab_size)
    assert torch.isfinite(out.loss)


def check_marian(repo_id, phantom):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(repo_id)
    model = AutoModelForSeq2SeqLM.from_pretrained(repo_id)
    assert type(model).__name__ == "MarianMTModel" and type(tok).__name__ == "MarianTokenizer"
    assert tok.convert_tokens_to_ids(["</s>", "<unk>"]) == [0, 1]
    assert tok.pad_token_id == len(tok) - 1 == model.config.decoder_start_token_id
    inputs = tok(["cardiomegalia . derrame pleural derecho ."], return_tensors="pt")
    assert inputs["input_ids"][0, -1].item() == 0  # </s> closes the source
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, num_beams=1)
    assert out[0, 0].item() == model.config.decoder_start_token_id
    assert isinstance(tok.decode(out[0], skip_special_tokens=True), str)


CHECKS = {
    "Helsinki-NLP/opus-mt-es-en": check_marian,
    "meta-llama/Llama-3.2-11B-Vision-Instruct": check_mllama,
    "llava-hf/llava-1.5-7b-hf": check_llava,
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": check_onevision,
    "lmsys/vicuna-7b-v1.5": check_vicuna,
    "Qwen/Qwen2-7B-Instruct": check_qwen2,
    "openai/clip-vit-large-patch14-336": check_clip,
    "google/siglip-so400m-patch14-384": check_siglip,
    "facebook/dinov2-base": check_dinov2,
    "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224": check_biomedclip,
    "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract": check_biomedbert,
    "timm/densenet121.tv_in1k": check_densenet,
    "google/vit-base-patch16-224-in21k": check_vit,
    "microsoft/resnet-50": check_resnet,
    "google-bert/bert-base-uncased": check_bert,
    "google-t5/t5-small": check_t5,
    "luqh/ClinicalT5-base": check_t5,
}
# Repositories the hub holds sharded, with their number of shards.
SHARDED = {
    "meta-llama/Llama-3.2-11B-Vision-Instruct": 5,
    "llava-hf/llava-1.5-7b-hf": 3,
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": 4,
    "lmsys/vicuna-7b-v1.5": 2,
    "Qwen/Qwen2-7B-Instruct": 4,
}


@pytest.mark.parametrize("repo_id", sorted(CHECKS))
def test_loads_by_hub_id_and_runs(hub_checkpoint, repo_id, phantom):
    hub_checkpoint(repo_id)
    CHECKS[repo_id](repo_id, phantom)


@pytest.mark.parametrize("repo_id", sorted(SHARDED))
def test_sharded_repositories_have_an_index(hub_checkpoint, repo_id):
    snapshot = hub_checkpoint(repo_id)
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    n = SHARDED[repo_id]
    assert shards == {f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)}
    assert all((snapshot / name).is_file() for name in shards)
    assert not (snapshot / "model.safetensors").exists()


def test_every_repository_has_a_check():
    from tests.hub import _load_builders

    _load_builders()
    assert sorted(BUILDERS) == sorted(CHECKS)


def test_second_call_reuses_the_cache(hub_checkpoint, monkeypatch):
    repo_id = "meta-llama/Llama-3.2-11B-Vision-Instruct"
    first = hub_checkpoint(repo_id)

    def rebuild(snapshot):
        raise AssertionError(f"{repo_id} was built twice")

    monkeypatch.setitem(BUILDERS, repo_id, rebuild)
    assert hub_checkpoint(repo_id) == first
    assert first.parent.parent == hub_cache() / "models--meta-llama--Llama-3.2-11B-Vision-Instruct"
    assert (first.parent.parent / "refs" / "main").read_text() == first.name
