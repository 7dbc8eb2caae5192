"""RadVLM-style conversation judge (Deperrois et al. 2025): an LLM scores answers 0-10.

    turns = read_conversations("instruct/test.jsonl")       # the input of radixpert generate
    result = conversation_scores(records, backend, conversations=turns)
    result.aggregate, result.per_sample, result.detailed["ids"], result.detailed["failed"]

    radixpert evaluate --metrics conversation-judge ...     # answer pairs, no question

What is measured follows uzh-dqbm-cmi/RadVLM@69fe946 (``radvlm/evaluation/
evaluate_conversations.py`` and ``prefix_evaluate_conv.txt``): the judge reads, per round,
the user's question, the expected answer (written with access to the study's data) and the
generated answer (the model saw only the image and the conversation), explains each round
briefly, and ends with one integer overall score from 0 to 10 for the whole conversation;
the benchmark number is the mean over conversations. RadVLM also shows the judge the study's
report, labels, view and sex; here such "provided data" is optional (``context``, per study).
The prompt is this project's own (``PROMPT_VERSION``).

``radixpert generate`` answers a conversation at its *last* human turn, with the earlier
turns (true answers included) as history, and records ``model_prediction`` (that answer),
``report`` (its true answer), ``study_id`` and ``task``, but neither the question nor the
earlier turns. The question therefore comes from the conversations file that was generated
from (``conversations=``, read by ``read_conversations``) or from a ``conversation`` list of
turns in the record. Earlier rounds are shown to the judge as history, not rated; RadVLM has
the model answer every round and rates them all, which ``model_prediction`` given as a list
(one answer per round) reproduces.

Parsing is strict (``parse_score``): the answer's last non-blank line must be exactly
``Overall score: N/10`` with N an integer 0..10, and no other line may name an overall
score. "7.5/10", "11/10", a bare "7/10", a score inside prose or two scores are parse errors,
asked again with the reason and then counted as failures (NaN in ``per_sample``, listed in
``detailed["failed_ids"]``). RadVLM's regex takes any number before "/10" anywhere and
drops unreadable answers from the mean silently; here nothing is read loosely and nothing is
dropped unsaid.

``ConversationJudge`` (``conversation-judge``) scores (reference answer, candidate answer)
text pairs when no question is available: the judge is told the question is missing and
rates agreement with the expected answer (correctness, completeness) only. It cannot judge
relevance to the question, so its numbers are not RadVLM's conversation score.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radixpert.evaluate.base import MetricResult
from radixpert.evaluate.judges.backend import (
    JudgeBackend,
    JudgeMetric,
    JudgeParseError,
    ask_all,
    judge_settings,
)

__all__ = [
    "CONVERSATION_TASKS",
    "PROMPT_VERSION",
    "ConversationJudge",
    "Round",
    "conversation_messages",
    "conversation_scores",
    "parse_score",
    "read_conversations",
    "rounds_of",
]

log = logging.getLogger(__name__)

PROMPT_VERSION = "radixpert-conversation-judge-v1"
CONVERSATION_TASKS = ("conversation", "conversation-llm")
NAMESPACE = "judge-conversation-judge"
MAX_TOKENS = 1024
_IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class Round:
    """One question and answer of a conversation.

    Attributes:
        question: the user's turn (None: not available).
        expected: the true answer.
        generated: the model's answer; None for a history round (shown, not rated).
    """

    question: str | None
    expected: str
    generated: str | None = None


# ------------------------------------------------------------------------------- prompt

SYSTEM = (
    "You evaluate a vision-language model that answers questions about chest X-rays. You are "
    "fair, concise, and you end your answer with the score line exactly as asked."
)

INSTRUCTIONS = """Each rated round below has the user's question, the expected answer (written \
by someone who had the study's data) and the generated answer (from the model, which had only \
the image and the conversation so far). Rounds marked as history were given to the model as \
earlier turns; do not rate them.

For each rated round, say in a sentence or two how the generated answer compares with the \
expected one: is it correct, complete and relevant to the question? Small differences in \
wording or detail that do not change the clinical meaning should cost little; a wrong \
finding, a wrong location or a missed finding should cost more.

