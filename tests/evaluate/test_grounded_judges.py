"""RadFact-style grounded judge and RadVLM-style conversation judge, through a real server.

The judge is a loopback HTTP server (`judge_server.JudgeServer`) whose answers are computed
from the prompt it receives: a statement is "entailed" when it is one of the numbered
reference sentences (that sentence is the evidence); a rated round scores 10 when the
generated answer equals the expected one. Some questions are first answered in a wrong
format (prose, a wrong label, an out-of-range sentence number, "11/10", a bare "7/10") and
then, after the correction, in the right one; some never are, and must be counted failures.
The scores of the grounded report pairs below are worked out by hand in the comments.
"""

from __future__ import annotations

import json
import math
import re

import pytest

from radixpert.evaluate.judges import conversation as cj
from radixpert.evaluate.judges import radfact as rf
from radixpert.evaluate.judges.backend import EndpointJudge, JudgeParseError
from tests.evaluate.judge_server import JudgeServer


def first_user(body: dict) -> str:
    """The original question (a retry appends the bad answer and a correction after it)."""
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def is_retry(body: dict) -> bool:
    return len(body["messages"]) > 2


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def entailment_answer(body: dict) -> str:
    """A correct verdict computed from the question: entailed iff the statement is one of
    the reference sentences."""
    text = first_user(body)
    premise = text.split("sentence by sentence:\n", 1)[1].split("\n\nStatement: ", 1)[0]
    statement = text.split("\n\nStatement: ", 1)[1].split("\n", 1)[0]
    numbered = [line.split(". ", 1) for line in premise.splitlines()]
    hits = [int(k) for k, s in numbered if _norm(s) == _norm(statement)]
    verdict = "entailed" if hits else "not_entailed"
    return json.dumps({"verdict": verdict, "evidence": hits})


# Statements first answered in a wrong format, then (after the correction) correctly.
FIRST_WRONG = {
    "Heart size is normal.": "The statement is entailed by sentence 2 of the report.",
    "Small right effusion.": '{"verdict": "entailment", "evidence": []}',
    "Right apical pneumothorax.": '{"verdict": "not_entailed", "evidence": [7]}',
}
NEVER_RIGHT = "Possible nodule."


def statement(body: dict) -> str:
    return first_user(body).split("\n\nStatement: ", 1)[1].split("\n", 1)[0]


def radfact_respond(body: dict) -> str:
    statement_ = statement(body)
    if statement_ == NEVER_RIGHT:
        return "I cannot tell from the report whether there is a nodule."
    if statement_ in FIRST_WRONG and not is_retry(body):
        return FIRST_WRONG[statement_]
    return entailment_answer(body)


@pytest.fixture
def server():
    with JudgeServer(radfact_respond) as s:
        yield s


def metric(server: JudgeServer, tag: str, **kw) -> rf.RadFact:
    # The judge's name is part of the cache key: a name per test keeps tests independent.
    return rf.RadFact(backend=EndpointJudge(server.url, model=f"judge-{tag}"), **kw)


# Pair A. Candidate: 1 "Left basal opacity." [box inside the reference's] entailed, boxes
# within the evidence (pixel precision 1); 2 "Heart size is normal." entailed, no box;
# 3 "Right apical pneumothorax." boxed, not entailed. Logical P 2/3, grounding P 1/1, spatial
# P 1/2. Reference: 1 entailed by candidate 1, but its box [0.5, 0.9]^2 (pixels 112..201, 89
# a side) is covered only by [0.7, 0.9]^2 (156..201, 45): 2025 / 7921 = 0.26, not > 0.5;
# 2 entailed; 3 boxed, not entailed. Logical R 2/3, grounding R 0/1, spatial R 0/2.
REF_A = (
    "Left basal opacity [0.50, 0.50, 0.90, 0.90]. Heart size is normal. "
    "Small right effusion [0.10, 0.60, 0.30, 0.90]."
)
CAND_A = (
    "Left basal opacity [0.70, 0.70, 0.90, 0.90]. Heart size is normal. "
    "Right apical pneumothorax [0.10, 0.05, 0.35, 0.30]."
)
# Pair B. Candidate: "No acute findings." entailed; the tube sentence boxed, not entailed:
# logical P 1/2, grounding P NaN (no entailed boxed sentence), spatial P 0/1. Reference:
# logical R 1/1, grounding and spatial R NaN (no boxes).
REF_B = "No acute findings."
CAND_B = "No acute findings. Tube tip in the stomach [0.40, 0.60, 0.50, 0.80]."
# Pair C. An empty candidate: logical P NaN; the reference sentence is not asked (nothing
# can support it): logical R 0.
REF_C = "Heart size is normal."
CAND_C = ""


