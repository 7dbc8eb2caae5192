"""RadProcessor and model bundles for mllama (plain, HCF), llava-onevision and RadScribe on
tiny random-init models with tiny trained BPE tokenizers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from radixpert.models.bundle import export_merged, load_bundle, read_manifest, save_bundle
from radixpert.models.encoder_decoder import tiny_encoder_decoder
from radixpert.models.mllama import TINY_IMAGE_TOKEN as MLLAMA_IMAGE_TOKEN
from radixpert.models.mllama import tiny_mllama
from radixpert.models.onevision import TINY_IMAGE_TOKEN as OV_IMAGE_TOKEN
from radixpert.models.onevision import image_token_count, tiny_onevision
from radixpert.models.processor import IGNORE_INDEX, RadProcessor
from radixpert.models.trainability import (
    MLLAMA_COMPONENTS,
    ONEVISION_COMPONENTS,
    ComponentSpec,
    apply_trainability,
)

CORPUS = [
    "no acute cardiopulmonary process. the lungs are clear. heart size is normal.",
    "USER: describe the findings ASSISTANT: there is a small left pleural effusion.",
    "a chat between a curious human and an artificial intelligence assistant.",
]


def _bpe(size: int, specials: list[str], added: list[str]) -> Any:
    """A Metaspace BPE of ``size`` tokens (``specials`` first) plus ``added`` after it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS * 10, trainer)
    assert tok.get_vocab_size() == size
    names = {"<pad>": "pad_token", "<s>": "bos_token", "</s>": "eos_token", "<unk>": "unk_token"}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, **{names[s]: s for s in specials if s in names}
    )
    if added:
        fast.add_special_tokens({"additional_special_tokens": added})
    return fast


@pytest.fixture(scope="module")
def mllama_tokenizer() -> Any:
    """64 tokens, then Mllama's ``<|image|>`` at 64 (= vocab_size, the tiny image token)."""
    tok = _bpe(64, ["<pad>", "<s>", "</s>", "<unk>"], ["<|image|>"])
    assert tok.convert_tokens_to_ids("<|image|>") == MLLAMA_IMAGE_TOKEN
    return tok


@pytest.fixture(scope="module")
def onevision_tokenizer() -> Any:
    """62 tokens, then ``<video>`` at 62 and ``<image>`` at 63 (the tiny model's ids)."""
    tok = _bpe(62, ["<pad>", "<s>", "</s>", "<unk>"], ["<video>", "<image>"])
    assert tok.convert_tokens_to_ids("<image>") == OV_IMAGE_TOKEN
    return tok


@pytest.fixture(scope="module")
def radscribe_tokenizers() -> tuple[Any, Any]:
    """Joint-encoder (prompt) and decoder (report, T5 ids: pad 0, eos 1) tokenizers of 64."""
    joint = _bpe(64, ["<pad>", "<unk>"], [])
    decoder = _bpe(64, ["<pad>", "</s>", "<unk>"], [])
    assert (decoder.pad_token_id, decoder.eos_token_id) == (0, 1)
    return joint, decoder


def _conversations() -> list[list[dict[str, str]]]:
    return [
        [
            {"from": "human", "value": "<image>\ndescribe the findings"},
            {"from": "gpt", "value": "the lungs are clear."},
        ],
        [
            {"from": "human", "value": "describe the findings"},
            {"from": "gpt", "value": "small left pleural effusion."},
        ],
    ]


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((40, 30), dtype=np.float32), (rng.random((20, 50)) * 255).astype(np.uint8)]


def _lora(model: Any, components: dict[str, Any]) -> Any:
    stage = {
        "vision_tower": ComponentSpec("frozen"),
        "connector": ComponentSpec("full"),
        "language_model": ComponentSpec("lora", rank=4, dropout=0.0),
    }
    model = apply_trainability(model, stage, components)
    with torch.no_grad():  # B starts at zero; make the adapter change the outputs
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


def _pair(family: str, tokenizers: dict[str, Any], lora: bool) -> tuple[Any, RadProcessor]:
    torch.manual_seed(0)
    if family in ("mllama", "mllama_hcf"):
        model = tiny_mllama(hcf=family == "mllama_hcf")
        proc = RadProcessor.from_model(model, tokenizers["mllama"])
        components = MLLAMA_COMPONENTS
    elif family == "llava_onevision":
        model = tiny_onevision()
        proc = RadProcessor.from_model(model, tokenizers["onevision"])
        components = ONEVISION_COMPONENTS
    else:
        model = tiny_encoder_decoder("vit")
        joint, decoder = tokenizers["radscribe"]
        proc = RadProcessor.from_model(model, joint, decoder_tokenizer=decoder)
        components = {}
    if lora:
        model = _lora(model, components)
    return model.eval(), proc


