"""Phantom scores: exact on the truth, zero on wrong answers, AP by hand."""

from __future__ import annotations

import math

import pytest

from radixpert.demo.scoring import (
    average_precision,
    findings_scores,
    grounding_scores,
    lateral_findings,
    laterality_scores,
)
from radixpert.instruct.tasks import format_box


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list:
    from radixpert.data.phantoms import generate_phantoms

    return generate_phantoms(120, tmp_path_factory.mktemp("ph") / "p", size=64)


def test_true_reports_score_one_and_normal_reports_zero(studies: list) -> None:
    truth = [s.labels for s in studies]
    perfect = findings_scores([s.findings for s in studies], truth)
    assert perfect["findings_f1"] == 1.0 and perfect["findings_fp"] == 0
    assert perfect["findings_tp"] == sum(
        1 for s in studies for f, v in s.labels.items() if v == 1 and f != "No Finding"
    )
    normal = findings_scores(["Heart size is normal. The lungs are clear."] * len(studies), truth)
    assert normal["findings_f1"] == 0.0 and normal["findings_tp"] == 0


def test_findings_f1_counts_by_hand() -> None:
    truth = [{"Pneumothorax": 1}, {"Pneumothorax": None}, {"Cardiomegaly": 1}]
    reports = ["Small left pneumothorax.", "Large right pneumothorax.", "Normal heart size."]
    got = findings_scores(reports, truth)
    # tp 1 (ptx), fp 1 (ptx in study 2), fn 1 (cardiomegaly): F1 = 2 / (2 + 1 + 1)
    assert got["findings_f1"] == pytest.approx(0.5)
    assert got["f1/Pneumothorax"] == pytest.approx(2 / 3)
    assert got["f1/Cardiomegaly"] == 0.0 and math.isnan(got["f1/Lung Lesion"])


def test_average_precision_by_hand() -> None:
    truth = {"a": [(0.1, 0.1, 0.3, 0.3)], "b": [(0.5, 0.5, 0.9, 0.9)]}
    hit_a, hit_b, miss = (
        ("a", (0.1, 0.1, 0.3, 0.3)),
        ("b", (0.5, 0.5, 0.9, 0.9)),
        ("b", (0, 0, 0.1, 0.1)),
    )
    assert average_precision([hit_a, hit_b], truth) == pytest.approx(1.0)
    # miss, hit, hit: precision 0, 1/2, 2/3 at recall 0, 1/2, 1; interpolated 2/3 everywhere.
    assert average_precision([miss, hit_a, hit_b], truth) == pytest.approx(2 / 3)
    # hit, miss: recall reaches 1/2 at precision 1 -> 51 of 101 recall points.
    assert average_precision([hit_a, miss], truth) == pytest.approx(51 / 101)
    # a duplicate of a matched box is a false positive
    assert average_precision([hit_a, hit_a], {"a": truth["a"]}) == pytest.approx(1.0)
    assert math.isnan(average_precision([hit_a], {}))


def test_grounding_true_boxes_give_map_one(studies: list) -> None:
    questions, answers, shifted = [], [], []
    for s in studies:
        for label in sorted({b.label for b in s.boxes}):
            boxes = [(b.x1, b.y1, b.x2, b.y2) for b in s.boxes if b.label == label]
            questions.append({"study": s.id, "label": label, "boxes": boxes})
            answers.append(" ".join(format_box(b) for b in boxes))
            shifted.append(" ".join(format_box((0.0, 0.0, 0.01, 0.01)) for _ in boxes))
    assert questions
    perfect = grounding_scores(answers, questions)
    assert perfect["grounding_map50"] == pytest.approx(1.0, abs=0.02)  # two-decimal rounding
    assert perfect["grounding_parsed"] == 1.0
    assert grounding_scores(shifted, questions)["grounding_map50"] == 0.0
    assert grounding_scores(["no box"] * len(questions), questions)["grounding_parsed"] == 0.0


def test_laterality(studies: list) -> None:
    sides = [lateral_findings(s.extra["spec"]) for s in studies]
    assert any(sides)
    right = laterality_scores([s.findings for s in studies], sides)
    assert right["laterality_acc"] == 1.0 and right["laterality_n"] > 0
    swap = {"left": "right", "right": "left"}
    flipped = laterality_scores(
        [s.findings for s in studies],
        [{f: swap[v] for f, v in d.items()} for d in sides],
    )
    assert flipped["laterality_acc"] == 0.0
    silent = laterality_scores(["The lungs are clear."] * len(studies), sides)
    assert math.isnan(silent["laterality_acc"]) and silent["laterality_n"] == 0


def test_lateral_findings_of_a_spec() -> None:
    spec = {
        "Pleural Effusion": {"side": "left", "size": "small"},
        "Consolidation": {"zone": "right lower lobe", "size": "large"},
        "Lung Lesion": {"zone": "lingula", "diameter_cm": 2.0},
        "Cardiomegaly": {},
    }
    assert lateral_findings(spec) == {
        "Pleural Effusion": "left",
        "Consolidation": "right",
        "Lung Lesion": "left",
    }