Then give one overall score for the rated rounds together, an integer from 0 (entirely wrong \
or unrelated) to 10 (as good as the expected answers), on the last line, in exactly this \
format and with nothing after it:
Overall score: <integer from 0 to 10>/10"""

NO_QUESTION = (
    "The question was not recorded. Rate the generated answer only by how well it agrees "
    "with the expected answer (correctness and completeness)."
)


def _clean(text: str) -> str:
    return text.replace(_IMAGE_TOKEN, "").strip()


def conversation_messages(
    rounds: Sequence[Round], context: str | None = None
) -> list[dict[str, str]]:
    """The judge's question for one conversation (rounds in order)."""
    parts = [INSTRUCTIONS]
    if context:
        parts.append(f"Provided data (seen by the writer of the expected answers):\n{context}")
    if any(r.generated is not None and r.question is None for r in rounds):
        parts.append(NO_QUESTION)
    lines = ["Conversation:"]
    for k, r in enumerate(rounds, 1):
        question = r.question if r.question is not None else "(not available)"
        if r.generated is None:
            lines += [f"\nRound {k} (history, not rated)", f"User: {question}"]
            lines.append(f"Assistant: {r.expected}")
        else:
            lines += [f"\nRound {k} (rated)", f"User: {question}"]
            lines += [f"Expected answer: {r.expected}", f"Generated answer: {r.generated}"]
    parts.append("\n".join(lines))
    user = "\n\n".join(parts)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_SCORE_LINE = re.compile(r"Overall score: (\d+)/10")


