"""CheXprompt-style, CRIMSON-weighted and FineRadScore-style judges through a real loopback
judge server answering realistic (and malformed) judgements of IU X-ray example pairs."""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest

from radixpert.errors import MetricUnavailable
from radixpert.evaluate.judges import backend as jb
from radixpert.evaluate.judges.backend import NO_JUDGE, JudgeParseError
from radixpert.evaluate.judges.errors import (
    CATEGORIES,
    PROMPT_VERSION,
    CheXprompt,
    CrimsonWeighted,
    parse_counts,
)
from radixpert.evaluate.judges.fineradscore import (
    FineRadScore,
    parse_corrections,
    report_lines,
)
from tests.evaluate.judge_server import JudgeServer, last_user

IDS = ("iu-1", "iu-2", "iu-4", "iu-7")


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIXPERT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(jb, "TRANSPORT_BACKOFF_S", 0.0)


def example_pairs() -> tuple[list[str], list[str]]:
    folder = resources.files("radixpert") / "examples"
    refs = {r["id"]: r for r in json.loads((folder / "references.json").read_text())}
    cands = json.loads((folder / "candidates.json").read_text())
    references = [f"{refs[i]['findings']} {refs[i]['impression']}" for i in IDS]
    return references, [cands[i] for i in IDS]


REFERENCES, CANDIDATES = example_pairs()


def counts(significant: dict[str, int], insignificant: dict[str, int]) -> dict:
    return {
        "significant": {c: significant.get(c, 0) for c in CATEGORIES},
        "insignificant": {c: insignificant.get(c, 0) for c in CATEGORIES},
    }


# What a careful judge would count for each pair (keyed by a phrase of the reference).
JUDGED = {
    # normal vs normal plus degenerative spine change
    "There is no pulmonary edema": counts({}, {"false_finding": 1}),
    # borderline cardiomegaly, sternotomy, enlarged pulmonary arteries vs a normal report
    "Borderline cardiomegaly": counts(
        {"omitted_finding": 1}, {"omitted_finding": 1, "wrong_severity": 1}
    ),
    # emphysema and a possible left apical cavity vs stable right-sided scarring
    "bullous emphysema": counts(
        {"omitted_finding": 2, "false_finding": 1, "wrong_location": 1, "false_comparison": 1},
        {},
    ),
    # bibasilar atelectasis vs left basilar opacity, a rotator cuff repair added
    "XXXX basilar atelectasis": counts(
        {}, {"wrong_location": 1, "false_finding": 1, "omitted_finding": 1}
    ),
}


def original_question(body: dict) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def which(body: dict) -> str:
    reference = original_question(body).split("REFERENCE:")[1].split("CANDIDATE")[0]
    return next(key for key in JUDGED if key in reference)


def good_counts(body: dict) -> str:
    answer = json.dumps(JUDGED[which(body)])
    return f"```json\n{answer}\n```" if which(body) == "Borderline cardiomegaly" else answer


def chexprompt(server: JudgeServer, model: str = "judge-a", **kw) -> CheXprompt:
    return CheXprompt(judge_url=server.url, judge_model=model, **kw)


def test_chexprompt_scores_of_example_pairs():
    with JudgeServer(good_counts) as server:
        result = chexprompt(server).compute(REFERENCES, CANDIDATES)
        assert len(server.requests) == 4
    assert result.name == "chexprompt" and not result.higher_is_better
    assert result.per_sample == [0.0, 1.0, 5.0, 0.0]
    assert result.aggregate == pytest.approx(1.5)
    total, insignificant = result.extra
    assert (total.name, total.per_sample) == ("chexprompt-total", [1.0, 3.0, 5.0, 3.0])
    assert total.aggregate == pytest.approx(3.0)
    assert (insignificant.name, insignificant.per_sample) == (
        "chexprompt-insignificant",
        [1.0, 2.0, 0.0, 3.0],
    )
    assert result.per_sample_detailed["significant_omitted_finding"] == [0.0, 1.0, 2.0, 0.0]
    assert result.detailed["mean_significant_omitted_finding"] == pytest.approx(0.75)
    assert result.detailed["share_without_significant_error"] == pytest.approx(0.5)
    assert result.detailed["failed"] == 0
    assert result.settings["prompt_version"] == PROMPT_VERSION == "radixpert-chexprompt-v1"
    assert result.settings["judge_model"] == "judge-a"
    assert result.corpus_fn is not None and result.corpus_fn([2, 2]) == 5.0
    # The prompt holds both reports; the judge is asked at temperature 0.
    question = next(b for b in server.requests if CANDIDATES[0] in last_user(b))
    assert REFERENCES[0].strip() in last_user(question)
    assert question["temperature"] == 0.0 and question["messages"][0]["role"] == "system"


