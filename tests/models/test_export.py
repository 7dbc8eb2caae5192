"""``radixpert model export``: bundles of every image-text-to-text family, LoRA merged, loaded by
plain transformers in a fresh Python process that never imports radixpert."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from radixpert.errors import UsageError
from radixpert.models.bundle import load_bundle, save_bundle
from radixpert.models.export import (
    HCF_MODULE_FILE,
    chat_template_for,
    export_for_serving,
    hf_processor_for,
)
from radixpert.models.llava import tiny_llava
from radixpert.models.mllama import tiny_mllama
from radixpert.models.onevision import tiny_onevision
from radixpert.models.processor import RadProcessor
from radixpert.models.trainability import (
    LLAVA_COMPONENTS,
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
SPECIALS = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
LLAMA3_BOS = "<|begin_of_text|>"
# family -> (builder, components, tokenizer size before the added tokens, added tokens, bos)
FAMILIES: dict[str, tuple[Any, Any, int, list[str], str]] = {
    "llava": (lambda: tiny_llava("mlp"), LLAVA_COMPONENTS, 63, ["<image>"], "<s>"),
    "llava_hcf": (lambda: tiny_llava("hcf"), LLAVA_COMPONENTS, 63, ["<image>"], "<s>"),
    "mllama": (tiny_mllama, MLLAMA_COMPONENTS, 64, ["<|image|>"], LLAMA3_BOS),
    "mllama_hcf": (lambda: tiny_mllama(hcf=True), MLLAMA_COMPONENTS, 64, ["<|image|>"], LLAMA3_BOS),
    "llava_onevision": (tiny_onevision, ONEVISION_COMPONENTS, 62, ["<video>", "<image>"], "<s>"),
}
PROMPT = "describe the findings"


def _tokenizer(
    size: int, added: list[str], pre_tokenizer: str = "isolated", bos: str = "<s>"
) -> Any:
    """A BPE of ``size`` tokens (the llama3 markers among its specials) plus ``added``.

    ``bos``: ``"<|begin_of_text|>"`` for the llama3 families, as Llama 3's tokenizer has it.
    ``"isolated"`` splits whitespace into tokens of its own, so a text encodes the same in
    pieces as whole; ``"metaspace"`` is the Llama-style pre-tokenizer of the other tests.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if pre_tokenizer == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
    else:
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s"), behavior="isolated")
        tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS * 10, trainer)
    assert tok.get_vocab_size() == size
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token=bos,
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.add_special_tokens({"additional_special_tokens": added})
    return fast


def _image(side: int = 32, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((side, side)) * 255).astype(np.uint8)


def _lora_pair(family: str) -> tuple[Any, RadProcessor]:
    """A tiny model of ``family`` with a LoRA adapter whose B weights are non-zero."""
    build, components, size, added, bos = FAMILIES[family]
    torch.manual_seed(0)
    model = build()
    processor = RadProcessor.from_model(model, _tokenizer(size, added, bos=bos))
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
    return model.eval(), processor


def _inputs(processor: RadProcessor) -> dict[str, torch.Tensor]:
    """Two left-padded prompts, each with one square image at the tower's size."""
    size = processor.config.image_size
    conversations = [
        [{"from": "human", "value": f"<image>\n{PROMPT}"}],
        [{"from": "human", "value": "<image>\nthe lungs?"}],
    ]
    batch = processor([_image(size, 1), _image(size, 2)], conversations, add_generation_prompt=True)
    batch.pop("labels")
    return batch


CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root = sys.argv[1]
    results = {}
    for name in json.loads(open(f"{root}/families.json").read()):
        folder = f"{root}/{name}/export"
        remote = "auto_map" in json.loads(open(f"{folder}/config.json").read())
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=remote)
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=remote)
        inputs = torch.load(f"{root}/{name}/inputs.pt")
        with torch.no_grad():
            logits = model.eval()(**inputs).logits
        image = Image.open(f"{root}/{name}/image.png")
        messages = [{"role": "user", "content": [
            {"type": "image", "image": image}, {"type": "text", "text": "__PROMPT__"}]}]
        served = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt")
        results[name] = {"logits": logits, "class": type(model).__name__,
                         **{k: v for k, v in served.items() if torch.is_tensor(v)}}
    assert "radixpert" not in sys.modules, "the child imported radixpert"
    torch.save(results, f"{root}/results.pt")
    """
).replace("__PROMPT__", PROMPT)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every family saved as a bundle, exported, and run by plain transformers in one child."""
    from PIL import Image

    root = tmp_path_factory.mktemp("export")
    cases: dict[str, Any] = {}
    for name in FAMILIES:
        model, processor = _lora_pair(name)
        bundle = save_bundle(model, processor, root / name / "bundle", recipe={"stages": []})
        export_for_serving(bundle, root / name / "export")
        inputs = _inputs(processor)
        torch.save(inputs, root / name / "inputs.pt")
        size = processor.config.image_size
        Image.fromarray(_image(size, 3), "L").save(root / name / "image.png")
        merged, _ = load_bundle(bundle)
        merged = merged.merge_and_unload()
        with torch.no_grad():
            reference = {
                "merged": merged(**inputs).logits,
                "lora": model(**inputs).logits,
            }
            with model.disable_adapter():
                reference["base"] = model(**inputs).logits
        served = processor(
            [_image(size, 3)], [[{"from": "human", "value": PROMPT}]], add_generation_prompt=True
        )
        cases[name] = {"reference": reference, "served": served, "processor": processor}
    (root / "families.json").write_text(json.dumps(list(FAMILIES)))
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(root)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = torch.load(root / "results.pt")
    return {"root": root, "cases": cases, "results": results}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_plain_transformers_reproduces_the_logits(exported: dict[str, Any], family: str) -> None:
    reference = exported["cases"][family]["reference"]
    logits = exported["results"][family]["logits"]
    # The export holds the merged weights bit for bit and runs the same code on the same CPU:
    # the plain families' logits are identical to the merged radixpert model's. The HCF ones
    # (nn.MultiheadAttention inside) came out up to 2e-7 apart in the fresh process, hence
    # atol 1e-6 there: far below what the adapter moves (the last assertion).
    if family.endswith("_hcf"):
        assert torch.allclose(logits, reference["merged"], rtol=0, atol=1e-6)
    else:
        assert torch.equal(logits, reference["merged"])
    # ... and to the unmerged LoRA model's up to the merge's rounding, which the adapter moves.
    assert torch.allclose(logits, reference["lora"], atol=1e-5)
    assert not torch.allclose(logits, reference["base"], atol=1e-3)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_served_processor_matches_radprocessor(exported: dict[str, Any], family: str) -> None:
    served = exported["cases"][family]["served"]
    result = exported["results"][family]
    assert result["input_ids"].tolist() == served["input_ids"].tolist()
    assert result["pixel_values"].shape == served["pixel_values"].shape
    assert torch.allclose(result["pixel_values"], served["pixel_values"], atol=1e-6)
    for key in ("aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask", "image_sizes"):
        if key in served:
            assert result[key].tolist() == served[key].tolist(), key


def test_export_folder_layout(exported: dict[str, Any]) -> None:
    root = exported["root"]
    for family in FAMILIES:
        folder = root / family / "export"
        config = json.loads((folder / "config.json").read_text())
        generation = json.loads((folder / "generation_config.json").read_text())
        assert (folder / "model.safetensors").is_file()
        assert (folder / "chat_template.jinja").is_file()
        assert generation["do_sample"] is False
        tok = exported["cases"][family]["processor"].tokenizer
        assert generation["bos_token_id"] == tok.bos_token_id
        assert generation["pad_token_id"] == tok.pad_token_id
        eos = generation["eos_token_id"]
        eos = eos if isinstance(eos, list) else [eos]
        assert tok.eos_token_id in eos
        if family.startswith("mllama"):  # llama3 template: answers end with <|eot_id|>
            assert tok.convert_tokens_to_ids("<|eot_id|>") in eos
        hcf = family.endswith("_hcf")
        assert (folder / HCF_MODULE_FILE).is_file() == hcf
        assert ("auto_map" in config) == hcf
        if hcf:
            source = (folder / HCF_MODULE_FILE).read_text()
            assert "radixpert." not in source.replace("radixpert.models.", "")
        assert not list(folder.glob("adapter*"))


