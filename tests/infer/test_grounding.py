"""Boxes in answers: parsed as the instruction sets write them, validated, drawn."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from radixpert.data.images import load_image
from radixpert.infer.grounding import (
    GroundedBox,
    box_problem,
    draw_boxes,
    parse_grounding,
    save_overlay,
)
from radixpert.instruct.tasks import DetectionTask, GroundingTask, format_box, parse_boxes


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The instruction builders' own conversations over phantoms, by task, and the images."""
    from radixpert.data.phantoms import generate_phantoms

    root = tmp_path_factory.mktemp("ph")
    studies = generate_phantoms(60, root, size=64)
    rng = random.Random(0)
    tasks = (GroundingTask("phrase"), GroundingTask("abnormality"), DetectionTask())
    out: dict = {t.name: [c for s in studies for c in t.build(s, rng)] for t in tasks}
    out["root"] = root
    return out


def _answer(c) -> str:
    return c.conversations[1]["value"]


def test_phrase_answers_give_their_box(built: dict) -> None:
    assert built["grounding-phrase"]
    for c in built["grounding-phrase"]:
        found = parse_grounding(_answer(c))
        assert found.invalid == []
        assert [b.coords for b in found.boxes] == [parse_boxes(c.target["boxes"][0])[0]]
        assert [str(b) for b in found.boxes] == c.target["boxes"]  # written back the same
        assert found.boxes[0].label is None


def test_abnormality_answers_give_every_box(built: dict) -> None:
    several = [c for c in built["grounding-abnormality"] if len(c.target["boxes"]) > 1]
    assert several, "no phantom with two boxes of one finding"
    for c in built["grounding-abnormality"]:
        found = parse_grounding(_answer(c))
        assert [format_box(b.coords) for b in found.boxes] == c.target["boxes"]
        assert found.invalid == []


def test_detection_answers_give_labelled_boxes(built: dict) -> None:
    many = [c for c in built["detection"] if len(c.target["boxes"]) > 1]
    assert many, "no detection answer with two boxes"
    for c in built["detection"]:
        found = parse_grounding(_answer(c))
        assert [[b.label, format_box(b.coords)] for b in found.boxes] == c.target["boxes"]
        # The same boxes the grader reads, in the same order.
        assert [b.coords for b in found.boxes] == parse_boxes(_answer(c))
    none = next(c for c in built["detection"] if not c.target["boxes"])
    assert parse_grounding(_answer(none)).boxes == []


def test_invalid_boxes_are_kept_with_the_reason(built: dict) -> None:
    c = next(c for c in built["detection"] if len(c.target["boxes"]) > 1)
    (l1, b1), (l2, _) = c.target["boxes"][:2]
    x1, y1, x2, y2 = parse_boxes(b1)[0]
    answer = (
        f"{l1}: {b1}; {l2}: [{x2:.2f}, {y1:.2f}, {x1:.2f}, {y2:.2f}]; "
        f"Nodule: [0.20, 0.30, 1.40, 0.50]; Mass: [0.20, -0.10, 0.30, 0.40]; "
        f"Effusion: [0.20, 0.30, 0.40, 0.30]; Edema: [0.20, 0.30, 0.40]"
    )
    found = parse_grounding(answer)
    assert [(b.label, b.coords) for b in found.boxes] == [(l1, (x1, y1, x2, y2))]
    assert [(b.label, b.reason) for b in found.invalid] == [
        (l2, f"x1 = {x2:g} is not less than x2 = {x1:g} (no width)"),
        ("Nodule", "x2 = 1.4 is outside 0-1"),
        ("Mass", "y1 = -0.1 is outside 0-1"),
        ("Effusion", "y1 = 0.3 is not less than y2 = 0.3 (no height)"),
        ("Edema", "3 numbers; a box is [x1, y1, x2, y2]"),
    ]
    assert found.invalid[0].text == f"[{x2:.2f}, {y1:.2f}, {x1:.2f}, {y2:.2f}]"
    assert found.to_dict()["invalid"][1] == {
        "text": "[0.20, 0.30, 1.40, 0.50]",
        "reason": "x2 = 1.4 is outside 0-1",
        "label": "Nodule",
    }


def test_box_problem_edges() -> None:
    assert box_problem(0.0, 0.0, 1.0, 1.0) is None
    assert box_problem(0.5, 0.1, 0.5, 0.2) == "x1 = 0.5 is not less than x2 = 0.5 (no width)"
    assert box_problem(0.1, 0.1, 0.2, 1.0001) == "y2 = 1.0001 is outside 0-1"


def test_text_without_boxes_and_prose_colons() -> None:
    assert parse_grounding("No abnormalities with a location.").boxes == []
    found = parse_grounding("The opacity seen on the frontal view lies at: [0.1, 0.2, 0.3, 0.4]")
    assert found.boxes[0].label == "The opacity seen on the frontal view lies at"
    long = "x" * 80 + ": [0.1, 0.2, 0.3, 0.4]"
    assert parse_grounding(long).boxes[0].label is None


def _coloured(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(int)
    return (rgb.max(axis=2) - rgb.min(axis=2)) > 30


def _region(shape: tuple[int, int], box: tuple[float, ...]) -> np.ndarray:
    h, w = shape
    x1, y1, x2, y2 = box
    mask = np.zeros(shape, dtype=bool)
    mask[int(y1 * h) : int(np.ceil(y2 * h)), int(x1 * w) : int(np.ceil(x2 * w))] = True
    return mask


def test_overlay_draws_inside_the_boxes_only(built: dict, tmp_path: Path) -> None:
    from PIL import Image

    c = next(c for c in built["detection"] if len(c.target["boxes"]) > 1)
    boxes = parse_grounding(_answer(c)).boxes
    image = load_image(built["root"] / c.image[0])
    out = save_overlay(image, boxes, tmp_path / "o" / "overlay.png")
    rgb = np.asarray(Image.open(out).convert("RGB"))
    assert rgb.shape[:2] == (512, 512)  # the 64-pixel phantom, enlarged 8 times
    coloured = _coloured(rgb)
    regions = [_region(coloured.shape, b.coords) for b in boxes]
    for region in regions:  # every box has its outline
        assert coloured[region].sum() > 0
    outside = ~np.logical_or.reduce(regions)
    assert coloured[outside].sum() == 0
    # Outside the boxes the pixels are the phantom's own, untouched, in all three channels.
    enlarged = np.kron(np.round(image * 255), np.ones((8, 8)))
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel][outside], enlarged[outside])


def test_overlay_at_the_image_edge_and_unlabelled() -> None:
    box = GroundedBox(0.75, 0.0, 1.0, 0.25)
    rgb = np.asarray(draw_boxes(np.zeros((600, 800), np.uint8), [box]))
    assert rgb.shape == (600, 800, 3)  # large enough: not enlarged
    coloured = _coloured(rgb)
    region = _region(coloured.shape, box.coords)
    assert coloured[region].sum() > 0 and coloured[~region].sum() == 0
    assert coloured[:, -1].any() and coloured[0].any()  # the outline at the edges
    with pytest.raises(ValueError, match="2-D"):
        draw_boxes(np.zeros((4, 4, 3)), [box])
