"""The shipped recipes from pretrained checkpoints: tiny hub-layout copies of the real
repositories (tests/hub), loaded by their real ids offline, trained a few steps per stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from radixpert.models.families import unwrap
from radixpert.train.recipe import load_recipe, shipped_recipes_dir
from radixpert.train.runner import run_recipe

MLLAMA = "meta-llama/Llama-3.2-11B-Vision-Instruct"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recipes' dataset folders, each holding the same 24 phantoms."""
    from radixpert.data.phantoms import generate_phantoms

    root = tmp_path_factory.mktemp("pretrained_data")
    generate_phantoms(24, root / "phantoms", size=64)
    text = (root / "phantoms" / "studies.jsonl").read_text(encoding="utf-8")
    for name in ("roco_v2", "padchest", "mimic_cxr", "chexpert_plus", "ms_cxr", "vindr_cxr",
                 "padchest_gr", "imagenome"):  # fmt: skip
        (root / name).mkdir()
        (root / name / "studies.jsonl").write_text(
            text.replace('"path": "images/', '"path": "../phantoms/images/'), encoding="utf-8"
        )
    return root


def _sized(name: str, data_root: Path, steps: int = 2) -> Any:
    """Shipped recipe ``name``, changed only in sizes: steps, batch, no early stopping."""
    raw = load_recipe(shipped_recipes_dir() / f"{name}.yaml", data_root=str(data_root))
    overrides = []
    for i, stage in enumerate(raw.stages):
        overrides += [f"stages.{i}.epochs=null", f"stages.{i}.max_steps={steps}",
                      f"stages.{i}.batch_size=2", f"stages.{i}.grad_accum=1",
                      f"stages.{i}.save_every=null"]  # fmt: skip
        if stage.early_stopping is not None:
            overrides.append(f"stages.{i}.early_stopping=null")
    return load_recipe(shipped_recipes_dir() / f"{name}.yaml", overrides=overrides,
                       data_root=str(data_root))  # fmt: skip


CHILD = """
import json, sys
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

folder, inputs = sys.argv[1], sys.argv[2]
remote = "auto_map" in json.loads(open(f"{folder}/config.json").read())
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=remote).eval()
AutoProcessor.from_pretrained(folder, trust_remote_code=remote)
with torch.no_grad():
    logits = model(**torch.load(inputs)).logits
assert "radixpert" not in sys.modules, "the child imported radixpert"
torch.save(logits, inputs + ".logits")
"""


def _served_logits_equal(bundle: str, tmp_path: Path, with_report: bool = False) -> None:
    """Exports ``bundle`` and checks that plain transformers, in a process that never imports
    radixpert, gives the merged model's logits (``with_report``: teacher-forced on a report, as
    an encoder-decoder's logits are those of its decoder)."""
    import os
    import subprocess
    import sys

    import numpy as np

    from radixpert.models.bundle import load_bundle
    from radixpert.models.export import export_for_serving

    out = export_for_serving(bundle, tmp_path / "export")
    model, processor = load_bundle(bundle)
    model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    image = np.random.default_rng(0).random((48, 40)).astype(np.float32)
    turns = [{"from": "human", "value": "<image>\nFindings?"}]
    if with_report:
        inputs = processor([image], [[*turns, {"from": "gpt", "value": "No acute process."}]])
    else:
        inputs = processor([image], [turns], add_generation_prompt=True)
        inputs.pop("labels")
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")  # remote code lands here
    command = [sys.executable, "-c", CHILD, str(out), str(tmp_path / "inputs.pt")]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    served = torch.load(tmp_path / "inputs.pt.logits")
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=0)


