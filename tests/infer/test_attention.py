"""``radixpert explain``: attention maps over the image, per word and phrase.

Mechanics on tiny random-init llava, mllama and OneVision models (shapes, what the maps sum to,
where a grid cell lands on the original image, the files). Whether a trained model's map of a
finding's phrase is denser inside the finding's true box is measured, not asserted, by
``benchmarks/attention_in_box.py`` (numbers in docs/benchmarks.md): a model trained briefly
enough for the suite does not show it yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from radixpert.infer.attention import (
    Geometry,
    box_densities,
    explain,
    project,
    write_explanation,
)

TEXTS = [
    "there is a small left pleural effusion. the lungs are otherwise clear.",
    "no acute cardiopulmonary process. heart size is normal. no pneumothorax.",
] * 20
REPORT = "there is a small left pleural effusion."
REPORT_WORDS = ["there", "is", "a", "small", "left", "pleural", "effusion"]


def _tiny(family: str, size: str) -> tuple[Any, Any]:
    from radixpert.models.families import create_model_and_processor
    from radixpert.models.spec import ModelSpec

    torch.manual_seed(0)
    model, processor = create_model_and_processor(
        ModelSpec(family=family, size=size), texts=lambda: TEXTS
    )
    return model.eval(), processor


@pytest.fixture(scope="module")
def llava() -> tuple[Any, Any]:
    return _tiny("llava", "tiny-llava")


@pytest.fixture(scope="module")
def mllama() -> tuple[Any, Any]:
    return _tiny("mllama", "tiny-mllama")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A non-square image (48 x 80): letterboxed with padding above and below."""
    return np.random.default_rng(0).random((48, 80)).astype(np.float32)


def _direct_last_layer(model: Any, processor: Any, image: np.ndarray, report: str) -> np.ndarray:
    """The last layer's head-mean attention from the first answer token's generating step to
    the image tokens, computed straight from the model (not through explain)."""
    batch = processor(
        [image],
        [
            [
                {"from": "human", "value": f"<image>\n{REPORT_PROMPT}"},
                {"from": "gpt", "value": report},
            ]
        ],
    )
    first = int((batch.pop("labels")[0] != -100).nonzero()[0])
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**batch, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    image_pos = batch["input_ids"][0] == model.config.image_token_index
    return out.attentions[-1][0, :, first - 1, image_pos].mean(0).numpy()


REPORT_PROMPT = "Write the findings of the radiology report for this chest X-ray."


def test_llava_maps_are_the_attention_on_the_image_tokens(llava, image) -> None:
    model, processor = llava
    result = explain(
        model, processor, image, report=REPORT, phrases=["pleural effusion"], layers="last"
    )
    assert result.family == "llava" and not result.generated
    n = len(result.tokens)
    assert result.token_maps.shape == (n, 4, 4)  # 32 px / patch 8, CLS dropped by Llava
    # Mean over heads of one layer: the 16 cells are the attention on the 16 image tokens.
    sums = result.token_maps.sum(axis=(1, 2))
    np.testing.assert_allclose(sums, result.image_mass, rtol=1e-5)
    assert all(0.0 < s < 1.0 for s in sums)
    # Row-major patch order, from the step that generated the token.
    direct = _direct_last_layer(model, processor, image, REPORT)
    np.testing.assert_allclose(result.token_maps[0].reshape(-1), direct, rtol=1e-5, atol=1e-7)
    assert [w.text for w in result.word_maps] == REPORT_WORDS
    phrase = result.phrase_maps[0]
    words = {w.text: w for w in result.word_maps}
    assert phrase.tokens == words["pleural"].tokens + words["effusion"].tokens
    np.testing.assert_allclose(phrase.grid, result.token_maps[phrase.tokens].mean(axis=0))
    assert phrase.start == REPORT.index("pleural")
    assert result.aggregation["heads"] == "mean" and result.aggregation["layers"] == "last"
    assert model.config._attn_implementation == "sdpa"  # restored


