"""The instruction tasks of RadVLM-style multi-task tuning, each building and grading.

`task.build(study, rng) -> list[Conversation]` makes training conversations from a Study;
`task.score(conversation, answer) -> dict` grades a model's answer against the same
conversation's `target`. Boxes are written `[x1, y1, x2, y2]` in 0–1 image coordinates with
two decimals. An answer that does not parse scores 0 and says so (`parsed: 0.0`); nothing
is dropped from a denominator.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any

from radixpert import vocab
from radixpert.data.study import Box, Study
from radixpert.errors import UnknownName, UsageError
from radixpert.evaluate.tasks import iou, parse_boxes
from radixpert.instruct.conversation import IMAGE_TOKEN, Conversation
from radixpert.vocab import OBSERVATIONS

ABNORMALITIES = tuple(o for o in OBSERVATIONS if o not in ("No Finding", "Support Devices"))


def format_box(b: Box | tuple[float, float, float, float]) -> str:
    x1, y1, x2, y2 = (b.x1, b.y1, b.x2, b.y2) if isinstance(b, Box) else b
    return f"[{x1:.2f}, {y1:.2f}, {x2:.2f}, {y2:.2f}]"


def _prf(tp: int, n_pred: int, n_true: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else float(n_true == 0)
    r = tp / n_true if n_true else float(n_pred == 0)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def _human(text: str, with_image: bool) -> dict[str, str]:
    return {"from": "human", "value": f"{IMAGE_TOKEN}\n{text}" if with_image else text}


def _gpt(text: str) -> dict[str, str]:
    return {"from": "gpt", "value": text}


class Task(ABC):
    """One instruction task. `name` identifies it in mixtures and in records."""

    name: str = ""

    def _conv(
        self, study: Study, k: int, turns: list[dict[str, str]], target: dict
    ) -> Conversation:
        return Conversation(
            id=f"{study.id}:{self.name}:{k}",
            image=[study.images[0].path] if study.images else [],
            conversations=turns,
            task=self.name,
            study_id=study.id,
            dataset=study.dataset,
            target=target,
        ).validate()

    @abstractmethod
    def build(self, study: Study, rng: random.Random) -> list[Conversation]: ...

    @abstractmethod
    def score(self, conversation: Conversation, answer: str | list[str]) -> dict[str, float]: ...


class ReportTask(Task):
    """Report generation: the findings, or findings + impression, given the image (and the
    indication when the study has one)."""

    PROMPTS = (
        "Write the {what} of the radiology report for this chest X-ray.",
        "Describe the {what} of this radiograph as a radiologist would report them.",
        "Generate the {what} for this image.",
    )

    def __init__(self, section: str = "findings", with_indication: bool = True) -> None:
        if section not in ("findings", "findings+impression"):
            raise ValueError(f"section must be findings or findings+impression, not {section!r}")
        self.section = section
        self.with_indication = with_indication
        self.name = "report" if section == "findings" else "report-full"

    def build(self, study: Study, rng: random.Random) -> list[Conversation]:
        text = study.findings.strip()
        if self.section == "findings+impression":
            text = " ".join(t for t in (text, study.impression.strip()) if t)
        if not text or not study.images:
            return []
        what = "findings" if self.section == "findings" else "findings and impression"
        prompt = rng.choice(self.PROMPTS).format(what=what)
        if self.with_indication and study.indication.strip():
            prompt = f"Indication: {study.indication.strip()}\n{prompt}"
        return [self._conv(study, 0, [_human(prompt, True), _gpt(text)], {"report": text})]

    def score(self, conversation: Conversation, answer: str | list[str]) -> dict[str, float]:
        from radixpert.evaluate.lexical.rouge import RougeL
        from radixpert.evaluate.lexical.sentence_bleu import bleu2_radcliq

        answer = answer if isinstance(answer, str) else " ".join(answer)
        ref = conversation.target["report"]
        return {
            "rouge-l": RougeL().compute([ref], [answer]).per_sample[0],
            "bleu-2-radcliq": bleu2_radcliq([ref], [answer])[0],
        }


class ClassificationTask(Task):
    """Which of the 14 observations are present (uncertain counted as absent)."""

    name = "classification"
    NONE = "None of the listed findings."

    def build(self, study: Study, rng: random.Random) -> list[Conversation]:
        if not study.labels or not study.images:
            return []
        options = list(OBSERVATIONS)
        rng.shuffle(options)
        prompt = (
            "Which of the following findings are present in this chest X-ray? "
            f"Options: {', '.join(options)}."
        )
        positive = [o for o in OBSERVATIONS if study.labels.get(o) == 1]
        answer = ", ".join(positive) if positive else self.NONE
        return [self._conv(study, 0, [_human(prompt, True), _gpt(answer)], {"positive": positive})]

    def score(self, conversation: Conversation, answer: str | list[str]) -> dict[str, float]:
        answer = answer if isinstance(answer, str) else " ".join(answer)
        low = answer.lower()
        found = {o for o in OBSERVATIONS if o.lower() in low}
        parsed = bool(found) or "none" in low
        truth = set(conversation.target["positive"])
        out = (
            _prf(len(found & truth), len(found), len(truth))
            if parsed
            else {"precision": 0.0, "recall": 0.0, "f1": 0.0}
        )
        return {**out, "parsed": float(parsed)}


class GroundingTask(Task):
    """Phrase grounding (the box of a report phrase) or abnormality grounding (the boxes of
    a finding)."""

    def __init__(self, kind: str = "phrase") -> None:
        if kind not in ("phrase", "abnormality"):
            raise ValueError(f"kind must be phrase or abnormality, not {kind!r}")
        self.kind = kind
        self.name = f"grounding-{kind}"

    def build(self, study: Study, rng: random.Random) -> list[Conversation]:
        if not study.boxes or not study.images:
            return []
        out = []
        if self.kind == "phrase":
            for k, b in enumerate(b for b in study.boxes if b.phrase):
                q = rng.choice(("Locate this finding: {p}", "Give the bounding box of: {p}"))
                out.append(
                    self._conv(
                        study,
                        k,
                        [_human(q.format(p=b.phrase), True), _gpt(format_box(b))],
                        {"boxes": [format_box(b)]},
                    )
                )
        else:
            labels = sorted({b.label for b in study.boxes})
            for k, label in enumerate(labels):
                boxes = [format_box(b) for b in study.boxes if b.label == label]
                q = f"Where is the {label.lower()} in this image? Answer with bounding boxes."
                out.append(
                    self._conv(study, k, [_human(q, True), _gpt(" ".join(boxes))], {"boxes": boxes})
                )
        return out

    def score(self, conversation: Conversation, answer: str | list[str]) -> dict[str, float]:
        answer = answer if isinstance(answer, str) else " ".join(answer)
        pred = parse_boxes(answer)
        truth = [parse_boxes(t)[0] for t in conversation.target["boxes"]]
        if not pred:
            return {"mean_iou": 0.0, "hit@0.5": 0.0, "parsed": 0.0}
        best = [max(iou(t, p) for p in pred) for t in truth]
        return {
            "mean_iou": sum(best) / len(best),
            "hit@0.5": sum(x >= 0.5 for x in best) / len(best),
            "parsed": 1.0,
        }


class DetectionTask(Task):
    """Abnormality detection: every box with its label, or that there is none."""

    name = "detection"
    NONE = "No abnormalities with a location."

    def build(self, study: Study, rng: random.Random) -> list[Conversation]:
        if not study.images or (not study.boxes and not study.labels):
            return []
        lines = [f"{b.label}: {format_box(b)}" for b in study.boxes]
        q = "Detect all abnormalities in this chest X-ray and give their bounding boxes."
        answer = "; ".join(lines) if lines else self.NONE
        target = {"boxes": [[b.label, format_box(b)] for b in study.boxes]}
        return [self._conv(study, 0, [_human(q, True), _gpt(answer)], target)]

    def score(self, conversation: Conversation, answer: str | list[str]) -> dict[str, float]:
        answer = answer if isinstance(answer, str) else " ".join(answer)
        pred = []
        for part in answer.split(";"):
            boxes = parse_boxes(part)
            label = part.split(":")[0].strip().lower()
            pred.extend((label, b) for b in boxes)
        truth = [(lab.lower(), parse_boxes(b)[0]) for lab, b in conversation.target["boxes"]]
        parsed = bool(pred) or "no abnormalit" in answer.lower()
        used: set[int] = set()
        tp = 0
        for lab, t in truth:  # greedy one-to-one matching, same label, IoU >= 0.5
            cands = [
                (iou(t, p), i) for i, (pl, p) in enumerate(pred) if pl == lab and i not in used
            ]
            best = max(cands, default=(0.0, -1))
            if best[0] >= 0.5:
                used.add(best[1])
                tp += 1
        out = (
            _prf(tp, len(pred), len(truth))
            if parsed
            else {"precision": 0.0, "recall": 0.0, "f1": 0.0}
        )
        return {**out, "parsed": float(parsed)}


class ConversationTask(Task):
    """A multi-turn conversation from templates over the record: the view, yes/no questions
    on findings with definite labels, and a summary."""

    name = "conversation"

    def __init__(self, max_questions: int = 3) -> None:
        self.max_questions = max_questions

    def build(self, study: Study, rng: random.Random) -> list[Conversation]:
        if not study.images:
            return []
        turns: list[dict[str, str]] = []
        answers: list[str] = []
        view = study.images[0].view
        if view:
            turns += [
                _human("What view is this radiograph?", True),
                _gpt(f"This is a {view} view."),
            ]
            answers.append(view)
        definite = [o for o in ABNORMALITIES if study.labels.get(o) in (0, 1)]
        rng.shuffle(definite)
        for o in definite[: self.max_questions]:
            yes = study.labels[o] == 1
            turns += [
                _human(f"Is there {o.lower()}?", not turns),
                _gpt(f"Yes, there is {o.lower()}." if yes else f"No, there is no {o.lower()}."),
            ]
            answers.append("yes" if yes else "no")
        summary = study.impression.strip() or study.findings.strip()
        if summary:
            turns += [_human("Summarise the main findings.", not turns), _gpt(summary)]
            answers.append(summary)
        if not turns:
            return []
        return [self._conv(study, 0, turns, {"answers": answers})]

    def score(self, conversation: Conversation, answer: str | list[str]) -> dict[str, float]:
        answers = [answer] if isinstance(answer, str) else list(answer)
        truth = conversation.target["answers"]
        yes_no = [(t, a) for t, a in zip(truth, answers) if t in ("yes", "no")]
        correct = sum(a.strip().lower().startswith(t) for t, a in yes_no)
        return {
            "yes_no_accuracy": correct / len(yes_no) if yes_no else float("nan"),
            "answered_turns": min(len(answers), len(truth)) / len(truth),
        }


TASKS: dict[str, Any] = {
    "report": lambda: ReportTask("findings"),
    "report-full": lambda: ReportTask("findings+impression"),
    "classification": ClassificationTask,
    "grounding-phrase": lambda: GroundingTask("phrase"),
    "grounding-abnormality": lambda: GroundingTask("abnormality"),
    "detection": DetectionTask,
    "conversation": ConversationTask,
}
if set(TASKS) != set(vocab.TASKS):  # the names are radixpert.vocab's; each needs a builder here
    raise ImportError(f"instruct.tasks builds {sorted(TASKS)}, vocab names {sorted(vocab.TASKS)}")


def create(name: str) -> Task:
    if name == "conversation-llm":
        raise UsageError(
            "task 'conversation-llm' needs a local LLM: give --llm-url and --llm-model"
        )
    if name not in TASKS:
        raise UnknownName(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]()