def test_pinned_scores_retries_and_cache(server):
    m = metric(server, "pinned")
    result = m.compute([REF_A, REF_B, REF_C], [CAND_A, CAND_B, CAND_C])
    scores = {r.name: r for r in result.flatten()}
    nan = math.nan

    def same(got, want):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w)

    same(scores["radfact-logical-precision"].per_sample, [2 / 3, 1 / 2, nan])
    same(scores["radfact-logical-recall"].per_sample, [2 / 3, 1.0, 0.0])
    same(scores["radfact-grounding-precision"].per_sample, [1.0, nan, nan])
    same(scores["radfact-grounding-recall"].per_sample, [0.0, nan, nan])
    same(scores["radfact-spatial-precision"].per_sample, [1 / 2, 0.0, nan])
    same(scores["radfact-spatial-recall"].per_sample, [0.0, nan, nan])
    same(result.per_sample, [2 / 3, 2 / 3, nan])  # each pair's logical F1
    p, r = (2 / 3 + 1 / 2) / 2, (2 / 3 + 1 + 0) / 3  # NaN-ignoring means over pairs
    assert scores["radfact-logical-precision"].aggregate == pytest.approx(p)
    assert scores["radfact-logical-recall"].aggregate == pytest.approx(r)
    assert result.aggregate == pytest.approx(2 * p * r / (p + r))
    assert scores["radfact-grounding-precision"].aggregate == pytest.approx(1.0)
    assert scores["radfact-grounding-f1"].aggregate == 0.0
    assert scores["radfact-spatial-precision"].aggregate == pytest.approx(0.25)
    assert result.corpus_fn is not None
    assert result.corpus_fn([0, 1, 2]) == pytest.approx(result.aggregate)
    assert result.corpus_fn([1, 1]) == pytest.approx(2 * 0.5 * 1 / 1.5)

    # 9 questions (3 + 3, 2 + 1, 0 + 1 unasked); four needed a second answer ("Heart size
    # is normal." is asked in both directions of pair A).
    s = result.settings
    assert (s["questions"], s["failed"], s["retried"], s["cached"]) == (9, 0, 4, 0)
    assert s["prompt_version"] == rf.PROMPT_VERSION == "radixpert-radfact-ev-v1"
    assert result.detailed["unasked_empty_premise"] == 1
    assert result.detailed["invalid_samples"] == 0
    assert len(server.requests) == 13
    retry = next(b for b in server.requests if is_retry(b))
    assert "could not be read" in retry["messages"][-1]["content"]
    # The judge sees text only, never the boxes.
    assert all("[0." not in first_user(b) for b in server.requests)

    # The same pairs again: every verdict comes from the cache, nothing is asked.
    again = metric(server, "pinned").compute([REF_A, REF_B, REF_C], [CAND_A, CAND_B, CAND_C])
    assert len(server.requests) == 13
    assert again.settings["cached"] == 9
    same(again.per_sample, result.per_sample)


def test_unparsable_answers_are_counted_not_guessed(server):
    refs = ["Heart size is normal. Possible nodule.", "Heart size is normal."]
    cands = ["Heart size is normal.", "Heart size is normal."]
    result = metric(server, "fail", judge_retries=1).compute(refs, cands)
    # "Possible nodule." (reference against candidate 0) never parses: asked twice, failed.
    assert result.settings["failed"] == 1
    assert result.detailed["failed_questions"] == 1
    assert result.detailed["invalid_indices"] == [0]
    assert math.isnan(result.per_sample[0]) and result.per_sample[1] == 1.0
    assert result.aggregate == 1.0
    asked = [b for b in server.requests if statement(b) == NEVER_RIGHT]
    assert len(asked) == 2

    # RadFact's own rule, chosen explicitly: the unanswered sentence counts as not entailed.
    lenient = metric(server, "fail", judge_retries=1, on_failure="not_entailed")
    again = lenient.compute(refs, cands)
    assert again.per_sample[0] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert again.settings["failed"] == 1 and again.settings["on_failure"] == "not_entailed"
    assert len([b for b in server.requests if statement(b) == NEVER_RIGHT]) == 4  # not cached


def test_without_a_judge_the_metric_says_what_to_pass():
    m = rf.RadFact()
    assert "--judge-url" in (m.check() or "")
    with pytest.raises(ValueError, match="on_failure"):
        rf.RadFact(on_failure="zero")


