"""Rewards of the ``grpo`` objective: per-sample scores of sampled answers, and guards.

A reward scores one sampled answer against its example's reference (the conversation's last
answer and its task's ``target``); the recipe's ``grpo.rewards`` weighs them::

    rewards = Rewards({"findings-f1": 1.0, "bleu-2": 0.2, "box-iou": 1.0, "format": 0.1},
                      GRPOSettings())
    scored = rewards.score(examples, answers, truncated)   # ScoredAnswers
    scored.total        # per answer: weighted mean of the rewards for its task, minus guards
    scored.components   # {"findings-f1": [...], ...}: NaN where a reward does not apply

The rewards (``REWARD_NAMES``):

* ``findings-f1``: F1 of the 14 CheXpert observations the rule-based labeler finds in the
  answer against those in the reference (``f1-chexpert``'s per-report F1, uncertain as
  positive); report tasks. No weights, microseconds per report.
* ``bleu-2``: RadCliQ's sentence BLEU-2 (``bleu-2-radcliq``); report tasks.
* any ``radixpert evaluate`` metric with per-sample scores (``rouge-l``, ``radgraph-f1``,
  ``radcliq-v1``, ``bertscore``, ...) by its name; report tasks. A metric whose weights are
  absent fails when the stage starts, with the metric's own reason; one where lower is better
  (``radcliq-v1``) is negated.
* ``box-iou``: for grounding answers, boxes matched one to one with the true boxes (greedily,
  highest IoU first); the sum of the matched IoUs over the larger of the two counts. Extra
  boxes lower it, so covering the image with boxes does not pay (the ``mean_iou`` of the
  grounding task's own score takes each true box's best box and would).
* ``classification-f1``: the classification task's F1 of the named findings.
* a function of one's own, by its ``"module:function"`` path: called with the list of
  ``RewardExample`` and the list of answers, it returns one float per answer, or None where it
  does not apply;
* ``format``: 1 when the answer has its task's form (a report: non-empty, ending a sentence,
  no box coordinates; classification: names findings or says none; grounding: only boxes, each
  inside the image with x1 < x2 and y1 < y2), else 0; every task.

Guards against reward hacking, subtracted from the total and logged (``guard/*``):

* length: an answer longer than ``max_length_ratio`` times its reference (words) loses
  ``length_penalty`` times the excess over the allowed length (relative, capped at 1);
* truncation: an answer that ran out of ``max_new_tokens`` loses ``truncation_penalty``;
* repetition: the share of repeated word ``repetition_ngram``-grams above
  ``repetition_threshold`` costs ``repetition_penalty`` times its excess (relative, capped 1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from radixpert.errors import UnknownName, UsageError

__all__ = [
    "GUARDS",
    "REPORT_TASKS",
    "REWARD_NAMES",
    "RewardExample",
    "Rewards",
    "ScoredAnswers",
    "box_match_iou",
    "check_reward_names",
    "repetition_rate",
]

REPORT_TASKS = frozenset({"report", "report-full"})
GROUNDING_TASKS = frozenset({"grounding-phrase", "grounding-abnormality"})
# Rewards of our own, beside the evaluate metrics (by their registry names).
_OWN = ("findings-f1", "bleu-2", "box-iou", "classification-f1", "format")
_ALIASES = {"findings-f1": "f1-chexpert", "bleu-2": "bleu-2-radcliq"}
# Judges ask an LLM per answer; as rewards of a training step they would be far too slow.
_NOT_PER_SAMPLE = frozenset({"bleu", "cider-d", "meteor"})  # corpus statistics


def _metric_names() -> list[str]:
    from radixpert.evaluate.registry import REGISTRY

    return [n for n, e in REGISTRY.items() if e.family != "judge" and n not in _NOT_PER_SAMPLE]


def reward_names() -> list[str]:
    """Every reward a recipe may name."""
    return [*_OWN, *(n for n in _metric_names() if n not in _ALIASES.values())]


REWARD_NAMES: tuple[str, ...] = tuple(_OWN)
"""Our own rewards; ``reward_names()`` adds the evaluate metrics usable as rewards."""


def check_reward_names(rewards: Mapping[str, float]) -> None:
    """Raises UnknownName for a reward that does not exist (checked at recipe load)."""
    known = reward_names()
    for name in rewards:
        if _CUSTOM.fullmatch(name):
            continue
        if name not in known:
            raise UnknownName(
                f"rewards.{name}: unknown reward; known: {', '.join(known)}, or a "
                "'module:function' of your own"
            )


GUARDS = ("too_long", "truncated", "repetition", "penalty")
"""The guards' logged values per answer (``Rewards.guards``): ``penalty`` is their weighted sum."""


