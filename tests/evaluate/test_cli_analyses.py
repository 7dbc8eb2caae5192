"""`radixpert evaluate` with a judge, against raters and for retrieval, as a user runs it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from radixpert.cli import main
from radixpert.evaluate.judges import backend as jb
from tests.evaluate.judge_server import JudgeServer
from tests.evaluate.test_error_judges import IDS, JUDGED, good_counts

REXVAL = Path(__file__).parent / "data" / "rexval"


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIXPERT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(jb, "TRANSPORT_BACKOFF_S", 0.0)


def _example_files(tmp_path: Path) -> tuple[Path, Path]:
    folder = resources.files("radixpert") / "examples"
    refs = [r for r in json.loads((folder / "references.json").read_text()) if r["id"] in IDS]
    cands = json.loads((folder / "candidates.json").read_text())
    r, c = tmp_path / "refs.json", tmp_path / "cands.json"
    r.write_text(json.dumps(refs))
    c.write_text(json.dumps({i: cands[i] for i in IDS}))
    return r, c


def test_evaluate_with_a_judge_on_loopback(tmp_path, capsys):
    refs, cands = _example_files(tmp_path)
    out = tmp_path / "results.json"
    with JudgeServer(good_counts) as server:
        argv = ["evaluate", "-r", str(refs), "-c", str(cands), "--section", "findings+impression"]
        argv += ["-m", "chexprompt", "crimson-weighted", "-o", str(out), "-q"]
        argv += ["--judge-url", server.url, "--judge-model", "judge-a", "--bootstrap", "50"]
        assert main(argv) == 0
        asked = len(server.requests)
    results = json.loads(out.read_text())
    metrics = results["metrics"]
    significant = [sum(v["significant"].values()) for v in JUDGED.values()]
    assert metrics["chexprompt"]["aggregate"] == pytest.approx(sum(significant) / len(IDS))
    assert metrics["chexprompt"]["settings"]["judge_model"] == "judge-a"
    assert "crimson-weighted" in metrics
    # crimson-weighted reads the chexprompt judgements: one question per pair, not two
    assert asked == len(IDS)
    assert "chexprompt" in capsys.readouterr().out


def test_a_remote_judge_is_refused_without_the_opt_in(tmp_path, capsys):
    refs, cands = _example_files(tmp_path)
    argv = ["evaluate", "-r", str(refs), "-c", str(cands), "-m", "chexprompt"]
    argv += ["--judge-url", "http://192.0.2.7:8000/v1", "--judge-model", "m"]
    assert main(argv) != 0
    assert "--judge-allow-remote" in capsys.readouterr().err


def test_a_judge_metric_without_a_judge_says_what_to_pass(tmp_path, capsys):
    refs, cands = _example_files(tmp_path)
    assert main(["evaluate", "-r", str(refs), "-c", str(cands), "-m", "chexprompt"]) != 0
    assert "--judge-url" in capsys.readouterr().err


def test_evaluate_against_raters(tmp_path, capsys):
    out = tmp_path / "tau.json"
    argv = ["evaluate", "--against-raters", str(REXVAL), "-m", "bleu-2-radcliq", "rouge-l"]
    argv += ["--bootstrap", "100", "-o", str(out), "-q"]
    assert main(argv) == 0
    text = out.read_text()
    result = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert "bleu-2-radcliq" in text and "rouge-l" in text
    assert result
    assert "tau" in capsys.readouterr().out.lower()


def test_retrieval_needs_a_model_and_data(capsys):
    assert main(["evaluate", "--retrieval"]) == 2
    assert "--model and --data" in capsys.readouterr().err
