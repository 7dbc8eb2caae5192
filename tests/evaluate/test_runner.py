"""The evaluate runner and CLI end to end, with a test metric registered for the purpose."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from radixpert.cli import main
from radixpert.evaluate import registry
from radixpert.evaluate.base import Metric, MetricResult
from radixpert.evaluate.registry import Entry


class WordOverlap(Metric):
    """Per-sample Jaccard of word sets; a corpus companion; an inverse-displayed companion."""

    name = "word-overlap"
    requires = ()

    def __init__(self, fail: str | None = None):
        self.fail = fail

    def check(self):
        return self.fail

    def compute(self, references, candidates):
        s = [
            len(set(r.split()) & set(c.split())) / max(1, len(set(r.split()) | set(c.split())))
            for r, c in zip(references, candidates)
        ]
        hits = np.array(
            [len(set(r.split()) & set(c.split())) for r, c in zip(references, candidates)]
        )
        sizes = np.array([max(1, len(set(c.split()))) for c in candidates])
        corpus = MetricResult(
            "word-overlap-corpus",
            hits.sum() / sizes.sum(),
            list(hits / sizes),
            corpus_fn=lambda idx: float(hits[idx].sum() / sizes[idx].sum()),
        )
        inv = MetricResult(
            "inverse-thing",
            float(np.mean(s)) - 0.5,
            [x - 0.5 for x in s],
            higher_is_better=False,
            display_transform="inverse",
        )
        m = float(np.mean(s)) - 0.5
        inv.display = 1 / m if m > 0 else None
        return MetricResult(
            self.name, float(np.mean(s)), s, settings={"split": "spaces"}, extra=[corpus, inv]
        )


@pytest.fixture
def toy_registry(monkeypatch):
    monkeypatch.setitem(
        registry.REGISTRY, "word-overlap", Entry(f"{__name__}:WordOverlap", "test", "test metric")
    )
    monkeypatch.setitem(
        registry.REGISTRY,
        "never-runs",
        Entry(
            f"{__name__}:WordOverlap", "test", "unavailable", kwargs={"fail": "needs weights 'x'"}
        ),
    )
    monkeypatch.setitem(registry.GROUPS, "toy", ("word-overlap", "never-runs"))


@pytest.fixture
def files(tmp_path):
    refs = [
        {"id": f"s{i}", "findings": f"no pleural effusion case {i}", "impression": "normal"}
        for i in range(40)
    ]
    cands = {f"s{i}": ("" if i == 3 else f"small pleural effusion case {i % 7}") for i in range(40)}
    r, c = tmp_path / "refs.json", tmp_path / "cands.json"
    r.write_text(json.dumps(refs))
    c.write_text(json.dumps(cands))
    return r, c


def test_evaluate_writes_results_and_per_sample(toy_registry, files, tmp_path, capsys):
    r, c = files
    out, ps = tmp_path / "res" / "results.json", tmp_path / "res" / "ps.csv"
    assert (
        main(
            [
                "evaluate",
                "-r",
                str(r),
                "-c",
                str(c),
                "-m",
                "toy",
                "--out",
                str(out),
                "--per-sample",
                str(ps),
                "--bootstrap",
                "200",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    printed = capsys.readouterr()
    assert "word-overlap" in printed.out and "skipped never-runs: needs weights 'x'" in printed.out
    assert "[1/2] word-overlap on 40 pairs" in printed.err
    res = json.loads(out.read_text())
    assert res["pairs"] == 40 and res["ids"][:2] == ["s0", "s1"]
    assert res["empty_candidates"] == {"count": 1, "ids": ["s3"]}
    assert res["skipped_metrics"] == {"never-runs": "needs weights 'x'"}
    m = res["metrics"]["word-overlap"]
    assert m["per_sample"][3] == 0.0 and len(m["per_sample"]) == 40
    assert m["aggregate"] == pytest.approx(np.mean(m["per_sample"]))
    assert m["ci95_normal"]["low"] < m["aggregate"] < m["ci95_normal"]["high"]
    assert m["ci95_bootstrap"]["resamples"] == 200 and m["ci95_bootstrap"]["seed"] == 3
    assert m["settings"] == {"split": "spaces"}
    corpus = res["metrics"]["word-overlap-corpus"]
    assert corpus["ci95_normal"]["method"].startswith("normal (bootstrap SE")
    assert (
        corpus["ci95_bootstrap"]["low"] <= corpus["aggregate"] <= corpus["ci95_bootstrap"]["high"]
    )
    assert res["inputs"]["references"]["records"] == 40
    rows = list(csv.DictReader(ps.open()))
    assert len(rows) == 40 and set(rows[0]) == {
        "id",
        "word-overlap",
        "word-overlap-corpus",
        "inverse-thing",
    }


def test_inverse_display_refuses_non_positive_mean(toy_registry, files, capsys):
    r, c = files
    main(["evaluate", "-r", str(r), "-c", str(c), "-m", "word-overlap", "--bootstrap", "50"])
    out = capsys.readouterr().out
    # the test metric's raw mean is below 0: the inverse must not be shown as a number
    assert re.search(r"1/inverse-thing +undefined \(mean <= 0\)", out)


def test_explicit_unavailable_metric_is_an_error(toy_registry, files, capsys):
    r, c = files
    assert main(["evaluate", "-r", str(r), "-c", str(c), "-m", "never-runs"]) == 2
    assert "never-runs: needs weights 'x'" in capsys.readouterr().err


def test_unknown_metric(files, capsys):
    r, c = files
    assert main(["evaluate", "-r", str(r), "-c", str(c), "-m", "bleurt"]) == 2
    assert "unknown metric 'bleurt'" in capsys.readouterr().err


def test_input_errors_exit_2_with_the_file_named(tmp_path, files, capsys):
    r, _ = files
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    assert main(["evaluate", "-r", str(r), "-c", str(bad)]) == 2
    assert "bad.json: record 0" in capsys.readouterr().err


def test_import_and_help_load_no_torch():
    code = (
        "import sys, radixpert, radixpert.cli;"
        "from radixpert.cli import build_parser;"
        "build_parser().format_help();"
        "bad = [m for m in ('torch', 'transformers', 'bert_score', 'radgraph') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    help_run = subprocess.run(
        [sys.executable, "-m", "radixpert.cli", "--help"], capture_output=True, text=True
    )
    assert help_run.returncode == 0 and "evaluate" in help_run.stdout


def test_long_reports_are_named(toy_registry, tmp_path, capsys):
    long = " ".join(["no pleural effusion"] * 300)
    r, c = tmp_path / "r.json", tmp_path / "c.json"
    r.write_text(json.dumps({"a": long, "b": "edema"}))
    c.write_text(json.dumps({"a": "effusion", "b": "mild edema"}))
    out = tmp_path / "res.json"
    assert main(["evaluate", "-r", str(r), "-c", str(c), "-m", "word-overlap", "-o", str(out)]) == 0
    assert "1 pair(s) with a report over 512 words (e.g. a)" in capsys.readouterr().err
    assert json.loads(out.read_text())["long_reports"]["ids"] == ["a"]


def test_shipped_example_end_to_end(tmp_path, capsys):
    from importlib.resources import files

    ex = files("radixpert") / "examples"
    out, ps = tmp_path / "results.json", tmp_path / "per_sample.csv"
    metrics = ["bleu", "bleu-2-radcliq", "rouge-l", "cider-d", "f1-chexpert"]
    args = ["evaluate", "-r", str(ex / "references.json"), "-c", str(ex / "candidates.json")]
    assert main([*args, "-m", *metrics, "-o", str(out), "--per-sample", str(ps)]) == 0
    table = capsys.readouterr().out
    for name in ("bleu-4", "rouge-l", "cider-d", "f1-chexpert-5-micro"):
        assert re.search(rf"^{name} +\d\.\d{{4}} +\[", table, re.M), name
    res = json.loads(out.read_text())
    assert res["pairs"] == 100 and len(res["metrics"]) == 15
    assert len(ps.read_text().splitlines()) == 101


class NearOne(Metric):
    """Scores in [0, 1] close to 1: a normal interval that would pass the upper bound."""

    name = "near-one"

    def compute(self, references, candidates):
        s = [1.0 if i % 3 else 0.9 for i in range(len(references))]
        return MetricResult(self.name, float(np.mean(s)), s, bounds=(0.0, 1.0))


class Interrupted(Metric):
    name = "interrupted"

    def compute(self, references, candidates):
        raise KeyboardInterrupt


@pytest.fixture
def more_metrics(monkeypatch):
    for name, cls in (("near-one", "NearOne"), ("interrupted", "Interrupted")):
        monkeypatch.setitem(registry.REGISTRY, name, Entry(f"{__name__}:{cls}", "test", name))


def _refuse_nan(name):
    raise ValueError(f"not strict JSON: {name}")


def test_results_are_strict_json_with_the_command_line(toy_registry, tmp_path, monkeypatch):
    r, c = tmp_path / "r.json", tmp_path / "c.json"
    r.write_text(json.dumps({"a": "no effusion"}))
    c.write_text(json.dumps({"a": "small effusion"}))
    out, ps = tmp_path / "res.json", tmp_path / "ps.jsonl"
    argv = ["evaluate", "-r", str(r), "-c", str(c), "-m", "word-overlap", "-o", str(out)]
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/radixpert", *argv])
    assert main([*argv, "--per-sample", str(ps)]) == 0
    text = out.read_text()
    res = json.loads(text, parse_constant=_refuse_nan)  # one pair: the SE is not a number
    m = res["metrics"]["word-overlap"]
    assert m["ci95_normal"]["se"] is None and m["ci95_normal"]["low"] is None
    assert res["command"] == ["radixpert", *argv]
    for line in ps.read_text().splitlines():
        json.loads(line, parse_constant=_refuse_nan)


def test_bounded_normal_interval_is_clipped(more_metrics, tmp_path):
    r, c = tmp_path / "r.json", tmp_path / "c.json"
    r.write_text(json.dumps({f"s{i}": f"no effusion {i}" for i in range(5)}))
    c.write_text(json.dumps({f"s{i}": f"effusion {i}" for i in range(5)}))
    out = tmp_path / "res.json"
    assert main(["evaluate", "-r", str(r), "-c", str(c), "-m", "near-one", "-o", str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]["near-one"]
    mean, se = m["mean"], m["ci95_normal"]["se"]
    assert mean + 1.959963984540054 * se > 1  # the unclipped interval would pass 1
    assert m["ci95_normal"]["high"] == 1.0 and m["bounds"] == [0.0, 1.0]
    assert m["ci95_normal"]["low"] == pytest.approx(mean - 1.959963984540054 * se)


def test_ctrl_c_exits_130_in_one_line_and_writes_nothing(more_metrics, files, tmp_path, capsys):
    r, c = files
    out = tmp_path / "out" / "res.json"
    args = ["evaluate", "-r", str(r), "-c", str(c), "-m", "interrupted", "-o", str(out)]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "radixpert evaluate: interrupted"
    assert "Traceback" not in err
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_skip_empty_references_end_to_end(toy_registry, tmp_path, capsys):
    r, c = tmp_path / "r.json", tmp_path / "c.json"
    r.write_text(json.dumps({"a": "", "b": "no effusion", "c": "  ", "d": "edema"}))
    c.write_text(json.dumps({"a": "x", "b": "small effusion", "c": "y", "d": "mild edema"}))
    out = tmp_path / "res.json"
    base = ["evaluate", "-r", str(r), "-c", str(c), "-m", "word-overlap", "-o", str(out)]
    assert main(base) == 2
    assert "2 empty reference report(s), e.g. 'a', 'c'" in capsys.readouterr().err
    assert not out.exists()
    assert main([*base, "--skip-empty-references"]) == 0
    printed = capsys.readouterr()
    assert "skipped 2 pair(s) with an empty reference" in printed.err
    assert "2 pairs with an empty reference skipped" in printed.out
    res = json.loads(out.read_text())
    assert res["pairs"] == 2 and res["ids"] == ["b", "d"]
    assert res["skipped_empty_references"] == {"count": 2, "ids": ["a", "c"]}


def test_named_columns_end_to_end(toy_registry, tmp_path):
    r, c = tmp_path / "r.csv", tmp_path / "c.csv"
    r.write_text("dicom_uid,text_gold\nx1,no effusion\nx2,edema\n")
    c.write_text("dicom_uid,text_gold\nx2,mild edema\nx1,small effusion\n")
    out = tmp_path / "res.json"
    args = ["evaluate", "-r", str(r), "-c", str(c), "-m", "word-overlap", "-o", str(out)]
    assert main([*args, "--id-column", "dicom_uid", "--text-column", "text_gold"]) == 0
    res = json.loads(out.read_text())
    assert res["ids"] == ["x1", "x2"] and res["columns"] == {"id": "dicom_uid", "text": "text_gold"}
    assert res["metrics"]["word-overlap"]["per_sample"] == [1 / 3, 1 / 2]


def test_per_sample_ids_are_spelled_as_the_references(toy_registry, tmp_path):
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    r, c = tmp_path / "r.json", tmp_path / "c.json"
    r.write_text(json.dumps({decomposed: "no effusion", "b": "edema"}), encoding="utf-8")
    c.write_text(json.dumps({composed: "small effusion", "b": "mild edema"}), encoding="utf-8")
    ps = tmp_path / "ps.csv"
    args = ["evaluate", "-r", str(r), "-c", str(c), "-m", "word-overlap", "--per-sample", str(ps)]
    assert main(args) == 0
    rows = list(csv.DictReader(ps.open(encoding="utf-8")))
    assert [row["id"] for row in rows] == [decomposed, "b"]