def _checkpoint_state(repo_id: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(repo_id).state_dict()


@pytest.mark.slow
def test_msa_lora_from_the_hub_checkpoint(
    hub_checkpoint: Any, data_root: Path, tmp_path: Path
) -> None:
    from radixpert.models.bundle import load_bundle, read_manifest

    hub_checkpoint(MLLAMA)
    recipe = _sized("msa_lora", data_root)
    assert recipe.model.pretrained == MLLAMA and recipe.model.connector == "hcf"
    summary = run_recipe(recipe, tmp_path / "run", log_with=(), progress=False, max_val=4)
    assert [r["steps"] for r in summary["stages"].values()] == [2, 2, 2]
    model, processor = load_bundle(summary["final_bundle"])
    assert read_manifest(summary["final_bundle"])["connector"] == "hcf"
    assert processor.config.image_transform == "native" and processor.config.template == "native"
    trained = unwrap(model.merge_and_unload()).state_dict()
    original = _checkpoint_state(MLLAMA)
    vision = [k for k in original if k.startswith("model.vision_model.")]
    # The frozen vision tower is the checkpoint's, bit for bit.
    assert vision and all(torch.equal(trained[k], original[k]) for k in vision)
    # LoRA, merged stage after stage, moved the language model's attention projections.
    moved = [k for k in original if k.startswith("model.language_model.") and "q_proj" in k]
    assert moved and any(not torch.equal(trained[k], original[k]) for k in moved)
    # The HCF connector is new: it is not in the checkpoint at all.
    assert any(k.startswith("model.multi_modal_projector.fusion.") for k in trained)
    assert not any(k.startswith("model.multi_modal_projector.fusion.") for k in original)
    _served_logits_equal(summary["final_bundle"], tmp_path)


ONEVISION = "llava-hf/llava-onevision-qwen2-7b-ov-hf"


@pytest.mark.slow
def test_radvlm_from_the_hub_checkpoint(
    hub_checkpoint: Any, data_root: Path, tmp_path: Path
) -> None:
    from radixpert.models.bundle import load_bundle

    hub_checkpoint(ONEVISION)
    recipe = _sized("radvlm", data_root)
    assert recipe.model.pretrained == ONEVISION
    summary = run_recipe(recipe, tmp_path / "run", log_with=(), progress=False, max_val=4)
    model, processor = load_bundle(summary["final_bundle"])
    assert processor.config.image_transform == "native" and processor.config.template == "native"
    trained = model.state_dict()
    original = _checkpoint_state(ONEVISION)
    assert set(trained) == set(original)
    # Everything trains, the vision tower at lr 2e-6: its weights moved too (kept in fp32).
    for prefix in ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model."):
        keys = [k for k in original if k.startswith(prefix) and original[k].is_floating_point()]
        assert any(not torch.equal(trained[k], original[k]) for k in keys), prefix
    _served_logits_equal(summary["final_bundle"], tmp_path)


BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
VICUNA = "lmsys/vicuna-7b-v1.5"


@pytest.mark.slow
def test_llava_rad_from_biomedclip_and_vicuna(
    hub_checkpoint: Any, data_root: Path, tmp_path: Path
) -> None:
    import open_clip
    from transformers import AutoModelForCausalLM

    from radixpert.models.bundle import load_bundle

    for repo in (BIOMEDCLIP, "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract", VICUNA):
        hub_checkpoint(repo)
    recipe = _sized("llava_rad", data_root)
    assert recipe.model.parts["vision"] == f"hf-hub:{BIOMEDCLIP}"
    summary = run_recipe(recipe, tmp_path / "run", log_with=(), progress=False, max_val=4)
    assert [r["steps"] for r in summary["stages"].values()] == [2, 2, 2]
    model, processor = load_bundle(summary["final_bundle"])
    trained = unwrap(model.merge_and_unload()).state_dict()
    clip = open_clip.create_model(f"hf-hub:{BIOMEDCLIP}", pretrained=f"hf-hub:{BIOMEDCLIP}")
    # Stage 1 trained the image encoder contrastively: it moved away from BiomedCLIP's.
    tower = {k.removeprefix("model.vision_tower.visual."): v for k, v in trained.items()
             if k.startswith("model.vision_tower.visual.")}  # fmt: skip
    original = clip.visual.state_dict()
    assert set(tower) == set(original)
    assert any(not torch.equal(tower[k], original[k]) for k in original)
    # The language model: Vicuna's, with LoRA merged in stage 3 (so moved), rows for <image>
    # and <pad> added.
    vicuna = AutoModelForCausalLM.from_pretrained(VICUNA).state_dict()
    layer = "layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained[f"model.language_model.{layer}"], vicuna[f"model.{layer}"])
    mlp = "layers.0.mlp.down_proj.weight"  # not a LoRA target: untouched
    assert torch.equal(trained[f"model.language_model.{mlp}"], vicuna[f"model.{mlp}"])
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_index
    # Served by plain transformers: the BiomedCLIP tower as transformers' ViTModel.
    _served_logits_equal(summary["final_bundle"], tmp_path)
    served = json.loads((tmp_path / "export" / "config.json").read_text(encoding="utf-8"))
    assert served["vision_config"]["model_type"] == "vit" and "auto_map" not in served


@pytest.mark.slow
def test_radscribe_from_densenet_bert_and_clinical_t5(
    hub_checkpoint: Any, data_root: Path, tmp_path: Path
) -> None:
    from radixpert.models.bundle import load_bundle

    for repo in ("timm/densenet121.tv_in1k", "google-bert/bert-base-uncased",
                 "luqh/ClinicalT5-base"):  # fmt: skip
        hub_checkpoint(repo)
    recipe = _sized("radscribe", data_root)
    summary = run_recipe(recipe, tmp_path / "run", log_with=(), progress=False, max_val=4)
    assert [r["steps"] for r in summary["stages"].values()] == [2, 2]
    model, processor = load_bundle(summary["final_bundle"])
    assert model.image_backbone == "densenet"
    assert processor.config.image_size == model.image_settings()["image_size"]
    _served_logits_equal(summary["final_bundle"], tmp_path, with_report=True)
    served = json.loads((tmp_path / "export" / "config.json").read_text(encoding="utf-8"))
    assert (
        served["image_backbone"] == "densenet"
        and "AutoModelForImageTextToText" in served["auto_map"]
    )