# ------------------------------------------------------------------------- sentences, boxes


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            "Left basal opacity [0.55, 0.60, 0.90, 0.85]. Heart size is normal.",
            [("Left basal opacity.", 1), ("Heart size is normal.", 0)],
        ),
        # boxes after the full stop belong to that sentence; decimals do not end a sentence
        (
            "Opacity in the right lung. [0.1, 0.2, 0.3, 0.4] [0.5, 0.5, 0.6, 0.6] Tube tip "
            "1.5 cm above the carina.\nNo effusion",
            [
                ("Opacity in the right lung.", 2),
                ("Tube tip 1.5 cm above the carina.", 0),
                ("No effusion", 0),
            ],
        ),
        ("[0.1, 0.2, 0.3, 0.4] Nodule.", [("Nodule.", 1)]),
        ("- Opacity [0.1, 0.1, 0.2, 0.2] .\n- Effusion.", [("Opacity.", 1), ("Effusion.", 0)]),
        ("Size [3 cm] unchanged.", [("Size [3 cm] unchanged.", 0)]),
        ("", []),
        (" . ", []),
    ],
)
def test_split_grounded_report(text, want):
    got = rf.split_grounded_report(text)
    assert [(s.text, len(s.boxes)) for s in got] == want


def test_box_overlap_rule():
    # 224-pixel mask: 0.25 -> 56, 0.5 -> 112 exactly.
    box = [(0.0, 0.0, 0.5, 0.5)]
    half = [(0.0, 0.0, 0.25, 0.5)]
    assert rf.box_precision(box, half) == 0.5
    assert not rf.boxes_entailed(box, half)  # RadFact asks for more than 0.5
    union = [(0.0, 0.0, 0.25, 0.5), (0.25, 0.0, 0.5, 0.25)]
    assert rf.box_precision(box, union) == 0.75
    assert rf.boxes_entailed(box, union)
    assert rf.boxes_entailed([(0.1, 0.1, 0.2, 0.2)], box)  # inside: precision 1
    assert rf.box_precision([(0.6, 0.6, 0.9, 0.9)], box) == 0.0
    assert not rf.boxes_entailed(box, [])  # no evidence boxes
    assert math.isnan(rf.box_precision([(0.5, 0.5, 0.5, 0.9)], box))  # no area
    assert not rf.boxes_entailed([(0.5, 0.5, 0.5, 0.9)], box)
    # truncation to whole pixels, as RadFact: 0.3 * 224 = 67.2 -> 67
    assert rf.box_precision([(0.0, 0.0, 0.3, 1.0)], [(0.0, 0.0, 67 / 224, 1.0)]) == 1.0
    assert rf.box_precision([(-0.5, 0.0, 0.5, 1.5)], [(0.0, 0.0, 0.5, 1.0)]) == 1.0  # clipped


def test_one_way_counts():
    box, other = ((0.1, 0.1, 0.2, 0.2),), ((0.6, 0.6, 0.7, 0.7),)
    hyps = [rf.Sentence("a", box), rf.Sentence("b"), rf.Sentence("c", other)]
    premise = [rf.Sentence("x", ((0.0, 0.0, 0.5, 0.5),)), rf.Sentence("y")]
    verdicts = [
        {"verdict": "entailed", "evidence": [0]},
        {"verdict": "entailed", "evidence": [1]},
        {"verdict": "entailed", "evidence": [1]},  # evidence without boxes: not spatial
    ]
    out = rf.one_way(hyps, premise, verdicts)
    assert out["entailed_fraction"] == 1.0
    assert out["entailed_box_fraction"] == 0.5
    assert out["full_box_fraction"] == 0.5


@pytest.mark.parametrize(
    ("answer", "want"),
    [
        ('{"verdict": "entailed", "evidence": [2, 1]}', ("entailed", [0, 1])),
        ('{"verdict": "not_entailed", "evidence": []}', ("not_entailed", [])),
        ('```json\n{"verdict": "not_entailed", "evidence": [3]}\n```', ("not_entailed", [2])),
    ],
)
def test_parse_verdict_accepts(answer, want):
    assert rf.parse_verdict(answer, 3) == {"verdict": want[0], "evidence": want[1]}


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("The statement is entailed by sentence 1.", "not a single JSON object"),
        ('Verdict: {"verdict": "entailed", "evidence": [1]}', "not a single JSON object"),
        ('{"verdict": "entailment", "evidence": [1]}', "must be"),
        ('{"verdict": "entailed", "evidence": [4]}', "not a sentence number"),
        ('{"verdict": "entailed", "evidence": [0]}', "not a sentence number"),
        ('{"verdict": "entailed", "evidence": ["1"]}', "list of sentence numbers"),
        ('{"verdict": "entailed", "evidence": [true]}', "list of sentence numbers"),
        ('{"verdict": "entailed", "evidence": [1, 1]}', "twice"),
        ('{"verdict": "entailed", "evidence": []}', "at least one"),
        ('{"verdict": "entailed", "evidence": [1], "why": "x"}', "exactly the keys"),
        ('[{"verdict": "entailed", "evidence": [1]}]', "exactly the keys"),
    ],
)
def test_parse_verdict_rejects(answer, reason):
    with pytest.raises(JudgeParseError, match=reason):
        rf.parse_verdict(answer, 3)


