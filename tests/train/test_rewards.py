"""The grpo rewards: each against its definition, the guards, the weighting and bad names."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radixpert.errors import RecipeError, UnknownName, UsageError
from radixpert.train.recipe import GRPOSettings
from radixpert.train.rewards import (
    RewardExample,
    Rewards,
    box_match_iou,
    check_reward_names,
    repetition_rate,
)

REPORT = "Small right pleural effusion. No pneumothorax. Heart size is normal."


def _report(reference: str = REPORT) -> RewardExample:
    return RewardExample("report", reference, {"report": reference})


def _grounding(*boxes: str) -> RewardExample:
    return RewardExample("grounding-abnormality", " ".join(boxes), {"boxes": list(boxes)})


def test_findings_f1_is_the_labelers_per_report_f1() -> None:
    from radixpert.evaluate.clinical.chexpert_rules import label_reports
    from radixpert.evaluate.clinical.label_f1 import binarise, per_report_f1

    answers = [
        REPORT,
        "Right pleural effusion and cardiomegaly.",
        "The lungs are clear.",
        "Left pneumothorax.",
    ]
    rewards = Rewards({"findings-f1": 1.0}, GRPOSettings())
    got = rewards.score([_report()] * 4, answers).components["findings-f1"]
    truth = binarise(label_reports([REPORT] * 4))
    pred = binarise(label_reports(answers))
    assert got == pytest.approx(per_report_f1(truth, pred).tolist())
    assert got[0] == 1.0 and got[1] == pytest.approx(2 / 3) and got[3] == 0.0


def test_bleu2_reward_is_radcliqs_sentence_bleu2() -> None:
    from radixpert.evaluate.lexical.sentence_bleu import bleu2_radcliq

    answers = [REPORT, "Small left pleural effusion.", ""]
    got = Rewards({"bleu-2": 1.0}, GRPOSettings()).score([_report()] * 3, answers)
    assert got.components["bleu-2"] == pytest.approx(bleu2_radcliq([REPORT] * 3, answers))
    assert got.components["bleu-2"][0] == pytest.approx(1.0)


def test_box_iou_matches_one_to_one_and_punishes_extra_boxes() -> None:
    a, b = (0.1, 0.1, 0.3, 0.3), (0.6, 0.6, 0.9, 0.9)
    assert box_match_iou([a, b], [a, b]) == 1.0
    assert box_match_iou([b, a], [a, b]) == 1.0
    assert box_match_iou([a], [a, b]) == 0.5  # a box missing
    assert box_match_iou([a, b, (0, 0, 1, 1)], [a, b]) == pytest.approx(2 / 3)  # one extra
    assert box_match_iou([a, a], [a]) == 0.5  # the same box twice counts once
    assert box_match_iou([], [a]) == 0.0 and box_match_iou([], []) == 1.0
    half = (0.1, 0.1, 0.2, 0.3)  # half of a's area inside a
    assert box_match_iou([half], [a]) == pytest.approx(0.5)
    # Covering the image with boxes does not pay.
    rewards = Rewards({"box-iou": 1.0}, GRPOSettings())
    ex = _grounding("[0.10, 0.10, 0.30, 0.30]")
    spam = " ".join(f"[{x:.2f}, 0.00, {x + 0.2:.2f}, 1.00]" for x in np.arange(0, 0.8, 0.2))
    scored = rewards.score([ex, ex], ["[0.10, 0.10, 0.30, 0.30]", spam])
    assert scored.components["box-iou"][0] == 1.0 and scored.components["box-iou"][1] < 0.1


def test_format_follows_each_tasks_form() -> None:
    rewards = Rewards({"format": 1.0}, GRPOSettings())
    cls = RewardExample("classification", "Cardiomegaly", {"positive": ["Cardiomegaly"]})
    ground = _grounding("[0.10, 0.10, 0.30, 0.30]")
    cases = [
        (_report(), "Heart size is normal.", 1.0),
        (_report(), "Heart size is", 0.0),  # cut mid-sentence
        (_report(), "", 0.0),
        (_report(), "Effusion at [0.10, 0.20, 0.30, 0.40].", 0.0),
        (cls, "Cardiomegaly, Pleural Effusion", 1.0),
        (cls, "None of the listed findings.", 1.0),
        (cls, "the heart", 0.0),
        (ground, "[0.10, 0.10, 0.30, 0.30] [0.50, 0.50, 0.60, 0.70]", 1.0),
        (ground, "It is at [0.10, 0.10, 0.30, 0.30]", 0.0),
        (ground, "[0.30, 0.10, 0.10, 0.30]", 0.0),  # x1 > x2
        (ground, "[0.10, 0.10, 1.30, 0.30]", 0.0),  # outside the image
    ]
    scored = rewards.score([c[0] for c in cases], [c[1] for c in cases])
    assert scored.components["format"] == [c[2] for c in cases]


def test_weights_apply_per_task_and_the_guards_subtract() -> None:
    settings = GRPOSettings(length_penalty=0.5, truncation_penalty=0.25, repetition_penalty=1.0)
    rewards = Rewards({"findings-f1": 3.0, "box-iou": 1.0, "format": 1.0}, settings)
    ground = _grounding("[0.10, 0.10, 0.30, 0.30]")
    scored = rewards.score(
        [_report(), ground, _report()],
        [REPORT, "[0.10, 0.10, 0.30, 0.30]", "Heart size is"],
        truncated=[False, False, True],
    )
    assert math.isnan(scored.components["box-iou"][0])
    assert math.isnan(scored.components["findings-f1"][1])
    assert scored.total[0] == pytest.approx((3 * 1 + 1 * 1) / 4)
    assert scored.total[1] == pytest.approx(1.0)
    f1 = scored.components["findings-f1"][2]  # "Heart size is": no finding named
    assert scored.total[2] == pytest.approx((3 * f1 + 0) / 4 - 0.25)
    assert scored.guards["truncated"] == [0.0, 0.0, 1.0]

    # Length: twice the allowed words (2x the reference) costs the whole length penalty.
    long = " ".join(f"word{i}" for i in range(4 * 10))
    ref = RewardExample("report", " ".join(f"w{i}" for i in range(10)) + ".")
    g = Rewards({"format": 1.0}, settings).guards([ref], [long], [False])
    assert g["too_long"] == [1.0] and g["penalty"] == [pytest.approx(0.5)]
    # Repetition: a report made of one sentence repeated.
    rep = "No effusion. " * 12
    assert repetition_rate(rep, 3) > 0.8 and repetition_rate(REPORT, 3) == 0.0
    g = Rewards({"format": 1.0}, settings).guards([_report(rep)], [rep], [False])
    assert g["penalty"][0] > 0.7


def test_a_reward_of_ones_own_by_module_path() -> None:
    rewards = Rewards({"tests.train.test_rewards:shortness": 1.0}, GRPOSettings())
    scored = rewards.score([_report(), _report()], ["One.", "One two three four."])
    assert scored.components["tests.train.test_rewards:shortness"] == [1.0, 0.25]
    with pytest.raises(UnknownName, match="cannot import"):
        Rewards({"tests.train.test_rewards:absent": 1.0}, GRPOSettings())


def shortness(examples: list[RewardExample], answers: list[str]) -> list[float]:
    return [1.0 / len(a.split()) for a in answers]


def test_unknown_rewards_and_uncovered_tasks_are_refused() -> None:
    with pytest.raises(UnknownName, match=r"rewards\.findings_f1: unknown reward"):
        check_reward_names({"findings_f1": 1.0})
    with pytest.raises(ValueError, match="group_size"):
        GRPOSettings(group_size=1)
    with pytest.raises(UsageError, match="no reward scores task 'grounding-abnormality'"):
        Rewards({"findings-f1": 1.0}, GRPOSettings()).check_tasks(
            ["report", "grounding-abnormality"]
        )
    # A recipe names the bad key.
    from radixpert.train.recipe import load_recipe

    bad = ["stages.see.objective=grpo", "stages.see.grpo.rewards={bleu4: 1.0}"]
    with pytest.raises(RecipeError, match=r"rewards\.bleu4: unknown reward"):
        load_recipe("demo", overrides=bad, data_root=".")


def test_a_metric_reward_without_its_weights_says_why() -> None:
    from radixpert.evaluate.base import MetricUnavailable

    try:
        Rewards({"radgraph-f1": 1.0}, GRPOSettings())
    except MetricUnavailable as err:
        assert "radgraph" in str(err).lower()
    else:  # the weights are present here: it must then score
        pytest.skip("RadGraph weights are present on this machine")
