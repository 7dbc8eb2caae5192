"""Task benchmarks (RadVLM's tasks, the phantoms'), the ReXGradient layout, pooled tests.

The task numbers are checked against ``evaluate.tasks.task_scores`` on the same answers; the
pooled corpus statistics (``leaderboard.pooled``) against it on subsets of the records.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from radixpert.errors import InputError
from radixpert.evaluate.tasks import task_scores
from radixpert.leaderboard import pooled
from radixpert.leaderboard.benchmarks import (
    build_references,
    list_benchmarks,
    load_benchmark,
    read_records,
)
from radixpert.leaderboard.run import run_benchmark
from radixpert.leaderboard.site import build_site

GRADIENT = Path(__file__).parent / "fixtures" / "rexgradient"
GRADIENT_TEST = GRADIENT / "metadata" / "test_metadata_view_position.json"

CLASSES = [  # (truth, answer)
    ("Cardiomegaly, Pleural Effusion", "Cardiomegaly"),
    ("No Finding", "No Finding"),
    ("Edema", "Edema, Pneumothorax"),
    ("Pleural Effusion", "Pleural Effusion"),
    ("Lung Opacity, Atelectasis", "The heart is normal."),
]
BOXES = [
    ("[0.10, 0.10, 0.40, 0.40]", "[0.12, 0.11, 0.41, 0.42]"),
    ("[0.50, 0.50, 0.90, 0.90] [0.10, 0.60, 0.30, 0.80]", "[0.55, 0.50, 0.90, 0.95]"),
    ("[0.20, 0.20, 0.30, 0.30]", "[0.60, 0.60, 0.70, 0.70] [0.20, 0.20, 0.31, 0.30]"),
    ("[0.00, 0.00, 0.50, 0.50]", "no box"),
]


def _instruct(folder: Path, answers: dict[str, list[tuple[str, str]]]) -> tuple[Path, dict]:
    """An instruct test file (``radixpert data instruct``'s layout) and the answers of
    ``radixpert generate`` to it (its conversation layout)."""
    (folder / "instruct").mkdir(parents=True, exist_ok=True)
    lines, preds = [], {}
    for task, pairs in answers.items():
        for k, (truth, answer) in enumerate(pairs):
            rid = f"s{k}:{task}:0"
            turns = [{"from": "human", "value": "<image>\nQuestion?"},
                     {"from": "gpt", "value": truth}]  # fmt: skip
            lines.append(json.dumps({"id": rid, "image": [f"s{k}.png"], "conversations": turns,
                                     "task": task, "study_id": f"s{k}"}))  # fmt: skip
            preds[rid] = {"model_prediction": answer, "report": truth, "study_id": f"s{k}",
                          "task": task}  # fmt: skip
    (folder / "instruct" / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder, preds


def _write(path: Path, preds: dict) -> Path:
    path.write_text(json.dumps(preds), encoding="utf-8")
    return path


def test_task_benchmarks_load_with_their_tasks_and_metrics() -> None:
    tasks = {n: load_benchmark(n) for n in list_benchmarks() if load_benchmark(n).kind == "task"}
    assert set(tasks) == {
        "radvlm-classification-mimic-cxr", "radvlm-grounding-anatomy-chest-imagenome",
        "radvlm-grounding-abnormality-vindr-cxr", "radvlm-grounding-phrase-ms-cxr",
        "radvlm-conversation-mimic-cxr", "phantoms-classification", "phantoms-grounding",
    }  # fmt: skip
    assert tasks["radvlm-grounding-anatomy-chest-imagenome"].tasks == ("grounding-anatomy",)
    conv = tasks["radvlm-conversation-mimic-cxr"]
    assert conv.rank_by == "conversation-judge" and conv.offline_rank_by == "token_f1"
    for bench in tasks.values():
        assert bench.dataset.layout == "conversations" and bench.rank_by in bench.metrics
        assert bench.record()["kind"] == "task" and bench.record()["tasks"] == list(bench.tasks)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"metrics": ["map50"], "rank_by": "map50"}, "not scores of a classification task"),
        ({"task": ["classification", "grounding-phrase"]}, "different families"),
        ({"task": "no-such-task"}, "unknown task"),
        ({"rank_by": "macro_f1", "metrics": ["micro_f1"]}, "is not in metrics"),
        ({"dataset": {"name": "x", "layout": "rexrank", "file": "x.json"}}, "dataset.layout"),
    ],
)
def test_a_malformed_task_benchmark_is_refused(tmp_path: Path, change: dict, message: str) -> None:
    import yaml

    data = yaml.safe_load(load_benchmark("phantoms-classification").path.read_text())
    data.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=message):
        load_benchmark(path)


def test_classification_run_matches_task_scores(tmp_path: Path) -> None:
    data, preds = _instruct(tmp_path / "data", {"classification": CLASSES,
                                                "grounding-abnormality": BOXES})  # fmt: skip
    path = _write(tmp_path / "answers.json", preds)
    bench = load_benchmark("phantoms-classification")
    result = run_benchmark(bench, path, data=data, model="m", out_dir=tmp_path / "out",
                           bootstrap=50)  # fmt: skip
    want = task_scores({i: r for i, r in preds.items() if r["task"] == "classification"})
    want = want["classification"]
    m = result["metrics"]
    assert result["ids"] == [f"s{k}:classification:0" for k in range(len(CLASSES))]
    for key in ("micro_f1", "macro_f1", "token_f1", "parsed"):
        assert m[key]["aggregate"] == pytest.approx(want[key], rel=1e-12)
        assert len(m[key]["per_sample"]) == len(CLASSES)
    # Per record: label-set F1 (2tp / (2tp + fp + fn)); the last answer names no label.
    assert m["micro_f1"]["per_sample"] == pytest.approx([2 / 3, 1.0, 2 / 3, 1.0, 0.0])
    assert m["micro_f1"]["per_sample_detailed"]["exact"] == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert m["micro_f1"]["pooled"]["statistic"] == "micro-f1"
    assert result["ranking"] == {"metric": "micro_f1", "from": "rank_by",
                                 "value": want["micro_f1"], "higher_is_better": True,
                                 "transform": None}  # fmt: skip
    assert result["references"]["predictions_not_in_benchmark"]["count"] == len(BOXES)
    assert Path(result["_path"]) == tmp_path / "out" / "m" / "phantoms-classification.json"
    # Any subset: the pooled statistics are task_scores' on those records.
    sub = [0, 2, 4]
    keys = [result["ids"][i] for i in sub]
    again = task_scores({i: preds[i] for i in keys})["classification"]
    for key in ("micro_f1", "macro_f1"):
        assert pooled.corpus_fn(m[key])(np.array(sub)) == pytest.approx(again[key])


def test_grounding_run_matches_task_scores_and_ap_on_subsets(tmp_path: Path) -> None:
    data, preds = _instruct(tmp_path / "data", {"grounding-abnormality": BOXES})
    path = _write(tmp_path / "answers.json", preds)
    result = run_benchmark(load_benchmark("phantoms-grounding"), path, data=data, bootstrap=50)
    want = task_scores(preds)["grounding-abnormality"]
    m = result["metrics"]
    for key in ("map50", "mean_iou", "token_f1", "parsed"):
        assert m[key]["aggregate"] == pytest.approx(want[key], rel=1e-12)
    assert m["map50"]["per_sample"] == [1.0, 0.5, 1.0, 0.0]  # share of true boxes hit
    assert m["mean_iou"]["per_sample_detailed"]["true_boxes"] == [1.0, 2.0, 1.0, 1.0]
    ids = result["ids"]
    for sub in ([0, 1], [1, 2, 3], [2]):
        again = task_scores({ids[i]: preds[ids[i]] for i in sub})["grounding-abnormality"]
        assert pooled.corpus_fn(m["map50"])(np.array(sub)) == pytest.approx(again["map50"])
        assert pooled.corpus_fn(m["mean_iou"])(np.array(sub)) == pytest.approx(again["mean_iou"])


def test_truth_comes_from_the_predictions_without_data(tmp_path: Path) -> None:
    _, preds = _instruct(tmp_path / "data", {"classification": CLASSES})
    path = _write(tmp_path / "answers.json", preds)
    result = run_benchmark(load_benchmark("phantoms-classification"), path, bootstrap=10)
    assert result["references"]["path"] == str(path)
    del preds["s0:classification:0"]
    data = tmp_path / "data"
    with pytest.raises(InputError, match="no answer for 1 of 5"):
        run_benchmark(load_benchmark("phantoms-classification"), _write(path, preds), data=data)


def test_conversation_benchmark_says_it_needs_a_judge(tmp_path: Path) -> None:
    pairs = [("Yes, there is edema.", "Yes, edema."), ("No.", "No, there is none.")]
    data, preds = _instruct(tmp_path / "data", {"conversation-llm": pairs})
    bench = load_benchmark("radvlm-conversation-mimic-cxr")
    import dataclasses

    here = dataclasses.replace(bench.dataset, file="instruct/test.jsonl")
    bench = dataclasses.replace(bench, dataset=here)
    result = run_benchmark(bench, _write(tmp_path / "a.json", preds), data=data, bootstrap=10)
    assert "needs a judge endpoint" in result["skipped_metrics"]["conversation-judge"]
    assert "--judge-url" in result["skipped_metrics"]["conversation-judge"]
    assert result["ranking"]["metric"] == "token_f1"
    assert result["ranking"]["from"] == "offline_rank_by"
    from radixpert.errors import MetricUnavailable

    with pytest.raises(MetricUnavailable, match="judge endpoint"):
        run_benchmark(bench, tmp_path / "a.json", data=data, metrics=["conversation-judge"])


def test_rexgradient_references_follow_rexrank_building() -> None:
    records = read_records(GRADIENT_TEST, "rexgradient")
    assert len(records) == 3
    key = {r["AccessionNumber"]: i for i, r in records.items()}
    fi = load_benchmark("rexrank-rexgradient-findings-impression")
    assert fi.dataset.layout == "rexgradient" and "not ReXrank's private" in fi.description
    refs, excluded = build_references(fi, records)
    assert excluded == []
    assert refs[key["GRDNLBACC0001"]] == (
        "Findings: Invented findings: the lungs are clear. "
        "Impression: Invented impression: no acute process."
    )
    assert refs[key["GRDNLBACC0002"]] == (
        "Findings: Invented findings: small left effusion. Impression: None"
    )
    assert refs[key["GRDNLBACC0003"]] == (
        "Findings: None Impression: Invented impression: catheter tip in the SVC."
    )
    clean, excluded = build_references(
        load_benchmark("rexrank-rexgradient-findings-impression-clean"), records
    )
    assert clean[key["GRDNLBACC0002"]] == "Findings: Invented findings: small left effusion."
    assert clean[key["GRDNLBACC0003"]] == (
        "Impression: Invented impression: catheter tip in the SVC."
    )
    findings, _ = build_references(load_benchmark("rexrank-rexgradient-findings"), records)
    assert findings[key["GRDNLBACC0003"]] == "None"
    cf, excluded = build_references(load_benchmark("rexrank-rexgradient-findings-clean"), records)
    assert excluded == [key["GRDNLBACC0003"]] and len(cf) == 2


def test_rexgradient_run_from_the_release_root(tmp_path: Path) -> None:
    records = read_records(GRADIENT_TEST, "rexgradient")
    preds = {i: {"findings": "Invented findings: the lungs are clear."} for i in records}
    path = _write(tmp_path / "p.json", preds)
    bench = load_benchmark("rexrank-rexgradient-findings-clean")
    result = run_benchmark(bench, path, data=GRADIENT, metrics=["bleu"], bootstrap=10)
    assert result["references"]["scored"] == 2 and result["references"]["excluded"]["count"] == 1


def test_leaderboard_tests_pooled_task_statistics_as_themselves(tmp_path: Path) -> None:
    bench = load_benchmark("phantoms-classification")
    data, preds = _instruct(tmp_path / "data", {"classification": CLASSES})
    worse = {i: {**r, "model_prediction": "No Finding"} for i, r in preds.items()}
    for name, answers in (("good", preds), ("worse", worse)):
        run_benchmark(bench, _write(tmp_path / f"{name}.json", answers), data=data,
                      model=name, out_dir=tmp_path / "results", bootstrap=20)  # fmt: skip
    summary = build_site(tmp_path / "results", tmp_path / "site", resamples=200,
                         rank_resamples=50)  # fmt: skip
    board = summary["benchmarks"]["phantoms-classification"]
    assert [m["model"] for m in board["models"]] == ["good", "worse"]
    settings = json.loads((tmp_path / "site" / "settings.json").read_text())
    ranking = settings["benchmarks"]["phantoms-classification"]["ranking"]
    assert ranking["test_statistic"].startswith("corpus statistic, pooled")
    good = task_scores(preds)["classification"]["micro_f1"]
    bad = task_scores(worse)["classification"]["micro_f1"]
    with open(tmp_path / "site" / "leaderboard.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[1]["difference"]) == pytest.approx(good - bad)  # the statistic's, not a mean
    assert not math.isclose(good - bad, 0.0)
    page = (tmp_path / "site" / "index.html").read_text()
    assert "corpus statistics tested as themselves (micro_f1, macro_f1)" in page


def test_report_corpus_columns_say_their_test_is_on_means(tmp_path: Path) -> None:
    records = read_records(GRADIENT_TEST, "rexgradient")
    bench = "rexrank-rexgradient-findings-impression"
    for name, text in (("a", "Findings: the lungs are clear."), ("b", "Impression: unchanged.")):
        preds = {i: {"model_prediction": f"{text} {k}"} for k, i in enumerate(records)}
        run_benchmark(load_benchmark(bench), _write(tmp_path / f"{name}.json", preds),
                      data=GRADIENT, model=name, out_dir=tmp_path / "results",
                      metrics=["bleu"], bootstrap=10)  # fmt: skip
    build_site(tmp_path / "results", tmp_path / "site", metric="bleu-4", resamples=50,
               rank_resamples=20)  # fmt: skip
    md = (tmp_path / "site" / "leaderboard.md").read_text()
    assert "bleu-4 †" in md and "use the mean of the per-sample scores" in md
    settings = json.loads((tmp_path / "site" / "settings.json").read_text())
    per = settings["benchmarks"][bench]["test_statistic_per_metric"]
    assert per["bleu-4"].startswith("mean of per-sample scores (a corpus statistic")


def test_phantom_task_benchmarks_name_their_image_folder():
    """The demo's instruct files hold image paths relative to the phantoms folder, so
    `benchmark run --model` must find the images there, not beside the instruct file."""
    from radixpert.leaderboard.benchmarks import load_benchmark

    for name in ("phantoms-classification", "phantoms-grounding"):
        bench = load_benchmark(name)
        assert bench.dataset.images == "phantoms"
        assert bench.dataset.file == "instruct/test.jsonl"
