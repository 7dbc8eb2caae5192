"""Hand-off to serving engines: a folder written by ``radixpert model export`` is what vLLM and
SGLang read (config, weights, processor, tokenizer, chat template, LoRA adapter).

The engines need a GPU, so this checks the folder against the engines' own loading rules, read
from their sources (docs/serving.md cites each):

- vLLM ``vllm/model_executor/models/registry.py``: ``_MULTIMODAL_MODELS`` (the architecture
  names it serves) and ``_PREVIOUSLY_SUPPORTED_MODELS`` (``MllamaForConditionalGeneration``:
  last in 0.10.2, removed with the V0 encoder-decoder runner);
- vLLM ``vllm/model_executor/models/llava.py``: ``init_vision_tower_for_llava`` (CLIP, SigLIP or
  Pixtral towers), ``get_placeholder_str`` (``<image>``), ``hf_config.image_token_index`` as the
  prompt-replacement target, and the image-token count (``CLIPEncoderInfo``: grid² + 1, minus 1
  for ``vision_feature_select_strategy == "default"``);
- vLLM ``vllm/lora/lora_model.py`` / ``peft_helper.py``: an adapter's module names must end in a
  module the model supports (``check_unexpected_modules``), ``modules_to_save`` must be None, no
  DoRA, ``bias`` ``"none"``, rank within ``--max-lora-rank`` (default 16);
- vLLM ``vllm/entrypoints/chat_utils.py``: a "string" content-format template gets the image
  placeholders joined before the text with a newline; an "openai" one gets ``{"type": "image"}``
  parts;
- SGLang ``python/sglang/srt/models/mllama.py``: ``EntryClass = MllamaForConditionalGeneration``,
  whose ``load_weights`` reads the hub layout (``vision_model.``, ``language_model.model.``,
  ``language_model.lm_head``, ``multi_modal_projector``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from radixpert.models.bundle import save_bundle
from tests.models.test_export import _image, _lora_pair

# vllm/model_executor/models/registry.py, _MULTIMODAL_MODELS (the families radixpert exports).
VLLM_ARCHITECTURES = {"LlavaForConditionalGeneration", "LlavaOnevisionForConditionalGeneration"}
# vllm/model_executor/models/registry.py, _PREVIOUSLY_SUPPORTED_MODELS.
VLLM_REMOVED = {"MllamaForConditionalGeneration": "0.10.2"}
# python/sglang/srt/models/mllama.py, EntryClass.
SGLANG_ARCHITECTURES = {"MllamaForConditionalGeneration"}
# vllm/model_executor/models/llava.py, init_vision_tower_for_llava (llava_onevision.py uses it).
VLLM_LLAVA_TOWERS = {"clip_vision_model", "siglip_vision_model", "pixtral"}
# The Llama / Qwen2 linear layers vLLM replaces by LoRA layers (packed_modules_mapping:
# qkv_proj <- q/k/v_proj, gate_up_proj <- gate/up_proj; o_proj and down_proj as they are).
VLLM_LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
VLLM_DEFAULT_MAX_LORA_RANK = 16
# Weight prefixes of the hub layout, which SGLang's mllama load_weights reads as they are and
# vLLM maps with hf_to_vllm_mapper (it reads the transformers>=4.52 ``model.*`` names too).
HUB_PREFIXES = {
    "llava": ("language_model.", "vision_tower.", "multi_modal_projector."),
    "llava_onevision": ("language_model.", "vision_tower.", "multi_modal_projector.",
                        "image_newline"),
    "mllama": ("language_model.", "vision_model.", "multi_modal_projector."),
}  # fmt: skip
ENGINE = {
    "llava": ("vllm", "LlavaForConditionalGeneration", "<image>"),
    "llava_onevision": ("vllm", "LlavaOnevisionForConditionalGeneration", "<image>"),
    "mllama": ("sglang", "MllamaForConditionalGeneration", "<|image|>"),
}
PROMPT = "describe the findings"
BASE = "export/base"  # what --base records for the adapter-only export


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family trained-shaped (LoRA on the language model), saved, and exported with the
    command a user runs; llava also adapter-only (the one family vLLM serves LoRA for)."""
    from radixpert.cli import main

    root = tmp_path_factory.mktemp("handoff")
    folders: dict[str, Path] = {}
    for family in ENGINE:
        model, processor = _lora_pair(family)
        bundle = save_bundle(model, processor, root / family / "bundle", recipe={"stages": []})
        out = root / family / "export"
        assert main(["model", "export", str(bundle), "-o", str(out)]) == 0
        folders[family] = out
        if family == "llava":
            lora = root / family / "lora"
            args = ["model", "export", str(bundle), "-o", str(lora), "--adapter-only"]
            assert main([*args, "--base", BASE]) == 0
            folders["llava_lora"] = lora
    return folders


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def _embedding_rows(folder: Path) -> int:
    """Rows of the language model's token embedding, read from the weights as an engine does."""
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as f:
        names = f.keys()
        (name,) = [k for k in names if k.endswith("embed_tokens.weight")]
        return f.get_slice(name).get_shape()[0]