@dataclass(frozen=True)
class RewardExample:
    """What a reward needs of one training example: its task, target and reference answer."""

    task: str
    reference: str
    target: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, item: Any) -> RewardExample:
        """From a ``Conversation`` or a ShareGPT mapping (``task``, ``target`` optional)."""
        from radixpert.instruct.conversation import images_and_turns

        _, turns = images_and_turns(item)
        answers = [t["value"] for t in turns if t["from"] == "gpt"]
        if not answers:
            raise UsageError("a grpo example needs a reference answer (a last gpt turn)")
        get = item.get if isinstance(item, Mapping) else lambda k, d=None: getattr(item, k, d)
        return cls(str(get("task", "") or ""), answers[-1], dict(get("target", None) or {}))


@dataclass
class ScoredAnswers:
    """Rewards of a list of answers: the total, each component (NaN: not applicable), guards."""

    total: list[float]
    components: dict[str, list[float]]
    guards: dict[str, list[float]]


_CUSTOM = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
_BOX = re.compile(r"\[\s*-?[\d.]+\s*,\s*-?[\d.]+\s*,\s*-?[\d.]+\s*,\s*-?[\d.]+\s*\]")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def repetition_rate(text: str, n: int) -> float:
    """Share of the word n-grams of ``text`` that repeat an earlier one (0 for < 2 n-grams)."""
    words = _words(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def box_match_iou(pred: Sequence[Sequence[float]], truth: Sequence[Sequence[float]]) -> float:
    """One-to-one greedy matching by IoU: the matched IoUs' sum over max(len(pred), len(truth)).

    1 for exactly the true boxes; each missing or extra box lowers it; 0 without boxes.
    """
    from radixpert.evaluate.tasks import iou

    if not pred or not truth:
        return float(not pred and not truth)
    pairs = sorted(
        ((iou(t, p), i, j) for i, t in enumerate(truth) for j, p in enumerate(pred)),
        key=lambda x: (-x[0], x[1], x[2]),
    )
    used_t, used_p, total = set(), set(), 0.0
    for value, i, j in pairs:
        if value <= 0:
            break
        if i in used_t or j in used_p:
            continue
        used_t.add(i)
        used_p.add(j)
        total += value
    return total / max(len(pred), len(truth))


def _import(path: str) -> Any:
    import importlib

    module, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise UnknownName(f"reward {path}: cannot import it ({err})") from err
    if not callable(fn):
        raise UnknownName(f"reward {path}: not a function")
    return fn


def _well_formed(example: RewardExample, answer: str) -> float:
    from radixpert.evaluate.tasks import parse_boxes
    from radixpert.instruct.tasks import ClassificationTask

    text = answer.strip()
    if not text:
        return 0.0
    if example.task in REPORT_TASKS:
        return float(text[-1] in ".!?" and not _BOX.search(text))
    if example.task == "classification":
        task = ClassificationTask()
        return task.score(_as_conversation(example), text)["parsed"]
    if example.task in GROUNDING_TASKS:
        if _BOX.sub("", text).strip(" ,;\n"):
            return 0.0  # anything but boxes
        boxes = parse_boxes(text)
        ok = all(0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1 for x1, y1, x2, y2 in boxes)
        return float(bool(boxes) and ok)
    return 1.0


def _as_conversation(example: RewardExample) -> Any:
    from radixpert.instruct.conversation import Conversation

    return Conversation("reward", [], [], example.task, "", "", dict(example.target))


def _grounding_truth(example: RewardExample) -> list[Any]:
    from radixpert.evaluate.tasks import parse_boxes

    boxes = example.target.get("boxes")
    if boxes is None:
        return parse_boxes(example.reference)
    out = []
    for b in boxes:  # "[x1, ...]" strings, or [label, "[x1, ...]"] pairs (detection)
        text = b[-1] if isinstance(b, list | tuple) else b
        out.extend(parse_boxes(str(text)))
    return out


class Rewards:
    """The weighted rewards and guards of a ``grpo`` stage.

    Args:
        weights: Reward name to weight.
        settings: The stage's ``GRPOSettings`` (the guards).
        device: Device of model-based metrics (``radgraph-f1``, ``bertscore``).

    Raises:
        UnknownName: An unknown reward.
        MetricUnavailable: A metric reward that cannot run here (its reason).
    """

    def __init__(self, weights: Mapping[str, float], settings: Any, device: str = "cpu") -> None:
        from radixpert.evaluate import registry

        check_reward_names(weights)
        self.weights, self.settings = dict(weights), settings
        self.metrics: dict[str, Any] = {}
        self.functions: dict[str, Any] = {}
        for name in self.weights:
            if _CUSTOM.fullmatch(name):
                self.functions[name] = _import(name)
                continue
            if name in ("box-iou", "classification-f1", "format"):
                continue
            metric = registry.create(_ALIASES.get(name, name), device=device)
            metric.ensure_available()
            self.metrics[name] = metric

    def applies(self, name: str, task: str) -> bool:
        """Whether reward ``name`` scores answers of ``task``."""
        if name == "format" or name in self.functions:
            return True
        if name == "box-iou":
            return task in GROUNDING_TASKS
        if name == "classification-f1":
            return task == "classification"
        return task in REPORT_TASKS

    def check_tasks(self, tasks: Sequence[str]) -> None:
        """Raises UsageError for a task that none of the rewards scores."""
        for task in sorted(set(tasks)):
            if not any(self.applies(n, task) for n in self.weights):
                raise UsageError(
                    f"grpo: no reward scores task {task!r} (rewards: {', '.join(self.weights)});"
                    " add one that does (report tasks: findings-f1, bleu-2 or a metric; "
                    "grounding: box-iou; classification: classification-f1; any: format)"
                )

    def score(
        self,
        examples: Sequence[RewardExample],
        answers: Sequence[str],
        truncated: Sequence[bool] | None = None,
    ) -> ScoredAnswers:
        """The rewards of ``answers[i]`` as an answer to ``examples[i]``."""
        from radixpert.instruct.tasks import ClassificationTask

        n = len(answers)
        if len(examples) != n:
            raise ValueError(f"{len(examples)} examples for {n} answers")
        truncated = list(truncated) if truncated is not None else [False] * n
        components: dict[str, list[float]] = {}
        for name in self.weights:
            values = [math.nan] * n
            idx = [i for i in range(n) if self.applies(name, examples[i].task)]
            if idx:
                if name in self.functions:
                    found = list(self.functions[name](list(examples), list(answers)))
                    if len(found) != n:
                        raise ValueError(f"reward {name} gave {len(found)} values for {n} answers")
                    values = [math.nan if v is None else float(v) for v in found]
                elif name in self.metrics:
                    result = self.metrics[name].compute(
                        [examples[i].reference for i in idx], [answers[i] for i in idx]
                    )
                    sign = 1.0 if result.higher_is_better else -1.0
                    for i, v in zip(idx, result.per_sample):
                        values[i] = sign * float(v)
                elif name == "format":
                    for i in idx:
                        values[i] = _well_formed(examples[i], answers[i])
                elif name == "box-iou":
                    from radixpert.evaluate.tasks import parse_boxes

                    for i in idx:
                        truth = _grounding_truth(examples[i])
                        values[i] = box_match_iou(parse_boxes(answers[i]), truth)
                else:  # classification-f1
                    task = ClassificationTask()
                    for i in idx:
                        conv = _as_conversation(examples[i])
                        values[i] = task.score(conv, answers[i])["f1"]
            components[name] = values
        guards = self.guards(examples, answers, truncated)
        total = []
        for i in range(n):
            weighted = [
                (self.weights[k], v[i]) for k, v in components.items() if not math.isnan(v[i])
            ]
            if not weighted:
                raise UsageError(f"grpo: no reward scores task {examples[i].task!r}")
            mean = sum(w * v for w, v in weighted) / sum(w for w, _ in weighted)
            total.append(mean - guards["penalty"][i])
        return ScoredAnswers(total, components, guards)

    def guards(
        self, examples: Sequence[RewardExample], answers: Sequence[str], truncated: Sequence[bool]
    ) -> dict[str, list[float]]:
        """Per answer: ``too_long``, ``truncated``, ``repetition`` and the total ``penalty``."""
        s = self.settings
        out: dict[str, list[float]] = {name: [] for name in GUARDS}
        for example, answer, cut in zip(examples, answers, truncated):
            allowed = s.max_length_ratio * max(1, len(_words(example.reference)))
            excess = max(0.0, len(_words(answer)) - allowed) / allowed
            rate = repetition_rate(answer, s.repetition_ngram)
            over = max(0.0, rate - s.repetition_threshold) / (1 - s.repetition_threshold)
            penalty = (
                s.length_penalty * min(1.0, excess)
                + s.truncation_penalty * float(cut)
                + s.repetition_penalty * min(1.0, over)
            )
            out["too_long"].append(float(excess > 0))
            out["truncated"].append(float(cut))
            out["repetition"].append(rate)
            out["penalty"].append(penalty)
        return out