def parse_score(text: str) -> int:
    """The overall score of a judge's answer (rule in the module doc); JudgeParseError else."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise JudgeParseError("the answer is empty")
    named = [line for line in lines if "overall score" in line.lower()]
    found = _SCORE_LINE.fullmatch(lines[-1])
    if found is None:
        raise JudgeParseError(
            "the last line must be exactly 'Overall score: N/10' with N an integer from 0 to "
            f"10; it is {lines[-1][:80]!r}"
        )
    if len(named) > 1:
        raise JudgeParseError("give the overall score once, on the last line only")
    score = int(found.group(1))
    if not 0 <= score <= 10:
        raise JudgeParseError(f"the score {score} is outside 0 to 10")
    return score


# ------------------------------------------------------------------------------- records


def read_conversations(path: str | Path) -> dict[str, list[dict[str, str]]]:
    """``{id: turns}`` of a ShareGPT JSONL file (what ``radixpert data instruct`` writes)."""
    out: dict[str, list[dict[str, str]]] = {}
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if not isinstance(rec, dict) or "id" not in rec or "conversations" not in rec:
                raise ValueError(f"{path}: line {n}: expected an object with id and conversations")
            out[str(rec["id"])] = list(rec["conversations"])
    return out


def rounds_of(
    rid: str, record: Mapping[str, Any], turns: Sequence[Mapping[str, str]]
) -> list[Round]:
    """The rounds of one record: its conversation's turns, its answer(s) and true answer.

    Raises:
        ValueError: turns out of order, a last true answer that disagrees with the record's
            ``report``, or a list of answers whose length is not the number of rounds.
    """
    pairs: list[list[str | None]] = []
    for t in turns:
        if t.get("from") == "human":
            pairs.append([_clean(str(t["value"])), None])
        elif t.get("from") == "gpt":
            if not pairs or pairs[-1][1] is not None:
                raise ValueError(f"record {rid!r}: an answer turn without a question before it")
            pairs[-1][1] = str(t["value"])
    if not pairs:
        raise ValueError(f"record {rid!r}: the conversation has no question")
    truth = record.get("report")
    last = pairs[-1][1]
    if last is None:
        if truth is None:
            raise ValueError(f"record {rid!r}: no true answer to the last question")
        pairs[-1][1] = str(truth)
    elif truth is not None and str(truth).strip() != last.strip():
        raise ValueError(
            f"record {rid!r}: its true answer differs from the conversation's last answer "
            "(are the records from this conversations file?)"
        )
    if any(a is None for _, a in pairs[:-1]):
        raise ValueError(f"record {rid!r}: an earlier question has no answer")
    answers = record.get("model_prediction")
    if isinstance(answers, list):
        if len(answers) != len(pairs):
            raise ValueError(f"record {rid!r}: {len(answers)} answers for {len(pairs)} rounds")
        return [Round(q, str(a), str(g)) for (q, a), g in zip(pairs, answers)]
    if answers is None:
        raise ValueError(f"record {rid!r}: no model_prediction")
    history = [Round(q, str(a)) for q, a in pairs[:-1]]
    return [*history, Round(pairs[-1][0], str(pairs[-1][1]), str(answers))]


def _result(
    name: str, values: list[float], settings: dict[str, Any], detail: dict[str, Any]
) -> MetricResult:
    scores = np.asarray(values, dtype=float)

    def corpus_fn(idx: Any) -> float:
        x = scores[np.asarray(idx)]
        x = x[~np.isnan(x)]
        return float(x.mean()) if x.size else math.nan

    every = np.arange(len(values))
    return MetricResult(
        name=name,
        aggregate=corpus_fn(every),
        per_sample=values,
        higher_is_better=True,
        settings={
            **settings,
            "scale": "0-10 integer per conversation",
            "aggregate": "mean over judged conversations; failures counted, NaN per sample",
        },
        detailed={
            "n": len(values),
            "judged": int(np.sum(~np.isnan(scores))),
            "failed": int(np.sum(np.isnan(scores))),
            **detail,
        },
        corpus_fn=corpus_fn,
        versions={"numpy": np.__version__},
    )


def conversation_scores(
    records: Mapping[str, Mapping[str, Any]],
    backend: JudgeBackend,
    *,
    conversations: Mapping[str, Any] | None = None,
    context: Mapping[str, str] | None = None,
    tasks: Sequence[str] | None = CONVERSATION_TASKS,
    retries: int = 2,
    workers: int = 4,
    cache: bool = True,
) -> MetricResult:
    """Judge scores (0-10) of ``radixpert generate``'s conversation records.

    Args:
        records: ``{id: {"task", "model_prediction", "report", "study_id", ...}}``; an answer
            may be a list (one per round) to rate whole conversations, as RadVLM.
        backend: the judge.
        conversations: ``{id: turns}`` (or ``{id: ShareGPT record}``) of the conversations the
            records answer, for the questions; a record's own ``conversation`` turns win.
        context: ``{study_id: text}`` shown to the judge as the provided data (the report,
            labels, view), as RadVLM; every judged record's study then needs one.
        tasks: the tasks whose records are judged (None: all); others are counted, not judged.

    Returns:
        A MetricResult "conversation-judge": per_sample in the order of ``detailed["ids"]``,
        NaN where the judge's answer never parsed (``detailed["failed_ids"]``).

    Raises:
        ValueError: a record without its question (no turns), or inconsistent with them.
    """
    ids, questions, rounds_rated, history = [], [], 0, 0
    skipped = 0
    for rid, rec in records.items():
        if tasks is not None and str(rec.get("task", "")) not in tasks:
            skipped += 1
            continue
        turns = rec.get("conversation")
        if turns is None and conversations is not None:
            turns = conversations.get(rid)
            if isinstance(turns, Mapping):
                turns = turns.get("conversations")
        if turns is None:
            raise ValueError(
                f"record {rid!r}: its question is not recorded; pass conversations= (the "
                "conversations file radixpert generate answered, read_conversations)"
            )
        rounds = rounds_of(rid, rec, turns)
        text = None
        if context is not None:
            study = str(rec.get("study_id", ""))
            if study not in context:
                raise ValueError(f"record {rid!r}: no provided data for study {study!r}")
            text = context[study]
        ids.append(str(rid))
        questions.append(conversation_messages(rounds, text))
        rounds_rated += sum(r.generated is not None for r in rounds)
        history += sum(r.generated is None for r in rounds)
    results = ask_all(
        backend,
        questions,
        parse_score,
        prompt_version=PROMPT_VERSION,
        namespace=NAMESPACE,
        cache=cache,
        retries=retries,
        max_tokens=MAX_TOKENS,
        workers=workers,
        desc="conversation-judge",
    )
    values = [float(r.value) if r.ok else math.nan for r in results]
    failed = [i for i, r in zip(ids, results) if not r.ok]
    settings = {
        **backend.describe(),
        "prompt_version": PROMPT_VERSION,
        "retries": retries,
        **judge_settings(results),
        "context": context is not None,
        "source": "uzh-dqbm-cmi/RadVLM@69fe946 radvlm/evaluation/evaluate_conversations.py",
    }
    detail = {
        "ids": ids,
        "failed_ids": failed,
        "other_tasks": skipped,
        "rated_rounds": rounds_rated,
        "history_rounds": history,
    }
    return _result("conversation-judge", values, settings, detail)


class ConversationJudge(JudgeMetric):
    """The conversation judge on (reference answer, candidate answer) pairs, no question.

    The judge rates agreement with the expected answer only (module doc); for RadVLM's
    score with the questions, use ``conversation_scores``.
    """

    name = "conversation-judge"
    higher_is_better = True
    description = (
        "RadVLM-style LLM judge, 0-10 per answer against the true answer (no question: "
        "agreement only)"
    )
    prompt_version = PROMPT_VERSION
    max_tokens = MAX_TOKENS

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        self.ensure_available()
        questions = [
            conversation_messages([Round(None, r, c)]) for r, c in zip(references, candidates)
        ]
        results = self.judge(questions, parse_score)
        values = [float(r.value) if r.ok else math.nan for r in results]
        failed = [i for i, r in enumerate(results) if not r.ok]
        settings = {**self.judge_settings(results), "question": "not available (pairs only)"}
        return _result(self.name, values, settings, {"failed_indices": failed})