# ---------------------------------------------------------------------- conversation judge

CONVERSATIONS = [
    {
        "id": "s1:conversation:0",
        "task": "conversation",
        "study_id": "s1",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat view is this radiograph?"},
            {"from": "gpt", "value": "This is a PA view."},
            {"from": "human", "value": "Is there pleural effusion?"},
            {"from": "gpt", "value": "Yes, there is pleural effusion."},
        ],
    },
    {
        "id": "s2:conversation:0",
        "task": "conversation",
        "study_id": "s2",
        "conversations": [
            {"from": "human", "value": "<image>\nIs there pneumothorax?"},
            {"from": "gpt", "value": "No, there is no pneumothorax."},
        ],
    },
    {
        "id": "s3:conversation:0",
        "task": "conversation",
        "study_id": "s3",
        "conversations": [
            {"from": "human", "value": "<image>\nSummarise the main findings."},
            {"from": "gpt", "value": "Cardiomegaly with mild edema."},
        ],
    },
]

# What radixpert generate writes for them (no question, no history), plus another task.
RECORDS = {
    "s1:conversation:0": {
        "model_prediction": "Yes, there is pleural effusion.",
        "report": "Yes, there is pleural effusion.",
        "study_id": "s1",
        "task": "conversation",
    },
    "s2:conversation:0": {
        "model_prediction": "No, I see no pneumothorax.",
        "report": "No, there is no pneumothorax.",
        "study_id": "s2",
        "task": "conversation",
    },
    "s3:conversation:0": {
        "model_prediction": "Enlarged heart.",
        "report": "Cardiomegaly with mild edema.",
        "study_id": "s3",
        "task": "conversation",
    },
    "s1:classification:0": {
        "model_prediction": "Pleural Effusion",
        "report": "Pleural Effusion",
        "study_id": "s1",
        "task": "classification",
    },
}


def rated(text: str) -> list[tuple[str, str]]:
    return re.findall(r"Expected answer: (.*)\nGenerated answer: (.*)", text)


def conversation_respond(body: dict) -> str:
    """10 for a rated answer equal to the expected one, 3 for one with the same first word
    (yes / no), else 1; averaged over the rated rounds, halves rounded up. Malformed first
    answers for some questions."""
    text = first_user(body)
    points = [10 if e == g else 3 if e.split()[0] == g.split()[0] else 1 for e, g in rated(text)]
    score = math.floor(sum(points) / len(points) + 0.5)
    if "Enlarged heart" in text:
        return "The answer is partly right.\nOverall score: 11/10"  # never valid
    if "pneumothorax" in text and not is_retry(body):
        return "Round 1: wrong.\n7/10"
    return f"Round 1: compared with the expected answer.\nOverall score: {score}/10"


def test_conversation_scores_through_the_server(tmp_path):
    path = tmp_path / "conversations.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    turns = cj.read_conversations(path)
    with JudgeServer(conversation_respond) as server:
        backend = EndpointJudge(server.url, model=f"judge-{tmp_path.name}")
        result = cj.conversation_scores(RECORDS, backend, conversations=turns, retries=1)
        d = result.detailed
        assert d["ids"] == ["s1:conversation:0", "s2:conversation:0", "s3:conversation:0"]
        assert result.per_sample[:2] == [10.0, 3.0]
        assert math.isnan(result.per_sample[2])
        assert (d["n"], d["judged"], d["failed"], d["failed_ids"]) == (
            3,
            2,
            1,
            ["s3:conversation:0"],
        )
        assert d["other_tasks"] == 1 and d["history_rounds"] == 1 and d["rated_rounds"] == 3
        assert result.aggregate == 6.5
        assert result.corpus_fn is not None and result.corpus_fn([0, 0, 2]) == 10.0
        s = result.settings
        assert (s["questions"], s["failed"], s["retried"]) == (3, 1, 2)
        assert s["prompt_version"] == cj.PROMPT_VERSION == "radixpert-conversation-judge-v1"
        # The question and the history reach the judge; the image token does not.
        # (questions are in flight at once: find s1's among the requests)
        first = next(
            first_user(r) for r in server.requests if "Is there pleural effusion?" in first_user(r)
        )
        assert "Round 1 (history, not rated)\nUser: What view is this radiograph?" in first
        assert "Assistant: This is a PA view." in first
        assert "Round 2 (rated)\nUser: Is there pleural effusion?" in first
        assert "<image>" not in first
        asked = len(server.requests)
        again = cj.conversation_scores(RECORDS, backend, conversations=turns, retries=1)
        assert len(server.requests) == asked + 2  # only the failed one is asked again
        assert again.settings["cached"] == 2