def test_crimson_weighted_reads_the_same_judgements():
    with JudgeServer(good_counts) as server:
        chexprompt(server).compute(REFERENCES, CANDIDATES)
        result = CrimsonWeighted(judge_url=server.url, judge_model="judge-a").compute(
            REFERENCES, CANDIDATES
        )
        assert len(server.requests) == 4  # the second metric asked nothing
    # iu-1: 0.25 (insignificant false finding); iu-2: 1 + 0.25 + 0; iu-4: 2 + 1 + 0.5 + 0.5;
    # iu-7: 0 + 0.25 + 0.25
    assert result.per_sample == [0.25, 1.25, 4.0, 0.5]
    assert result.aggregate == pytest.approx(1.5)
    assert result.per_sample_detailed["weighted_finding_errors"] == [0.25, 1.25, 3.0, 0.5]
    assert result.per_sample_detailed["weighted_attribute_errors"] == [0.0, 0.0, 1.0, 0.0]
    assert result.settings["cached"] == 4
    assert "not the CRIMSON score" in result.settings["note"]


BAD = {
    "There is no pulmonary edema": '{"significant": {"false_finding": 0}, "insignificant": {}}',
    "Borderline cardiomegaly": json.dumps(counts({"omitted_finding": -1}, {"omitted_finding": 1})),
    "bullous emphysema": "Here is my assessment:\n" + json.dumps(JUDGED["bullous emphysema"]),
    "XXXX basilar atelectasis": '{"significant": {"false_finding": 0, "omitted_fin',
}
REASONS = {
    "There is no pulmonary edema": 'lacks the key "omitted_finding"',
    "Borderline cardiomegaly": "must be a whole number 0 or more, got -1",
    "bullous emphysema": "no text before it",
    "XXXX basilar atelectasis": "not valid JSON",
}


def test_malformed_answers_are_retried_with_the_reason_then_counted():
    def respond(body):
        key = which(body)
        corrected = len(body["messages"]) > 2
        # The last pair stays truncated: it never parses.
        if corrected and key != "XXXX basilar atelectasis":
            return good_counts(body)
        return BAD[key]

    with JudgeServer(respond) as server:
        result = chexprompt(server).compute(REFERENCES, CANDIDATES)
    assert len(server.requests) == 4 + 3 + 2  # 3 fixed at the first retry, 1 retried twice
    for body in server.requests:
        if len(body["messages"]) > 2:
            key = which(body)
            assert body["messages"][2] == {"role": "assistant", "content": BAD[key]}
            assert REASONS[key] in body["messages"][3]["content"]
    assert result.per_sample[:3] == [0.0, 1.0, 5.0] and math.isnan(result.per_sample[3])
    assert result.aggregate == pytest.approx(2.0)  # over the 3 judged pairs
    assert result.detailed["failed"] == 1 and result.detailed["failed_indices"] == [3]
    assert result.detailed["judged"] == 3
    assert result.settings["failed"] == 1 and result.settings["retried"] == 4
    assert math.isnan(result.extra[0].per_sample[3])
    # The failure is not cached: the next run asks that pair again, and only that pair.
    with JudgeServer(good_counts) as server2:
        again = CheXprompt(judge_url=server2.url, judge_model="judge-a")
        again.backend.identity = f"endpoint:judge-a@{server.url}"  # same judge, new port
        redo = again.compute(REFERENCES, CANDIDATES)
        assert len(server2.requests) == 1
    assert redo.per_sample == [0.0, 1.0, 5.0, 0.0]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (json.dumps({"significant": counts({}, {})["significant"]}), 'lacks the key "insig'),
        (
            json.dumps({**counts({}, {}), "explanation": "none"}),
            'key "explanation" that was not asked for',
        ),
        (json.dumps(counts({"wrong_severity": 1.0}, {})), "got 1.0"),
        (json.dumps(counts({"wrong_severity": "1"}, {})), 'got "1"'),
        (json.dumps(counts({"wrong_severity": True}, {})), "got true"),
        (json.dumps([counts({}, {})]), "must be a JSON object"),
        ('{"significant": [0, 0, 0, 0, 0, 0], "insignificant": {}}', "must be an object"),
    ],
)
def test_parse_counts_rejects(text, reason):
    with pytest.raises(JudgeParseError, match=reason):
        parse_counts(text)