def test_sentence_maps_hold_each_finding_with_its_words(llava, image) -> None:
    model, processor = llava
    report = "heart size is normal. there is a small left pleural effusion. no pneumothorax"
    result = explain(model, processor, image, report=report)
    assert result.report == report  # the tokenizer spells it back whole
    texts = [s.text for s in result.sentence_maps]
    assert texts == ["heart size is normal.", "there is a small left pleural effusion.",
                     "no pneumothorax"]  # fmt: skip
    words = result.word_maps
    for sentence in result.sentence_maps:
        inside = [
            w for w in words if sentence.start <= w.start < sentence.start + len(sentence.text)
        ]
        assert " ".join(w.text for w in inside) == sentence.text.rstrip(".")
        tokens = [t for w in inside for t in w.tokens]
        assert sentence.tokens == tokens
        np.testing.assert_allclose(sentence.grid, result.token_maps[tokens].mean(axis=0))


def test_sentences_end_at_a_stop_before_space_not_at_a_decimal_point() -> None:
    from radixpert.infer.attention import _SENTENCE

    text = "Heart enlarged (ratio 0.66). Is it? Yes!\nNo pneumothorax"
    assert [m.group(0) for m in _SENTENCE.finditer(text)] == [
        "Heart enlarged (ratio 0.66).", "Is it?", "Yes!", "No pneumothorax",
    ]  # fmt: skip


def test_aggregation_choices(llava, image) -> None:
    model, processor = llava
    runs = {
        (h, layer): explain(model, processor, image, report=REPORT, heads=h, layers=layer)
        for h, layer in [("mean", "max"), ("mean", "mean"), ("max", "max")]
    }
    default, mean, heads_max = runs["mean", "max"], runs["mean", "mean"], runs["max", "max"]
    assert default.aggregation["layers"] == "max"
    assert np.all(default.token_maps >= mean.token_maps - 1e-7)
    assert np.all(heads_max.token_maps >= default.token_maps - 1e-7)
    assert not np.allclose(default.token_maps, mean.token_maps)
    with pytest.raises(ValueError, match="heads"):
        explain(model, processor, image, report=REPORT, heads="median")
    with pytest.raises(ValueError, match="layers"):
        explain(model, processor, image, report=REPORT, layers="first")


def test_mllama_maps_are_the_cross_attention_over_the_used_tile(mllama, image) -> None:
    model, processor = mllama
    result = explain(
        model, processor, image, report=REPORT, phrases=["pleural effusion"], layers="last"
    )
    n = len(result.tokens)
    assert result.family == "mllama"
    assert result.token_maps.shape == (n, 4, 4)  # 32 px tile / patch 8; CLS dropped
    assert "cross-attention layers [1, 3]" in result.geometry.note
    # All cross-attention falls on tile 0 (the other three are masked out), CLS included;
    # the 16 patches hold most of it, but not the CLS token's share.
    np.testing.assert_allclose(result.image_mass, 1.0, atol=1e-5)
    sums = result.token_maps.sum(axis=(1, 2))
    assert np.all(sums < 1.0) and np.all(sums > 0.5)
    assert result.phrase_maps[0].tokens
    # The maps depend on the image.
    other = explain(model, processor, image[::-1].copy(), report=REPORT, layers="last")
    assert not np.allclose(other.token_maps, result.token_maps)


def test_onevision_maps_its_base_view() -> None:
    model, processor = _tiny("llava_onevision", "tiny-onevision")
    img = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    result = explain(model, processor, img, report=REPORT, layers="last")
    assert result.token_maps.shape == (len(result.tokens), 4, 4)
    assert "base view" in result.geometry.note
    # The anyres tile and newline tokens get attention too, but are not on the base grid.
    assert np.all(result.token_maps.sum(axis=(1, 2)) < np.array(result.image_mass))