def test_conversation_scores_whole_conversations_and_context():
    record = {
        "model_prediction": ["AP view.", "Yes, there is pleural effusion."],
        "report": "Yes, there is pleural effusion.",
        "study_id": "s1",
        "task": "conversation",
        "conversation": CONVERSATIONS[0]["conversations"],
    }
    with JudgeServer(conversation_respond) as server:
        backend = EndpointJudge(server.url, model="judge-whole")
        result = cj.conversation_scores(
            {"a": record}, backend, context={"s1": "Findings: right pleural effusion."}
        )
        text = first_user(server.requests[0])
    assert result.per_sample == [6.0]  # rounds: 1 and 10 points, mean 5.5, rounded to 6
    assert "Provided data (seen by the writer of the expected answers):\nFindings:" in text
    assert "(history, not rated)" not in text and "Round 2 (rated)" in text
    with pytest.raises(ValueError, match="no provided data"):
        cj.conversation_scores({"a": record}, backend, context={})


def test_conversation_records_must_carry_their_question():
    with pytest.raises(ValueError, match="pass conversations="):
        cj.conversation_scores(RECORDS, backend=None)  # type: ignore[arg-type]
    wrong = {**RECORDS["s2:conversation:0"], "report": "Yes."}
    with pytest.raises(ValueError, match="differs"):
        cj.rounds_of("x", wrong, CONVERSATIONS[1]["conversations"])
    many = {**RECORDS["s2:conversation:0"], "model_prediction": ["a", "b"]}
    with pytest.raises(ValueError, match="2 answers for 1 rounds"):
        cj.rounds_of("x", many, CONVERSATIONS[1]["conversations"])
    with pytest.raises(ValueError, match="without a question"):
        cj.rounds_of("x", RECORDS["s2:conversation:0"], [{"from": "gpt", "value": "No."}])


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("Round 1: correct.\nOverall score: 7/10", 7),
        ("Overall score: 10/10\n\n", 10),
        ("Round 1: unrelated.\n  Overall score: 0/10  ", 0),
    ],
)
def test_parse_score_accepts(answer, score):
    assert cj.parse_score(answer) == score


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "empty"),
        ("The generated answer is mostly right.", "last line must be"),
        ("Round 1: fine.\n7/10", "last line must be"),
        ("Overall score: 7.5/10", "last line must be"),
        ("Overall score: 7", "last line must be"),
        ("**Overall score: 7/10**", "last line must be"),
        ("Overall score: 7/10\nI hope this helps.", "last line must be"),
        ("Overall score: 11/10", "outside 0 to 10"),
        ("Overall score: 6/10\nOverall score: 7/10", "once"),
    ],
)
def test_parse_score_rejects(answer, reason):
    with pytest.raises(JudgeParseError, match=reason):
        cj.parse_score(answer)


def test_conversation_judge_metric_on_pairs(tmp_path):
    refs = ["No, there is no pneumothorax.", "Cardiomegaly with mild edema.", "Yes."]
    cands = ["No, there is no pneumothorax.", "Enlarged heart.", "Yes."]
    with JudgeServer(conversation_respond) as server:
        backend = EndpointJudge(server.url, model=f"judge-{tmp_path.name}")
        m = cj.ConversationJudge(backend=backend, judge_retries=1)
        result = m.compute(refs, cands)
        text = first_user(server.requests[0])
        assert "User: (not available)" in text and cj.NO_QUESTION in text
        assert result.per_sample[0] == 10.0 and result.per_sample[2] == 10.0
        assert math.isnan(result.per_sample[1])
        assert result.detailed["failed_indices"] == [1]
        assert result.aggregate == 10.0
        assert result.settings["question"] == "not available (pairs only)"
        asked = len(server.requests)
        cj.ConversationJudge(backend=backend, judge_retries=1).compute(refs[::2], cands[::2])
        assert len(server.requests) == asked  # both from the cache