def test_cache_second_run_asks_nothing_and_changes_ask_again(monkeypatch):
    with JudgeServer(good_counts) as server:
        first = chexprompt(server).compute(REFERENCES, CANDIDATES)
        second = chexprompt(server).compute(REFERENCES, CANDIDATES)
        assert len(server.requests) == 4
        assert second.per_sample == first.per_sample and second.settings["cached"] == 4
        chexprompt(server, model="judge-b").compute(REFERENCES, CANDIDATES)
        assert len(server.requests) == 8
        monkeypatch.setattr(CheXprompt, "prompt_version", "radixpert-chexprompt-v1-test")
        chexprompt(server).compute(REFERENCES, CANDIDATES)
        assert len(server.requests) == 12
        chexprompt(server, cache=False).compute(REFERENCES, CANDIDATES)
        assert len(server.requests) == 16


@pytest.mark.parametrize("metric", [CheXprompt, CrimsonWeighted, FineRadScore])
def test_without_a_judge(metric):
    m = metric()
    assert m.check() == NO_JUDGE
    with pytest.raises(MetricUnavailable, match="needs a judge"):
        m.compute(REFERENCES, CANDIDATES)


def test_lengths_must_match():
    with JudgeServer(good_counts) as server, pytest.raises(ValueError, match="2 references"):
        chexprompt(server).compute(REFERENCES[:2], CANDIDATES[:1])


# --- FineRadScore-style -------------------------------------------------------------------


def test_report_lines():
    assert report_lines(CANDIDATES[0]) == [
        "Heart size and mediastinal contour are within normal limits.",
        "There is no focal airspace consolidation or suspicious pulmonary opacity.",
        "No pneumothorax or large pleural effusion.",
        "Mild degenerative change of the thoracic spine.",
        "No acute cardiopulmonary findings.",
    ]
    assert report_lines("1. Tube 2.2 cm above the carina. 2. No effusion.\nClear lungs") == [
        "1. Tube 2.2 cm above the carina.",
        "2. No effusion.",
        "Clear lungs",
    ]
    assert report_lines("  ") == []


def numbered(body: dict) -> list[str]:
    text = original_question(body).split("lines):\n")[1]
    return [] if text == "(no lines)" else text.split("\n")


# Corrections a careful judge would make, by pair: (line -> (correction, severity)), inserts.
CORRECTIONS = {
    "There is no pulmonary edema": ({4: ("[delete]", 1)}, []),
    "Borderline cardiomegaly": (
        {1: ("Borderline cardiomegaly.", 1)},
        [("Enlarged pulmonary arteries.", 2), ("Midline sternotomy.", 1)],
    ),
    "bullous emphysema": (
        {
            1: ("Opacities in the left lung apex could represent a cavitary lesion.", 3),
            2: ("[delete]", 2),
            5: ("Bullous emphysema and interstitial fibrosis.", 2),
        },
        [("Recommend short interval follow-up radiograph or CT thorax.", 2)],
    ),
    "XXXX basilar atelectasis": (
        {1: ("Bibasilar atelectasis.", 1), 4: ("There is thoracic spondylosis.", 1)},
        [],
    ),
}


def good_corrections(body: dict) -> str:
    fixes, inserts = CORRECTIONS[which(body)]
    entries = [
        {
            "line": i,
            "correction": fixes.get(i, (None, 0))[0],
            "severity": fixes.get(i, (None, 0))[1],
        }
        for i in range(1, len(numbered(body)) + 1)
    ]
    entries += [{"line": None, "correction": c, "severity": s} for c, s in inserts]
    return json.dumps(entries)


