"""RadProcessor and model bundles with the tiny llava and a tiny trained BPE tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from radixpert.models.bundle import export_merged, load_bundle, read_manifest, save_bundle
from radixpert.models.llava import TINY_IMAGE_TOKEN, tiny_llava
from radixpert.models.processor import IGNORE_INDEX, RadProcessor
from radixpert.models.trainability import LLAVA_COMPONENTS, ComponentSpec, apply_trainability

CORPUS = [
    "no acute cardiopulmonary process. the lungs are clear. heart size is normal.",
    "USER: describe the findings ASSISTANT: there is a small left pleural effusion.",
    "a chat between a curious human and an artificial intelligence assistant.",
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """A Metaspace BPE of 63 tokens plus ``<image>`` at id 63, the tiny llava's image token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=63, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], show_progress=False
    )
    tok.train_from_iterator(CORPUS * 10, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    assert fast.convert_tokens_to_ids("<image>") == TINY_IMAGE_TOKEN
    return fast


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


def test_processor_shapes_and_labels(tokenizer: Any) -> None:
    model = tiny_llava("mlp")
    proc = RadProcessor.from_model(model, tokenizer)
    batch = proc(_images(), _conversations())
    seq = model.config.image_seq_length
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    image = batch["input_ids"] == TINY_IMAGE_TOKEN
    assert image.sum(dim=1).tolist() == [seq, seq]  # second conversation got "<image>\n" added
    assert (batch["labels"][image] == IGNORE_INDEX).all()
    for row in range(2):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        kept = ids[labels != IGNORE_INDEX].tolist()
        answer = _conversations()[row][1]["value"]
        assert proc.decode(kept).strip() == answer
        assert kept[-1] == tokenizer.eos_token_id
        # Prompt (everything up to the first target) is masked.
        first = int((labels != IGNORE_INDEX).nonzero()[0])
        assert (labels[:first] == IGNORE_INDEX).all() and first > seq
    out = model(**batch)
    assert torch.isfinite(out.loss)


def test_processor_image_inputs_and_generation_prompt(tokenizer: Any) -> None:
    from PIL import Image

    proc = RadProcessor.from_model(tiny_llava("mlp"), tokenizer, template="llama3")
    gray = Image.fromarray((np.arange(24 * 16) % 256).astype(np.uint8).reshape(24, 16), "L")
    single = RadProcessor.from_model(
        tiny_llava("mlp"), tokenizer, channels=1, image_mean=[0.5], image_std=[0.25]
    )
    assert single.preprocess_image(gray).shape == (1, 32, 32)
    prompt = [[{"from": "human", "value": "<image>\nfindings?"}]]
    batch = proc([gray], prompt, add_generation_prompt=True)
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert (batch["labels"] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="placeholders"):
        proc([[gray, gray]], prompt, add_generation_prompt=True)


def _tiny_pair(tokenizer: Any, lora: bool, connector: str = "mlp") -> tuple[Any, RadProcessor]:
    torch.manual_seed(0)
    model = tiny_llava(connector)
    proc = RadProcessor.from_model(model, tokenizer)
    if lora:
        stage = {
            "vision_tower": ComponentSpec("frozen"),
            "connector": ComponentSpec("full"),
            "language_model": ComponentSpec("lora", rank=4, dropout=0.0),
        }
        model = apply_trainability(model, stage, LLAVA_COMPONENTS)
        with torch.no_grad():  # B starts at zero; make the adapter change the outputs
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
    return model.eval(), proc


def _logits_and_generation(model: Any, proc: RadProcessor) -> tuple[torch.Tensor, torch.Tensor]:
    train = proc(_images(), _conversations())
    prompt = proc(_images()[:1], [_conversations()[0][:1]], add_generation_prompt=True)
    with torch.no_grad():
        logits = model(**train).logits
        generated = model.generate(
            **{k: v for k, v in prompt.items() if k != "labels"},
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )
    return logits, generated


@pytest.mark.slow
@pytest.mark.parametrize(
    ("connector", "adapters"), [("mlp", "separate"), ("mlp", "merged"), ("hcf", "separate")]
)
def test_bundle_round_trip(tokenizer: Any, tmp_path: Path, connector: str, adapters: str) -> None:
    model, proc = _tiny_pair(tokenizer, lora=True, connector=connector)
    logits, generated = _logits_and_generation(model, proc)
    with model.disable_adapter():
        base_logits, _ = _logits_and_generation(model, proc)
    assert not torch.allclose(logits, base_logits, atol=1e-3)  # the adapter matters
    recipe = {"stage": "lora", "lr": 1e-4}
    log = [{"step": 1, "loss": 3.2}, {"step": 2, "loss": 3.1}]
    path = save_bundle(model, proc, tmp_path / "bundle", recipe, log, adapters=adapters)
    assert (path / "adapter").is_dir() == (adapters == "separate")
    assert json.loads((path / "recipe.json").read_text()) == recipe
    assert (path / "training_log.jsonl").read_text().count("\n") == 2
    manifest = read_manifest(path)
    assert (manifest["family"], manifest["connector"], manifest["adapters"]) == (
        "llava",
        connector,
        adapters,
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left

    loaded, loaded_proc = load_bundle(path)
    assert hasattr(loaded, "peft_config") == (adapters == "separate")
    new_logits, new_generated = _logits_and_generation(loaded, loaded_proc)
    assert torch.allclose(logits, new_logits, atol=1e-5)
    assert torch.equal(generated, new_generated)


@pytest.mark.slow
def test_bundle_overwrite_is_atomic_and_export_merged(tokenizer: Any, tmp_path: Path) -> None:
    from transformers import LlavaForConditionalGeneration

    model, proc = _tiny_pair(tokenizer, lora=True)
    logits, _ = _logits_and_generation(model, proc)
    src = tmp_path / "bundle"
    save_bundle(model, proc, src, {"old": True})
    save_bundle(model, proc, src, {"stage": "lora"}, adapters="separate")  # replaces
    assert json.loads((src / "recipe.json").read_text()) == {"stage": "lora"}
    out = export_merged(src, tmp_path / "export")
    plain = LlavaForConditionalGeneration.from_pretrained(out).eval()
    new_logits, _ = _logits_and_generation(plain, RadProcessor.from_pretrained(out))
    assert torch.allclose(logits, new_logits, atol=1e-5)
    assert json.loads((out / "recipe.json").read_text()) == {"stage": "lora"}


def test_save_bundle_rejects_bad_adapters(tokenizer: Any, tmp_path: Path) -> None:
    model, proc = _tiny_pair(tokenizer, lora=False)
    with pytest.raises(ValueError, match="adapters"):
        save_bundle(model, proc, tmp_path / "b", adapters="both")  # type: ignore[arg-type]
    assert not (tmp_path / "b").exists()