@pytest.mark.parametrize("family", list(ENGINE))
def test_architecture_is_one_the_engine_registers(exported: dict[str, Path], family: str) -> None:
    config = _config(exported[family])
    engine, architecture, _ = ENGINE[family]
    assert config["architectures"] == [architecture]
    assert "auto_map" not in config  # no remote code: the engine's own implementation runs
    assert {"text_config", "vision_config"} <= set(config)
    if engine == "vllm":
        assert architecture in VLLM_ARCHITECTURES
        assert config["vision_config"]["model_type"] in VLLM_LLAVA_TOWERS
    else:
        assert architecture in SGLANG_ARCHITECTURES
        assert architecture in VLLM_REMOVED  # hence SGLang, not vLLM, for mllama


@pytest.mark.parametrize("family", list(ENGINE))
def test_weights_and_index_are_consistent(exported: dict[str, Path], family: str) -> None:
    from safetensors import safe_open

    folder = exported[family]
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded: every tensor is in the shard the index names, and no other
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    else:
        weight_map, shards = None, ["model.safetensors"]
    assert sorted(p.name for p in folder.glob("*.safetensors")) == shards
    names: dict[str, str] = {}
    for shard in shards:
        with safe_open(folder / shard, "pt") as f:
            assert f.metadata().get("format") == "pt"  # what vLLM's and SGLang's loaders expect
            names.update(dict.fromkeys(f.keys(), shard))
    if weight_map is not None:
        assert names == weight_map
    assert all(name.startswith(HUB_PREFIXES[family]) for name in names), sorted(names)[:5]
    assert not any(".lora_" in name or "base_layer" in name for name in names)  # merged


@pytest.mark.parametrize("family", list(ENGINE))
def test_tokenizer_files_agree_with_the_config(exported: dict[str, Path], family: str) -> None:
    from transformers import AutoTokenizer

    folder = exported[family]
    config, image_token = _config(folder), ENGINE[family][2]
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # The image token is one special token whose id is the one the engines replace.
    assert tok.convert_tokens_to_ids(image_token) == config["image_token_index"]
    assert tok(image_token, add_special_tokens=False)["input_ids"] == [config["image_token_index"]]
    assert image_token in tok.all_special_tokens
    # Every token has an embedding row (mllama's table has 8 rows past vocab_size for <|image|>).
    assert len(tok) <= _embedding_rows(folder)
    # Engines read the template from the processor or the tokenizer: both give the file's.
    template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    assert tok.chat_template == template
    generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    eos = generation["eos_token_id"]
    assert tok.eos_token_id in (eos if isinstance(eos, list) else [eos])
    assert generation["bos_token_id"] == tok.bos_token_id