def test_fineradscore_of_example_pairs():
    with JudgeServer(good_corrections) as server:
        metric = FineRadScore(judge_url=server.url, judge_model="judge-a")
        result = metric.compute(REFERENCES, CANDIDATES)
        assert len(server.requests) == 4
        again = FineRadScore(judge_url=server.url, judge_model="judge-a").compute(
            REFERENCES, CANDIDATES
        )
        assert len(server.requests) == 4 and again.settings["cached"] == 4
    assert result.name == "fineradscore" and not result.higher_is_better
    assert result.per_sample == [1.0, 4.0, 9.0, 2.0]
    assert result.aggregate == pytest.approx(4.0)
    corrections, line_mean = result.extra
    assert corrections.name == "fineradscore-corrections"
    assert corrections.per_sample == [1.0, 3.0, 4.0, 2.0]
    assert line_mean.name == "fineradscore-line-mean"
    # lines judged: 5, 5 + 2 insertions, 5 + 1, 5
    assert line_mean.per_sample == pytest.approx([1 / 5, 4 / 7, 9 / 6, 2 / 5])
    assert result.per_sample_detailed["insertions"] == [0.0, 2.0, 1.0, 0.0]
    assert result.per_sample_detailed["deletions"] == [1.0, 0.0, 1.0, 0.0]
    assert result.per_sample_detailed["max_severity"] == [1.0, 2.0, 3.0, 1.0]
    assert result.detailed["mean_severity_of_corrections"] == pytest.approx(16 / 10)
    assert result.detailed["corrections_by_severity"] == {
        "not actionable": 5,
        "actionable nonurgent": 4,
        "urgent": 1,
        "emergent": 0,
    }
    assert result.settings["prompt_version"] == "radixpert-fineradscore-v1"
    asked = next(b for b in server.requests if "There is no pulmonary edema" in last_user(b))
    assert "[5] No acute cardiopulmonary findings." in last_user(asked)


def test_fineradscore_malformed_answers():
    def respond(body):
        key = which(body)
        good = json.loads(good_corrections(body))
        if len(body["messages"]) > 2 and key != "bullous emphysema":
            return json.dumps(good)
        if key == "There is no pulmonary edema":
            return json.dumps(good[:-1])  # line 5 missing
        if key == "Borderline cardiomegaly":
            return json.dumps([*good[:1], good[0], *good[1:]])  # line 1 twice
        if key == "bullous emphysema":
            good[0]["severity"] = 5
            return json.dumps(good)  # out of range, every time
        good[1]["severity"] = 2  # a correct line (correction null) with a severity
        return json.dumps(good)

    with JudgeServer(respond) as server:
        result = FineRadScore(judge_url=server.url, judge_model="judge-a").compute(
            REFERENCES, CANDIDATES
        )
    reasons = [b["messages"][3]["content"] for b in server.requests if len(b["messages"]) > 2]
    assert any("line 5 has no entry" in r for r in reasons)
    assert any("line 1 has two entries" in r for r in reasons)
    assert any("severity must be a whole number 0 to 4" in r for r in reasons)
    assert any("a correct line has correction null and severity 0" in r for r in reasons)
    assert result.per_sample[0] == 1.0 and math.isnan(result.per_sample[2])
    assert result.detailed["failed_indices"] == [2]
    assert result.aggregate == pytest.approx((1 + 4 + 2) / 3)


@pytest.mark.parametrize(
    ("entries", "n", "reason"),
    [
        ([{"line": 1, "correction": None}], 1, 'lacks the key "severity"'),
        ([{"line": 1, "correction": None, "severity": 0, "why": ""}], 1, 'key "why"'),
        ([{"line": 3, "correction": None, "severity": 0}], 2, "1 to 2 or null"),
        ([{"line": None, "correction": None, "severity": 2}], 0, "needs the line to insert"),
        ([{"line": None, "correction": "No effusion.", "severity": 0}], 0, "severity 1 to 4"),
        ([{"line": 1, "correction": "", "severity": 1}], 1, "non-empty string"),
        ({"1": {"correction": None}}, 1, "JSON array"),
    ],
)
def test_parse_corrections_rejects(entries, n, reason):
    with pytest.raises(JudgeParseError, match=reason):
        parse_corrections(json.dumps(entries), n)


def test_empty_candidate_is_all_insertions():
    entries = [{"line": None, "correction": "Small left effusion.", "severity": 2}]
    assert parse_corrections(json.dumps(entries), 0) == entries
    assert parse_corrections("[]", 0) == []