@pytest.fixture(scope="module")
def tokenizers(
    mllama_tokenizer: Any, onevision_tokenizer: Any, radscribe_tokenizers: tuple[Any, Any]
) -> dict[str, Any]:
    return {
        "mllama": mllama_tokenizer,
        "onevision": onevision_tokenizer,
        "radscribe": radscribe_tokenizers,
    }


def _logits_and_generation(model: Any, proc: RadProcessor) -> tuple[torch.Tensor, torch.Tensor]:
    train = proc(_images(), _conversations())
    prompt = proc(_images()[:1], [_conversations()[0][:1]], add_generation_prompt=True)
    prompt = {k: v for k, v in prompt.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**train).logits
        if proc.config.family == "radscribe":
            generated = model.generate(**prompt, max_new_tokens=6)
        else:
            generated = model.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    return logits, generated


@pytest.mark.slow
def test_mllama_processor(tokenizers: dict[str, Any]) -> None:
    model, proc = _pair("mllama", tokenizers, lora=False)
    assert (proc.config.template, proc.config.image_token) == ("llama3", "<|image|>")
    batch = proc(_images(), _conversations())
    ids = batch["input_ids"]
    assert batch["pixel_values"].shape == (2, 1, 4, 3, 32, 32)
    assert (batch["pixel_values"][:, :, 1:] == 0).all()  # one tile, the rest empty
    assert batch["aspect_ratio_ids"].tolist() == [[1], [1]]
    assert batch["aspect_ratio_mask"].tolist() == [[[1, 0, 0, 0]], [[1, 0, 0, 0]]]
    image = ids == MLLAMA_IMAGE_TOKEN
    assert image.sum(dim=1).tolist() == [1, 1]
    assert (batch["labels"][image] == IGNORE_INDEX).all()
    cross = batch["cross_attention_mask"]
    assert cross.shape == (*ids.shape, 1, 4)
    for row in range(2):
        pos = int(image[row].nonzero()[0])
        assert (cross[row, :pos] == 0).all() and (cross[row, pos:, 0, 0] == 1).all()
        assert (cross[row, :, :, 1:] == 0).all()
        kept = ids[row][batch["labels"][row] != IGNORE_INDEX].tolist()
        # The answer and the end-of-turn marker (plain text to this tiny tokenizer).
        answer = _conversations()[row][1]["value"]
        assert proc.decode(kept).replace(" ", "").startswith(answer.replace(" ", ""))
    out = model(**batch)
    assert torch.isfinite(out.loss)
    other = dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))
    with torch.no_grad():
        assert (model(**other).logits - out.logits).abs().max() > 1e-4  # the image is seen


def test_hcf_processor_marks_the_prompt(tokenizers: dict[str, Any]) -> None:
    """An HCF model's processor says which tokens are prompt: the HCF never reads an answer,
    with labels (training) or without (scoring a report)."""
    model, proc = _pair("mllama_hcf", tokenizers, lora=False)
    assert proc.config.prompt_mask
    batch = proc(_images(), _conversations())
    prompt, labels = batch["prompt_mask"], batch["labels"]
    assert torch.equal(prompt, (labels == IGNORE_INDEX) & batch["attention_mask"].bool())
    assert prompt.any(dim=1).all() and not prompt[labels != IGNORE_INDEX].any()
    with torch.no_grad():
        trained = model(**batch)
        scored = model(**{k: v for k, v in batch.items() if k != "labels"})
    torch.testing.assert_close(scored.logits, trained.logits, rtol=0, atol=0)
    generation = proc(_images()[:1], [_conversations()[0][:1]], add_generation_prompt=True)
    assert torch.equal(generation["prompt_mask"], generation["attention_mask"].bool())
    _, plain = _pair("mllama", tokenizers, lora=False)
    assert "prompt_mask" not in plain(_images(), _conversations())


def test_onevision_processor(tokenizers: dict[str, Any]) -> None:
    model, proc = _pair("llava_onevision", tokenizers, lora=False)
    batch = proc(_images(), _conversations())
    assert batch["pixel_values"].shape == (2, 2, 3, 32, 32)
    assert batch["image_sizes"].tolist() == [[32, 32], [32, 32]]
    count = image_token_count(model, batch["pixel_values"], batch["image_sizes"])
    assert proc.config.image_seq_length == count[0] == count[1]
    image = batch["input_ids"] == OV_IMAGE_TOKEN
    assert image.sum(dim=1).tolist() == count
    assert (batch["labels"][image] == IGNORE_INDEX).all()
    out = model(**batch)
    assert torch.isfinite(out.loss)


