"""RadScribe export for serving: a bundle as a folder that plain transformers loads with
``trust_remote_code``, in a process that never imports radixpert, giving the RadProcessor's
inputs, the in-process model's logits and its greedy tokens."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from radixpert.models import radscribe_modeling, radscribe_processing
from radixpert.models.bundle import load_bundle, save_bundle
from radixpert.models.encoder_decoder import tiny_encoder_decoder
from radixpert.models.processor import RadProcessor
from radixpert.models.radscribe_export import (
    MODELING_FILE,
    PROCESSING_FILE,
    export_radscribe,
    hf_processor_for,
)
from radixpert.vocab import OBSERVATIONS

CORPUS = [
    "no acute cardiopulmonary process. the lungs are clear. heart size is normal.",
    "indication: cough. describe the findings and the heart. compare with prior.",
    "there is a small left pleural effusion. no pneumothorax.",
]
MAX_NEW_TOKENS = 10
CASES = [("vit", True), ("vit", False), ("densenet", True)]

# Human turns become the joint encoder's prompt, the gpt turns the report.
CONVERSATIONS = [
    [{"from": "human", "value": "<image>\nIndication: cough."},
     {"from": "gpt", "value": "the lungs are clear."}],
    [{"from": "human", "value": "describe the findings"},
     {"from": "gpt", "value": "no acute process."},
     {"from": "human", "value": "and the heart? <image>"},
     {"from": "gpt", "value": "heart size is normal."}],
]  # fmt: skip
# The same conversations as chat messages (what a serving client sends).
MESSAGES = [
    [{"role": "user",
      "content": [{"type": "image"}, {"type": "text", "text": "Indication: cough."}]},
     {"role": "assistant", "content": "the lungs are clear."}],
    [{"role": "system", "content": "ignored by RadScribe"},
     {"role": "user", "content": "describe the findings"},
     {"role": "assistant", "content": "no acute process."},
     {"role": "user", "content": [{"type": "text", "text": "and the heart? "}, {"type": "image"}]}],
]  # fmt: skip
REPORTS = ["the lungs are clear.", "no acute process. heart size is normal."]

CHILD = """
import json, sys
import torch
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

spec = json.loads(open(sys.argv[1]).read())
results = {}
for name, folder in spec["folders"].items():
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)) is type(model)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    images = [torch.load(spec["array"]).numpy(), spec["png"]]
    prompts = [processor.apply_chat_template(m, tokenize=False) for m in spec["messages"]]
    train = processor(images=images, text=prompts, reports=spec["reports"])
    gen = processor(images=images, text=prompts)
    with torch.no_grad():
        out = model(**train)
        tokens = model.generate(**gen, max_new_tokens=spec["max_new_tokens"])
    results[name] = {"prompts": prompts, "train": dict(train), "gen": dict(gen),
                     "logits": out.logits, "label_logits": out.label_logits, "loss": out.loss,
                     "tokens": tokens, "id2label": model.config.id2label}
assert "radixpert" not in sys.modules, "the child imported radixpert"
torch.save(results, spec["out"])
"""


def _bpe(size: int, specials: list[str]) -> Any:
    """A Metaspace BPE of ``size`` tokens, ``specials`` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS * 10, trainer)
    names = {"<pad>": "pad_token", "</s>": "eos_token", "<unk>": "unk_token"}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **{names[s]: s for s in specials})


def _bundle(backbone: str, label_branch: bool, path: Path) -> Path:
    """A tiny RadScribe bundle, perturbed after the backbone so that greedy tokens vary (random
    init decodes one token over and over, whatever the image)."""
    torch.manual_seed(0)
    model = tiny_encoder_decoder(backbone, label_branch=label_branch)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith("backbone."):
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    joint, decoder = _bpe(64, ["<pad>", "<unk>"]), _bpe(64, ["<pad>", "</s>", "<unk>"])
    assert (decoder.pad_token_id, decoder.eos_token_id) == (0, 1)  # the tiny T5's ids
    processor = RadProcessor.from_model(model, joint, decoder_tokenizer=decoder)
    return save_bundle(model, processor, path)


