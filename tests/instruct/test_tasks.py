"""Instruction tasks build valid LLaVA-layout conversations and grade answers against them."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from radixpert.cli import main
from radixpert.data.study import Box, Image, Study, write_studies
from radixpert.instruct import tasks as T
from radixpert.instruct.conversation import read_conversations
from radixpert.instruct.mixture import build_mixture
from radixpert.vocab import OBSERVATIONS


def study(i: int = 0, dataset: str = "phantoms") -> Study:
    labels = {o: None for o in OBSERVATIONS}
    labels.update({"Cardiomegaly": 1, "Pleural Effusion": 1, "Pneumothorax": 0, "Edema": -1})
    return Study(
        id=f"s{i}", dataset=dataset, split="train", patient_id=f"p{i}",
        images=[Image(f"images/s{i}.png", "PA")],
        indication="Dyspnea.",
        findings="The heart is enlarged. Small right pleural effusion. No pneumothorax.",
        impression="Cardiomegaly and right effusion.",
        labels=labels,
        boxes=[Box("Cardiomegaly", 0.3, 0.45, 0.72, 0.8, phrase="enlarged heart"),
               Box("Pleural Effusion", 0.05, 0.7, 0.3333, 0.9, phrase="right pleural effusion")],
    )  # fmt: skip


def build(name: str, s: Study | None = None):
    return T.create(name).build(s or study(), random.Random(0))


def test_every_task_builds_valid_conversations():
    for name in T.TASKS:
        convs = build(name)
        assert convs, name
        for c in convs:
            assert c.conversations[0]["value"].startswith("<image>\n")
            assert c.image == ["images/s0.png"] and c.task == name


def test_boxes_are_written_with_two_decimals():
    (conv,) = [c for c in build("grounding-phrase") if "effusion" in c.conversations[0]["value"]]
    assert conv.conversations[1]["value"] == "[0.05, 0.70, 0.33, 0.90]"
    (det,) = build("detection")
    assert det.conversations[1]["value"] == (
        "Cardiomegaly: [0.30, 0.45, 0.72, 0.80]; Pleural Effusion: [0.05, 0.70, 0.33, 0.90]"
    )


def test_classification_counts_uncertain_as_absent_and_scores():
    (c,) = build("classification")
    assert c.conversations[1]["value"] == "Cardiomegaly, Pleural Effusion"
    task = T.create("classification")
    assert task.score(c, "Cardiomegaly, Pleural Effusion")["f1"] == 1.0
    half = task.score(c, "Cardiomegaly and edema")
    assert half["precision"] == 0.5 and half["recall"] == 0.5 and half["parsed"] == 1.0
    assert task.score(c, "I cannot tell.") == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "parsed": 0.0,
    }


def test_grounding_and_detection_scores():
    g = T.create("grounding-abnormality")
    conv = next(
        c
        for c in g.build(study(), random.Random(0))
        if "cardiomegaly" in c.conversations[0]["value"]
    )
    assert g.score(conv, conv.conversations[1]["value"])["mean_iou"] == pytest.approx(1.0)
    shifted = g.score(conv, "[0.40, 0.45, 0.82, 0.80]")
    assert 0.5 < shifted["mean_iou"] < 1.0 and shifted["hit@0.5"] == 1.0
    assert g.score(conv, "somewhere in the middle")["parsed"] == 0.0
    d = T.create("detection")
    (det,) = d.build(study(), random.Random(0))
    assert d.score(det, det.conversations[1]["value"])["f1"] == 1.0
    one = d.score(det, "Cardiomegaly: [0.30, 0.45, 0.72, 0.80]; Edema: [0.1, 0.1, 0.2, 0.2]")
    assert one["precision"] == 0.5 and one["recall"] == 0.5


def test_tasks_skip_studies_they_cannot_use():
    bare = Study("x", "d", images=[Image("x.png")], findings="Clear lungs.")
    assert build("classification", bare) == [] and build("detection", bare) == []
    assert build("grounding-phrase", bare) == [] and len(build("report", bare)) == 1


def test_report_task_and_its_score():
    (c,) = build("report-full")
    assert c.conversations[0]["value"].startswith("<image>\nIndication: Dyspnea.")
    assert c.conversations[1]["value"].endswith("Cardiomegaly and right effusion.")
    s = T.create("report-full").score(c, c.conversations[1]["value"])
    assert s["rouge-l"] == pytest.approx(1.0) and s["bleu-2-radcliq"] == pytest.approx(1.0)


def test_mixture_weights_repeats_and_determinism():
    studies = [study(i, "a" if i % 2 else "b") for i in range(400)]
    counts: Counter = Counter()
    convs = list(
        build_mixture(
            studies, {"classification": 0.5, "report": 1.0}, {"a": 2.0}, seed=3, counts=counts
        )
    )
    again = [
        c.id
        for c in build_mixture(studies, {"classification": 0.5, "report": 1.0}, {"a": 2.0}, seed=3)
    ]
    assert [c.id for c in convs] == again
    by = Counter((c.dataset, c.task) for c in convs)
    assert by[("a", "report")] == 400 and by[("b", "report")] == 200  # 2x repeat for "a"
    assert by[("a", "classification")] == 200  # 0.5 x 2 = 1 each
    assert 70 < by[("b", "classification")] < 130  # 0.5 each, seeded draws
    assert len({c.id for c in convs}) == len(convs)


def test_instruct_cli(tmp_path, capsys):
    src = tmp_path / "studies.jsonl"
    write_studies([study(i) for i in range(5)], src)
    out = tmp_path / "conv.jsonl"
    assert (
        main(
            [
                "data",
                "instruct",
                str(src),
                "--out",
                str(out),
                "--tasks",
                "report=1",
                "detection=1",
            ]
        )
        == 0
    )
    convs = list(read_conversations(out))
    assert len(convs) == 10
    first = json.loads(out.read_text().splitlines()[0])
    assert set(first) >= {"id", "image", "conversations"}
    assert "10 conversations" in capsys.readouterr().out


def test_phantoms_to_instructions_end_to_end(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["data", "phantoms", "--n", "12", "--out", str(out), "--size", "64"]) == 0
    conv = tmp_path / "conv.jsonl"
    assert (
        main(
            [
                "data",
                "instruct",
                str(out / "studies.jsonl"),
                "--out",
                str(conv),
                "--tasks",
                "grounding-abnormality=1",
                "detection=1",
            ]
        )
        == 0
    )
    convs = list(read_conversations(conv))
    assert {c.task for c in convs} <= {"grounding-abnormality", "detection"}
    assert all((out / c.image[0]).is_file() for c in convs)
    # the detection answer of each phantom grades perfectly against its own target
    det = T.create("detection")
    assert all(
        det.score(c, c.conversations[1]["value"])["f1"] == 1.0
        for c in convs
        if c.task == "detection"
    )