def test_radscribe_processor(tokenizers: dict[str, Any]) -> None:
    model, proc = _pair("radscribe", tokenizers, lora=False)
    joint, decoder = tokenizers["radscribe"]
    batch = proc(_images(), _conversations())
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    prompt = joint("describe the findings", add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][1].tolist() == prompt  # "<image>" left out of the prompt
    assert batch["attention_mask"].all()
    for row in range(2):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert kept[-1] == decoder.eos_token_id
        assert proc.decode(kept).strip() == _conversations()[row][1]["value"]
    out = model(**batch)
    assert torch.isfinite(out.loss)
    prompt_batch = proc(_images()[:1], [_conversations()[0][:1]], add_generation_prompt=True)
    assert "labels" not in prompt_batch


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "lora", "adapters"),
    [
        ("mllama", True, "separate"),
        ("mllama", True, "merged"),
        ("mllama_hcf", True, "separate"),
        ("llava_onevision", True, "separate"),
        ("llava_onevision", False, "separate"),
        ("radscribe", False, "separate"),
    ],
)
def test_bundle_round_trip(
    tokenizers: dict[str, Any], tmp_path: Path, family: str, lora: bool, adapters: str
) -> None:
    model, proc = _pair(family, tokenizers, lora=lora)
    logits, generated = _logits_and_generation(model, proc)
    if lora:
        with model.disable_adapter():
            base_logits, _ = _logits_and_generation(model, proc)
        assert not torch.allclose(logits, base_logits, atol=1e-3)  # the adapter matters
    recipe = {"stage": family}
    log = [{"step": 1, "loss": 3.2}]
    path = save_bundle(model, proc, tmp_path / "bundle", recipe, log, adapters=adapters)
    manifest = read_manifest(path)
    expected = {
        "mllama": ("mllama", "linear"),
        "mllama_hcf": ("mllama", "hcf"),
        "llava_onevision": ("llava_onevision", "mlp"),
        "radscribe": ("radscribe", "vit"),
    }[family]
    assert (manifest["family"], manifest["connector"]) == expected
    assert manifest["adapters"] == (adapters if lora else "none")
    assert (path / "adapter").is_dir() == (lora and adapters == "separate")
    assert json.loads((path / "recipe.json").read_text()) == recipe
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    loaded, loaded_proc = load_bundle(path)
    assert hasattr(loaded, "peft_config") == (lora and adapters == "separate")
    assert loaded_proc.config == proc.config
    new_logits, new_generated = _logits_and_generation(loaded, loaded_proc)
    torch.testing.assert_close(new_logits, logits, rtol=0, atol=1e-5)
    assert torch.equal(generated, new_generated)


@pytest.mark.slow
def test_radscribe_lora_bundle_and_export(tokenizers: dict[str, Any], tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model, proc = _pair("radscribe", tokenizers, lora=False)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q", "v"], lora_dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.eval()
    logits, generated = _logits_and_generation(model, proc)
    src = save_bundle(model, proc, tmp_path / "bundle", {"stage": "lora"})
    assert (src / "adapter").is_dir()
    loaded, loaded_proc = load_bundle(src)
    new_logits, new_generated = _logits_and_generation(loaded, loaded_proc)
    torch.testing.assert_close(new_logits, logits, rtol=0, atol=1e-5)
    assert torch.equal(generated, new_generated)
    out = export_merged(src, tmp_path / "export")
    assert read_manifest(out)["adapters"] == "none"  # folded in: plain weights
    assert not (out / "adapter").exists()
    merged, merged_proc = load_bundle(out)
    torch.testing.assert_close(
        _logits_and_generation(merged, merged_proc)[0], logits, atol=1e-5, rtol=0
    )


@pytest.mark.slow
def test_mllama_export_merged_loads_with_transformers(
    tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    from transformers import MllamaForConditionalGeneration

    model, proc = _pair("mllama", tokenizers, lora=True)
    logits, _ = _logits_and_generation(model, proc)
    src = save_bundle(model, proc, tmp_path / "bundle", adapters="separate")
    out = export_merged(src, tmp_path / "export")
    plain = MllamaForConditionalGeneration.from_pretrained(out).eval()
    new_logits, _ = _logits_and_generation(plain, RadProcessor.from_pretrained(out))
    torch.testing.assert_close(new_logits, logits, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_mllama_processor_pads_missing_images(tokenizers: dict[str, Any]) -> None:
    model, proc = _pair("mllama", tokenizers, lora=False)
    conversations = [
        [
            {"from": "human", "value": "<image>\n<image>\ncompare"},
            {"from": "gpt", "value": "the lungs are clear."},
        ],
        [
            {"from": "human", "value": "<image>\nfindings?"},
            {"from": "gpt", "value": "small left pleural effusion."},
        ],
    ]
    images = [_images(), _images()[:1]]
    batch = proc(images, conversations)
    assert batch["pixel_values"].shape == (2, 2, 4, 3, 32, 32)
    assert batch["aspect_ratio_ids"].tolist() == [[1, 1], [1, 0]]
    assert (batch["pixel_values"][1, 1] == 0).all()
    cross = batch["cross_attention_mask"]
    first, second = (batch["input_ids"][0] == MLLAMA_IMAGE_TOKEN).nonzero().flatten().tolist()
    assert cross[0, first:second, 0, 0].all() and not cross[0, second:, 0].any()
    assert cross[0, second:, 1, 0].all() and not cross[1, :, 1].any()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)