def test_resized_square_image_within_one_grey_level() -> None:
    """A 64 px square image resized to the 32 px tower: transformers resizes 8-bit images in 8
    bits, the RadProcessor in float, so they agree to one grey level (1/255 / std)."""
    from PIL import Image

    model = tiny_llava("mlp")
    processor = RadProcessor.from_model(model, _tokenizer(63, ["<image>"]))
    hf = hf_processor_for(model, processor)
    image = _image(64, 5)
    ours = processor.preprocess_image(image)
    theirs = hf.image_processor(Image.fromarray(image, "L"), return_tensors="pt")["pixel_values"]
    bound = (1 / 255) / min(processor.config.image_std)
    assert theirs.shape == (1, *ours.shape)
    assert (theirs[0] - ours).abs().max() <= bound


def _messages(conversation: list[dict[str, str]], system: str | None) -> list[dict[str, Any]]:
    roles = {"human": "user", "gpt": "assistant"}
    messages = [{"role": roles[t["from"]], "content": t["value"]} for t in conversation]
    return ([{"role": "system", "content": system}] if system is not None else []) + messages


CONVERSATIONS = {
    "prompt": ([{"from": "human", "value": "<image>\ndescribe the findings"}], True),
    "answered": (
        [
            {"from": "human", "value": "describe the findings"},
            {"from": "gpt", "value": "the lungs are clear."},
        ],
        False,
    ),
    "two_turns": (
        [
            {"from": "human", "value": "describe"},
            {"from": "gpt", "value": "clear."},
            {"from": "human", "value": "heart size?"},
        ],
        True,
    ),
}


@pytest.mark.parametrize("template", ["vicuna", "llama3"])
@pytest.mark.parametrize("system", [None, "you are a radiologist.", ""])
@pytest.mark.parametrize("kind", list(CONVERSATIONS))
def test_chat_template_gives_the_radprocessor_ids(template: str, system: str | None, kind: str):
    conversation, generation = CONVERSATIONS[kind]
    tokenizer = _tokenizer(63, ["<image>"])
    model = tiny_llava("mlp")
    ours = RadProcessor.from_model(model, tokenizer, template=template, system=system)
    default = RadProcessor.from_model(model, tokenizer, template=template)
    expected, _ = ours.encode_conversation(conversation, add_generation_prompt=generation)
    # The processor's own system prompt is the template's default ...
    hf = hf_processor_for(model, ours)
    ids = hf.tokenizer.apply_chat_template(
        _messages(conversation, None),
        add_generation_prompt=generation,
        tokenize=True,
        return_dict=True,
    )
    # ... and a system message replaces the default of a processor exported without one.
    other = hf_processor_for(model, default).tokenizer.apply_chat_template(
        _messages(conversation, system),
        add_generation_prompt=generation,
        tokenize=True,
        return_dict=True,
    )
    image = tokenizer.convert_tokens_to_ids("<image>")
    seq = ours.config.image_seq_length
    for got in (ids, other):
        got = list(got["input_ids"])
        # The tokenizer alone leaves one <image> per image; the processor expands it.
        expanded = [t for i in got for t in ([i] * seq if i == image else [i])]
        assert expanded == expected


def test_chat_template_ids_with_a_metaspace_tokenizer() -> None:
    tokenizer = _tokenizer(63, ["<image>"], pre_tokenizer="metaspace")
    model = tiny_llava("mlp")
    ours = RadProcessor.from_model(model, tokenizer)
    conversation, generation = CONVERSATIONS["answered"]
    expected, _ = ours.encode_conversation(conversation, add_generation_prompt=generation)
    ids = hf_processor_for(model, ours).tokenizer.apply_chat_template(
        _messages(conversation, None),
        add_generation_prompt=generation,
        tokenize=True,
        return_dict=True,
    )
    assert list(ids["input_ids"]) == expected