def test_projection_maps_the_letterbox_back_to_the_original() -> None:
    # A 48 x 80 image letterboxed into 32 x 32: content rows 6..25, full width.
    geometry = Geometry((4, 4), (32, 32), (6, 0, 19, 32), (48, 80), "test")
    grid = np.zeros((4, 4), np.float32)
    grid[3, 0] = 1.0  # the bottom-left patch: canvas rows 24..31, columns 0..7
    heat = project(grid, geometry)
    assert heat.shape == (48, 80)
    row, col = np.unravel_index(int(heat.argmax()), heat.shape)
    assert row >= 40 and col < 15  # bottom left of the original
    inside, outside = box_densities(heat, (0.0, 0.75, 0.25, 1.0))
    assert inside > 5 * outside
    with pytest.raises(ValueError, match="covers"):
        box_densities(heat, (0.0, 0.0, 1.0, 1.0))


def test_explain_command_writes_overlays_sheet_and_maps(llava, image, tmp_path: Path) -> None:
    from PIL import Image as PILImage

    from radixpert.cli import main
    from radixpert.models.bundle import save_bundle

    model, processor = llava
    bundle = save_bundle(model, processor, tmp_path / "bundle")
    picture = tmp_path / "chest.png"
    PILImage.fromarray((image * 255).astype(np.uint8)).save(picture)
    out = tmp_path / "explain"
    code = main(
        [
            "explain",
            "--model",
            str(bundle),
            "--image",
            str(picture),
            "--report",
            REPORT,
            "--phrase",
            "pleural effusion",
            "--phrase",
            "pneumothorax",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "explain.json").read_text())
    assert summary["aggregation"]["heads"] == "mean" and summary["aggregation"]["layers"] == "max"
    assert summary["report"] == REPORT and summary["generated"] is False
    assert [w["text"] for w in summary["words"]] == REPORT_WORDS
    found = {p["text"]: p["found"] for p in summary["phrases"]}
    assert found == {"pleural effusion": True, "pneumothorax": False}
    pngs = [out / w["file"] for w in summary["words"]] + [out / summary["phrases"][0]["file"]]
    for png in pngs:
        with PILImage.open(png) as img:
            assert img.size == (80, 48) and img.mode == "RGB"  # the input's size
    with PILImage.open(out / "sheet.png") as sheet:
        assert sheet.width > 256 and sheet.height > 256
    maps = np.load(out / "token_maps.npy")
    assert maps.shape == (len(summary["tokens"]), 4, 4)
    grids = json.loads((out / "maps.json").read_text())
    assert len(grids["words"]) == len(REPORT_WORDS) and grids["grid"] == [4, 4]
    assert [s["text"] for s in summary["sentences"]] == [REPORT]
    assert (out / summary["sentences"][0]["file"]).is_file()
    assert grids["sentences"][0]["text"] == REPORT
    # Bad input is named.
    assert main(["explain", "--model", str(tmp_path), "--image", str(picture)]) == 2
    assert main(["explain", "--model", str(bundle), "--image", str(tmp_path / "no.png")]) == 2


def test_generated_report_is_mapped(mllama, image, tmp_path: Path) -> None:
    from PIL import Image as PILImage

    from radixpert.infer.generate import generate_answers

    model, processor = mllama
    picture = tmp_path / "chest.png"
    PILImage.fromarray((image * 255).astype(np.uint8)).save(picture)
    conv = {
        "image": str(picture),
        "conversations": [{"from": "human", "value": f"<image>\n{REPORT_PROMPT}"}],
    }
    expected = generate_answers(model, processor, [conv], max_new_tokens=12, progress=False)[0]
    if not expected:
        pytest.skip("the random model generated only special tokens")
    result = explain(model, processor, picture, max_new_tokens=12)
    assert result.generated and result.report == expected.strip()
    assert result.token_maps.shape[0] == len(result.tokens) > 0
    summary = write_explanation(result, tmp_path / "out")
    assert summary["generated"] is True