def _images(tmp_path: Path) -> tuple[np.ndarray, Path]:
    """A non-square float radiograph (letterboxed) and a 16-bit PNG file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    array = rng.random((48, 40)).astype(np.float32)
    png = tmp_path / "cxr16.png"
    Image.fromarray((rng.random((30, 36)) * 65535).astype(np.uint16)).save(png)
    assert Image.open(png).mode.startswith("I")
    return array, png


def _without_last_answer(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    return conversation[:-1]


@pytest.mark.slow
def test_served_radscribe_matches_radixpert(tmp_path: Path) -> None:
    array, png = _images(tmp_path)
    torch.save(torch.from_numpy(array), tmp_path / "array.pt")
    folders, expected = {}, {}
    for backbone, label_branch in CASES:
        name = f"{backbone}-{'labels' if label_branch else 'plain'}"
        bundle = _bundle(backbone, label_branch, tmp_path / f"bundle-{name}")
        folder = tmp_path / f"export-{name}"
        folder.mkdir()
        export_radscribe(bundle, folder)
        written = {p.name for p in folder.iterdir()}
        assert {MODELING_FILE, PROCESSING_FILE, "model.safetensors", "generation_config.json",
                "processor_config.json", "chat_template.jinja"} <= written  # fmt: skip
        assert (folder / "decoder_tokenizer").is_dir()
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == radscribe_modeling.MODEL_TYPE
        assert set(config["auto_map"]) >= {
            "AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoProcessor"
        }  # fmt: skip
        folders[name] = str(folder)

        model, processor = load_bundle(bundle)
        images = [array, png]
        train = processor(images, CONVERSATIONS)
        gen = processor(images, [_without_last_answer(c) for c in CONVERSATIONS],
                        add_generation_prompt=True)  # fmt: skip
        with torch.no_grad():
            out = model(**train)
        tokens = model.generate(**gen, max_new_tokens=MAX_NEW_TOKENS)
        assert len({tuple(row) for row in tokens.tolist()}) == 2  # the two samples differ
        expected[name] = {"train": train, "gen": gen, "out": out, "tokens": tokens}

    spec = {"folders": folders, "array": str(tmp_path / "array.pt"), "png": str(png),
            "messages": MESSAGES, "reports": REPORTS, "max_new_tokens": MAX_NEW_TOKENS,
            "out": str(tmp_path / "served.pt")}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")  # the remote code lands here
    run = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "spec.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    served = torch.load(tmp_path / "served.pt", weights_only=False)

    for name, want in expected.items():
        got = served[name]
        assert got["prompts"] == ["Indication: cough.", "describe the findings and the heart?"]
        for batch, ref in (("train", want["train"]), ("gen", want["gen"])):
            assert set(got[batch]) == set(ref), (name, batch)
            for key, value in ref.items():
                if key == "pixel_values":
                    torch.testing.assert_close(got[batch][key], value, atol=1e-6, rtol=0)
                else:
                    assert torch.equal(got[batch][key], value), (name, batch, key)
        torch.testing.assert_close(got["logits"], want["out"].logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(got["loss"], want["out"].loss, atol=1e-5, rtol=0)
        if want["out"].label_logits is None:
            assert got["label_logits"] is None
        else:
            torch.testing.assert_close(got["label_logits"], want["out"].label_logits,
                                       atol=1e-5, rtol=0)  # fmt: skip
        assert torch.equal(got["tokens"], want["tokens"]), name
        id2label = {int(k): v for k, v in got["id2label"].items()}
        assert [id2label[i] for i in range(len(OBSERVATIONS))] == list(OBSERVATIONS)


def test_label_count_is_the_vocabulary() -> None:
    """The self-contained module cannot import radixpert.vocab: its label count is pinned."""
    assert len(OBSERVATIONS) == radscribe_modeling.NUM_LABELS
    with pytest.raises(ValueError, match="id2label"):
        radscribe_modeling.RadScribeConfig(id2label={0: "Atelectasis"})


@pytest.mark.parametrize("module", [radscribe_modeling, radscribe_processing])
def test_copied_modules_import_no_radixpert(module: Any) -> None:
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    allowed = {"__future__", "collections", "copy", "dataclasses", "json", "logging", "math",
               "pathlib", "typing", "numpy", "PIL", "torch", "transformers", "huggingface_hub",
               "safetensors"}  # fmt: skip
    assert roots <= allowed, roots - allowed


def test_wrapper_in_process_is_radscribe() -> None:
    """The transformers class runs RadScribe's own forward and matches its greedy tokens."""
    from transformers import GenerationConfig

    torch.manual_seed(0)
    model = tiny_encoder_decoder("vit", label_branch=True).eval()
    wrapped = radscribe_modeling.RadScribeForConditionalGeneration.from_radscribe(model).eval()
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32, generator=generator)
    ids = torch.randint(2, 64, (2, 5), generator=generator)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, -2:] = 0
    labels = torch.randint(2, 64, (2, 6), generator=generator)
    target = torch.zeros(2, 14)
    with torch.no_grad():
        ref = model(pixels, ids, mask, labels=labels, labels_target=target)
        out = wrapped(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels,
                      labels_target=target)  # fmt: skip
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.loss, ref.loss)
    wrapped.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1,
                                                 pad_token_id=0, do_sample=False)  # fmt: skip
    tokens = wrapped.generate(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                              max_new_tokens=6)  # fmt: skip
    assert torch.equal(tokens, model.generate(pixels, ids, mask, max_new_tokens=6))
    with pytest.raises(ValueError, match="output_attentions"):
        wrapped(pixel_values=pixels, labels=labels, output_attentions=True)


def test_processor_refuses_other_families() -> None:
    model = tiny_encoder_decoder("vit", label_branch=False)
    joint, decoder = _bpe(64, ["<pad>", "<unk>"]), _bpe(64, ["<pad>", "</s>", "<unk>"])
    processor = RadProcessor.from_model(model, joint, decoder_tokenizer=decoder)
    processor.config.family = "llava"
    from radixpert.errors import UsageError

    with pytest.raises(UsageError, match="not a RadScribe processor"):
        hf_processor_for(processor)