def _messages(kind: str, image_token: str) -> list[dict[str, Any]]:
    """One image and a question, as each engine content format hands them to the template."""
    if kind == "openai":  # parts, images as {"type": "image"} (vLLM and SGLang "openai" format)
        content: Any = [{"type": "image"}, {"type": "text", "text": PROMPT}]
    else:  # "string": the placeholder joined before the text with a newline
        content = f"{image_token}\n{PROMPT}"
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize("family", list(ENGINE))
def test_processor_and_template_give_the_engine_prompt(
    exported: dict[str, Path], family: str
) -> None:
    from PIL import Image
    from transformers import AutoProcessor

    folder = exported[family]
    config, image_token = _config(folder), ENGINE[family][2]
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    expected = {"llava": "LlavaProcessor", "llava_onevision": "LlavaOnevisionProcessor",
                "mllama": "MllamaProcessor"}[family]  # fmt: skip
    assert type(processor).__name__ == expected
    assert getattr(processor, "image_token", image_token) == image_token
    prompts = {
        kind: processor.apply_chat_template(
            _messages(kind, image_token), add_generation_prompt=True, tokenize=False
        )
        for kind in ("openai", "string")
    }
    # Whichever content format the engine detects, the prompt is the same, with one image token.
    assert prompts["openai"] == prompts["string"]
    prompt = prompts["openai"]
    assert prompt.count(image_token) == 1 and PROMPT in prompt
    assert prompt.index(image_token) < prompt.index(PROMPT)
    size = processor.image_processor.size
    side = size.get("height") or size["shortest_edge"]
    image = Image.fromarray(_image(side, 7), "L")
    batch = processor(images=[image], text=[prompt], return_tensors="pt", add_special_tokens=False)
    ids = batch["input_ids"][0].tolist()
    count = ids.count(config["image_token_index"])
    if family == "llava":  # vLLM's own count (llava.py): CLIP grid² + 1, minus the CLS (default)
        vision = config["vision_config"]
        grid = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
        assert count == grid - (config["vision_feature_select_strategy"] == "default")
    elif family == "mllama":  # cross-attention: the token stays one, its mask covers the tiles
        assert count == 1
        assert batch["cross_attention_mask"].shape[:2] == (1, len(ids))
    else:  # OneVision: the base view's patches, at least (vLLM recomputes anyres itself)
        vision = config["vision_config"]
        assert count >= (vision["image_size"] // vision["patch_size"]) ** 2
    assert torch.is_tensor(batch["pixel_values"]) and batch["pixel_values"].dtype == torch.float32


def test_lora_adapter_is_what_vllm_loads(exported: dict[str, Path]) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    lora = exported["llava_lora"]
    assert sorted(p.name for p in lora.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((lora / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == BASE
    assert not config.get("modules_to_save") and not config.get("use_dora")
    assert config.get("bias", "none") == "none"
    assert config["r"] <= VLLM_DEFAULT_MAX_LORA_RANK
    with safe_open(lora / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    # vLLM's parse_fine_tuned_lora_name: "base_model.model." + module + ".lora_A|B.weight".
    pattern = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_[AB]\.weight")
    modules = set()
    for key in keys:
        match = pattern.fullmatch(key)
        assert match, key
        modules.add(match["module"])
    assert {m.rsplit(".", 1)[1] for m in modules} <= VLLM_LORA_MODULES
    # Language model only: vLLM drops (or, newer, rejects) tower / connector LoRA by default.
    assert all(m.startswith("model.language_model.layers.") for m in modules), sorted(modules)
    # The target_modules pattern names exactly these, and they are linear layers of the base.
    target = config["target_modules"]
    base = AutoModelForImageTextToText.from_pretrained(exported["llava"], local_files_only=True)
    linear = {n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    assert modules <= linear
    matched = (
        {n for n in linear if re.fullmatch(target, n)}
        if isinstance(target, str)
        else {n for n in linear if n.rsplit(".", 1)[-1] in target}
    )
    assert matched == modules
