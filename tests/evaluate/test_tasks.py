"""Task metrics over a test set: classification F1, grounding / detection mAP@0.5 and mean
IoU, token F1; on hand-computed cases and on the instruction builders' own conversations."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from radixpert.evaluate.tasks import (
    classification_scores,
    grounding_scores,
    iou,
    parse_boxes,
    task_scores,
    token_f1,
)


def test_classification_by_hand() -> None:
    truths = ["Cardiomegaly, Pleural Effusion", "No Finding", "Pleural Effusion"]
    answers = [
        "Cardiomegaly",  # misses the effusion
        "Cardiomegaly, No Finding",  # a false cardiomegaly
        "There is a small left pleural effusion.",  # free text: read by the labeler
    ]
    s = classification_scores(truths, answers)
    assert s["precision/Cardiomegaly"] == pytest.approx(0.5)
    assert s["recall/Cardiomegaly"] == pytest.approx(1.0)
    assert s["f1/Pleural Effusion"] == pytest.approx(2 / 3)  # tp 1, fn 1
    assert s["f1/No Finding"] == pytest.approx(1.0)
    assert math.isnan(s["f1/Edema"])  # absent on both sides: left out of the macro mean
    assert s["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1.0) / 3)
    assert s["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert s["parsed"] == 1.0 and s["n"] == 3
    # "Lung Opacity" is not read inside another word, "none of the listed" parses as nothing.
    s = classification_scores(["Edema"], ["None of the listed findings."])
    assert s["recall/Edema"] == 0.0 and s["parsed"] == 1.0
    with pytest.raises(ValueError, match="2 true answers for 1 answers"):
        classification_scores(["a", "b"], ["a"])


def test_grounding_by_hand() -> None:
    truth = "[0.10, 0.10, 0.50, 0.50]"
    records = [
        ("a", truth, "[0.10, 0.10, 0.50, 0.50]"),  # exact
        ("b", truth, "[0.60, 0.60, 0.90, 0.90] [0.10, 0.10, 0.50, 0.50]"),  # miss, then hit
        ("c", truth, "no box"),
    ]
    s = grounding_scores(records)
    # Ranked: a's first (hit), b's first (miss), b's second (hit); 3 true boxes.
    # Precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3 -> interpolated 1 to r = 1/3, 2/3 to 2/3.
    expected = (34 * 1.0 + 33 * (2 / 3)) / 101
    assert s["map50"] == pytest.approx(expected)
    assert s["mean_iou"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert s["parsed"] == pytest.approx(2 / 3)
    det = grounding_scores(
        [
            (
                "a",
                "Nodule: [0.1, 0.1, 0.3, 0.3]; Mass: [0.5, 0.5, 0.9, 0.9]",
                "Mass: [0.1, 0.1, 0.3, 0.3]; Nodule: [0.5, 0.5, 0.9, 0.9]",
            )
        ],
        labelled=True,
    )
    assert det["ap50/nodule"] == 0.0 and det["ap50/mass"] == 0.0  # right places, wrong labels
    assert det["mean_iou"] == 0.0


def test_token_f1_by_hand() -> None:
    s = token_f1("Small left pleural effusion.", "left effusion, small effusion")
    # truth tokens 4, answer 4; overlap small, left, effusion (once) = 3
    assert s["precision"] == pytest.approx(3 / 4) and s["recall"] == pytest.approx(3 / 4)
    assert token_f1("", "")["f1"] == 1.0 and token_f1("a", "")["f1"] == 0.0


def _conversations(tmp_path: Path) -> list:
    from radixpert.data.phantoms import generate_phantoms
    from radixpert.instruct.tasks import create

    studies = generate_phantoms(12, tmp_path / "ph", size=64)
    rng = random.Random(0)
    names = ("classification", "grounding-abnormality", "grounding-phrase", "detection")
    return [c for s in studies for name in names for c in create(name).build(s, rng)]


def test_the_builders_own_answers_score_perfectly_and_agree_with_task_score(
    tmp_path: Path,
) -> None:
    from radixpert.instruct.tasks import create

    convs = _conversations(tmp_path)
    records = {
        c.id: {
            "task": c.task,
            "model_prediction": c.conversations[1]["value"],
            "report": c.conversations[1]["value"],
            "study_id": c.study_id,
        }
        for c in convs
    }
    scores = task_scores(records)
    assert set(scores) == {"classification", "grounding-abnormality", "grounding-phrase",
                           "detection"}  # fmt: skip
    assert scores["classification"]["micro_f1"] == 1.0
    for task in ("grounding-abnormality", "grounding-phrase", "detection"):
        assert scores[task]["map50"] == pytest.approx(1.0) and scores[task]["mean_iou"] == 1.0
    assert all(s["token_f1"] == 1.0 for s in scores.values())
    # Each record's mean IoU is the one the task's own score() gives.
    grounding = [c for c in convs if c.task == "grounding-phrase"]
    rng = random.Random(1)
    for conv in grounding[:5]:
        true = parse_boxes(conv.conversations[1]["value"])[0]
        shifted = [min(1.0, v + rng.uniform(0, 0.1)) for v in true]
        answer = "[{:.2f}, {:.2f}, {:.2f}, {:.2f}]".format(*shifted)
        mine = grounding_scores([(conv.id, conv.conversations[1]["value"], answer)])
        theirs = create("grounding-phrase").score(conv, answer)
        assert mine["mean_iou"] == pytest.approx(theirs["mean_iou"])
        assert mine["mean_iou"] == pytest.approx(iou(true, parse_boxes(answer)[0]))


def test_answers_of_other_studies_score_lower_and_bad_records_are_named(tmp_path: Path) -> None:
    convs = [c for c in _conversations(tmp_path) if c.task == "grounding-abnormality"]
    answers = [c.conversations[1]["value"] for c in convs]
    shifted = answers[1:] + answers[:1]
    records = {
        c.id: {"task": c.task, "model_prediction": a, "report": c.conversations[1]["value"]}
        for c, a in zip(convs, shifted)
    }
    assert task_scores(records)["grounding-abnormality"]["map50"] < 1.0
    with pytest.raises(ValueError, match=r"record 'x': no model_prediction, report"):
        task_scores({"x": {"task": "classification"}})


def test_evaluate_tasks_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from radixpert.cli import main

    convs = [c for c in _conversations(tmp_path) if c.task == "classification"]
    records = {
        c.id: {
            "task": c.task,
            "model_prediction": "No Finding",
            "report": c.conversations[1]["value"],
        }
        for c in convs
    }
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(records))
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--tasks", str(answers), "-o", str(out)]) == 0
    assert "classification" in capsys.readouterr().out
    saved = json.loads(out.read_text())["tasks"]["classification"]
    assert saved == pytest.approx(task_scores(records)["classification"], nan_ok=True)
    assert main(["evaluate", "--tasks", str(tmp_path / "none.json")]) == 2
