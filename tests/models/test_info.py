"""`radixpert model info`: component and ablation tables of the named sizes (meta device)."""

from __future__ import annotations

import pytest

from radixpert.cli import main
from radixpert.models.info import ablation_rows, lora_parameters
from radixpert.models.sizes import build_meta


def test_info_prints_components_and_ablation(capsys):
    assert main(["model", "info", "llava15_7b", "--lora-rank", "16"]) == 0
    out = capsys.readouterr().out
    assert "all                7,063,427,072  100.00%" in out
    assert "+ LoRA r16" in out and "+ gate" in out


def test_lora_count_is_exact_for_llava():
    model = build_meta("llava15_7b")
    # Vicuna-7B: 32 layers, q/k/v/o all 4096 -> 4096: r * (4096 + 4096) each
    assert lora_parameters(model, 64, ("q_proj", "k_proj", "v_proj", "o_proj")) == (
        32 * 4 * 64 * 8192
    )
    rows = ablation_rows(model, 64)
    assert [r["configuration"] for r in rows] == [
        "base (frozen)", "+ LoRA r64", "+ HCF (equal weights)", "+ gate"]  # fmt: skip
    assert rows[0]["trainable"] == 0 and rows[1]["trainable"] == 32 * 4 * 64 * 8192
    assert rows[3]["trainable"] > rows[2]["trainable"] > rows[1]["trainable"]


def test_unknown_name(capsys):
    assert main(["model", "info", "gpt-5"]) == 2
    assert "unknown model 'gpt-5': give a named size" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["llama32_vision_11b", "llava_onevision_7b"])
def test_other_families_print(name, capsys):
    assert main(["model", "info", name]) == 0
    assert "language_model" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name",
    ["tiny-llava", "tiny-llava-hcf", "tiny-encoder-decoder", "tiny-mllama", "tiny-onevision"],
)
def test_tiny_families(name, capsys):
    assert main(["model", "info", name]) == 0
    out = capsys.readouterr().out
    assert "tiny, random weights" in out and "connector" in out


def test_from_a_saved_config(tmp_path, capsys):
    from radixpert.models.llava import tiny_llava

    tiny_llava("hcf").save_pretrained(tmp_path / "m")
    assert main(["model", "info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "HCFLlavaForConditionalGeneration, from its config" in out
    assert "all                       86,115  100.00%" in out