def test_template_text_equals_the_radprocessor_text() -> None:
    tokenizer = _tokenizer(63, ["<image>"])
    model = tiny_llava("mlp")
    for template in ("vicuna", "llama3"):
        ours = RadProcessor.from_model(model, tokenizer, template=template, system="be brief.")
        conversation, generation = CONVERSATIONS["two_turns"]
        text = "".join(piece for piece, _ in ours._segments(conversation, generation))
        bos = tokenizer.bos_token if template == "vicuna" else ""
        rendered = tokenizer.apply_chat_template(
            _messages(conversation, None),
            chat_template=chat_template_for(ours),
            add_generation_prompt=generation,
            tokenize=False,
        )
        assert rendered == bos + text


def test_adapter_only_export(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, processor = _lora_pair("llava")
    recipe = {"model": {"pretrained": "llava-hf/llava-1.5-7b-hf"}, "stages": []}
    bundle = save_bundle(model, processor, tmp_path / "bundle", recipe=recipe)
    out = export_for_serving(bundle, tmp_path / "lora", adapter_only=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "llava-hf/llava-1.5-7b-hf"
    assert config["peft_type"] == "LORA"
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all("lora_" in name for name in weights)
    other = export_for_serving(bundle, tmp_path / "lora2", adapter_only=True, base="export/base")
    assert json.loads((other / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "export/base"
    )


def test_adapter_only_refusals(tmp_path: Path) -> None:
    model, processor = _lora_pair("llava")
    full = {"stages": [{"trainability": {"connector": {"mode": "full"}}}]}
    bundle = save_bundle(model, processor, tmp_path / "full", recipe=full)
    with pytest.raises(UsageError, match="connector in full"):
        export_for_serving(bundle, tmp_path / "out", adapter_only=True)
    no_base = save_bundle(model, processor, tmp_path / "nobase", recipe={"stages": []})
    with pytest.raises(UsageError, match="--base"):
        export_for_serving(no_base, tmp_path / "out", adapter_only=True)
    merged = save_bundle(model, processor, tmp_path / "merged", adapters="merged")
    with pytest.raises(UsageError, match="no separate LoRA adapter"):
        export_for_serving(merged, tmp_path / "out", adapter_only=True, base="x")
    assert not (tmp_path / "out").exists()


def test_radscribe_exports_with_its_code(tmp_path: Path) -> None:
    """The registry names RadScribe's serving format: its own modeling and processing code
    (tests/models/test_radscribe_export.py loads it in plain transformers)."""
    from radixpert.models.encoder_decoder import tiny_encoder_decoder
    from radixpert.models.radscribe_export import MODELING_FILE, PROCESSING_FILE

    model = tiny_encoder_decoder("vit")
    joint = _tokenizer(64, [])
    processor = RadProcessor.from_model(model, joint, decoder_tokenizer=_tokenizer(64, []))
    bundle = save_bundle(model, processor, tmp_path / "radscribe")
    out = export_for_serving(bundle, tmp_path / "out")
    assert {MODELING_FILE, PROCESSING_FILE} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["auto_map"]["AutoModelForImageTextToText"].endswith(
        "RadScribeForConditionalGeneration"
    )


def test_cli_model_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from radixpert.cli import main

    model, processor = _lora_pair("llava")
    bundle = save_bundle(model, processor, tmp_path / "bundle", recipe={"stages": []})
    out = tmp_path / "lora"
    args = ["model", "export", str(bundle), "-o", str(out), "--adapter-only", "--base", "b"]
    assert main(args) == 0
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "b"
    assert main(["model", "export", str(bundle), "-o", str(tmp_path / "x"), "--adapter-only"]) == 2
    assert "--base" in capsys.readouterr().err


def test_native_image_processor_and_template_are_exported_as_they_are() -> None:
    from transformers import CLIPImageProcessor

    model = tiny_llava("mlp")
    native = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    native.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    processor = RadProcessor.from_model(model, _tokenizer(63, ["<image>"]), native=native)
    assert (processor.config.image_transform, processor.config.template) == ("native", "native")
    hf = hf_processor_for(model, processor)
    assert hf.image_processor is processor.image_processor
    assert hf.chat_template == native.chat_template
