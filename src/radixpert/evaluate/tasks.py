"""Task metrics: scores of the answers to the instruction tasks, over a whole test set.

    scores = task_scores(records)   # {task: {metric: value}} from `radixpert generate` output

The records are what ``radixpert generate`` writes for conversations (``{id: {"task",
"model_prediction", "report" (the true answer), "study_id"}}``); each task family is scored
as its papers score it:

* **classification** (the 14 CheXpert observations): the labels an answer names, matched
  case-insensitively as whole option names ("No Finding, Support Devices", as the task's
  answers are written); an answer naming no option is read as free text by the project's
  rule-based labeler (``clinical.chexpert_rules``: a positive mention counts, uncertain does
  not). Per label precision / recall / F1 over the set, the macro F1 over the labels that occur
  (in the truth or the answers) and the micro F1; ``parsed`` is the share of answers that
  named an option or the labeler read.
* **grounding** (``grounding-anatomy``, ``grounding-abnormality``, ``grounding-phrase``) and
  **detection**: boxes ``[x1, y1, x2, y2]`` in the answers (``parse_boxes``). mAP@0.5: per
  task (detection: per label, then the mean), the boxes of all answers ranked by their place
  in the answer (no confidence is given: an answer's first box ranks first, ties broken by
  record), matched greedily to the same record's true boxes at IoU >= 0.5, average precision
  by COCO's 101-point interpolation. Mean IoU: per true box the best IoU of the answer's boxes
  (0 without one), averaged.
* **token F1** (every task): the bag-of-words overlap of the answer and the true answer
  (lower-cased runs of letters and digits, counted with multiplicity): precision = overlap /
  answer tokens, recall = overlap / true tokens, F1 their harmonic mean, averaged over records.

Box parsing, IoU and average precision live here (the bottom layer that scores text), and
``instruct.tasks`` and the demo use them from here.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from radixpert.evaluate.base import mean
from radixpert.vocab import OBSERVATIONS

__all__ = [
    "average_precision",
    "classification_scores",
    "grounding_scores",
    "iou",
    "parse_boxes",
    "task_scores",
    "token_f1",
]

Box = tuple[float, float, float, float]
_BOX_RE = re.compile(
    r"\[\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*\]"
)
_TOKEN = re.compile(r"[a-z0-9]+")
GROUNDING_TASKS = ("grounding-anatomy", "grounding-abnormality", "grounding-phrase")


def parse_boxes(text: str) -> list[Box]:
    """Every ``[x1, y1, x2, y2]`` in the text, in order."""
    return [tuple(float(v) for v in m.groups()) for m in _BOX_RE.finditer(text)]  # type: ignore[misc]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (0 when the union is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def average_precision(
    ranked: Sequence[tuple[Any, Sequence[float]]],
    truth: Mapping[Any, Sequence[Sequence[float]]],
    threshold: float = 0.5,
) -> float:
    """Average precision of ranked boxes ``(record, box)`` against ``truth[record]`` boxes.

    Greedy matching in rank order (each true box matched at most once, IoU >= threshold),
    then the 101-point interpolated area under precision-recall (COCO). NaN without truth.
    """
    n_true = sum(len(v) for v in truth.values())
    if n_true == 0:
        return float("nan")
    used: dict[Any, set[int]] = {}
    hits: list[bool] = []
    for record, box in ranked:
        best, best_j = threshold, None
        for j, t in enumerate(truth.get(record, ())):
            if j in used.get(record, set()):
                continue
            overlap = iou(box, t)
            if overlap >= best:
                best, best_j = overlap, j
        if best_j is not None:
            used.setdefault(record, set()).add(best_j)
        hits.append(best_j is not None)
    precision, recall, tp = [], [], 0
    for k, hit in enumerate(hits, 1):
        tp += hit
        precision.append(tp / k)
        recall.append(tp / n_true)
    # Interpolate: precision at recall r is the best precision at any recall >= r.
    for k in range(len(precision) - 2, -1, -1):
        precision[k] = max(precision[k], precision[k + 1])
    total = 0.0
    for r in (i / 100 for i in range(101)):
        candidates = [p for p, rc in zip(precision, recall) if rc >= r]
        total += candidates[0] if candidates else 0.0
    return total / 101


# --------------------------------------------------------------------------------------------
# Classification


def _named_labels(text: str, labels: Sequence[str]) -> set[str]:
    low = f" {text.lower()} "
    return {
        label
        for label in labels
        if re.search(rf"(?<![a-z]){re.escape(label.lower())}(?![a-z])", low) is not None
    }


def _answer_labels(text: str, labels: Sequence[str]) -> tuple[set[str], bool]:
    """(labels the answer gives, whether it could be read)."""
    named = _named_labels(text, labels)
    if named:
        return named, True
    from radixpert.evaluate.clinical.chexpert_rules import label_report

    read = label_report(text)
    found = {label for label in labels if read.get(label) == 1}
    none_said = "none of the listed" in text.lower() or "no finding" in text.lower()
    return found, bool(found) or none_said or any(v is not None for v in read.values())


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"precision": p, "recall": r, "f1": f1}


def classification_scores(
    truths: Sequence[str], answers: Sequence[str], labels: Sequence[str] = OBSERVATIONS
) -> dict[str, float]:
    """Per label P / R / F1, macro and micro F1 and the parsed share (see the module doc).

    Args:
        truths: The true answers (the task's own wording: option names, comma-separated).
        answers: The model's answers, in the same order.
    """
    if len(truths) != len(answers):
        raise ValueError(f"{len(truths)} true answers for {len(answers)} answers")
    counts = {label: [0, 0, 0] for label in labels}  # tp, fp, fn
    parsed = 0
    for truth, answer in zip(truths, answers):
        gold = _named_labels(truth, labels)
        given, ok = _answer_labels(answer, labels)
        parsed += ok
        for label in labels:
            c = counts[label]
            c[0] += label in gold and label in given
            c[1] += label not in gold and label in given
            c[2] += label in gold and label not in given
    out: dict[str, float] = {}
    f1s = []
    for label, (tp, fp, fn) in counts.items():
        scores = _prf(tp, fp, fn)
        for k, v in scores.items():
            out[f"{k}/{label}"] = v
        if not math.isnan(scores["f1"]):
            f1s.append(scores["f1"])
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    out["micro_f1"] = _prf(tp, fp, fn)["f1"]
    out["macro_f1"] = sum(f1s) / len(f1s) if f1s else float("nan")
    out["parsed"] = parsed / len(answers) if answers else float("nan")
    out["n"] = float(len(answers))
    return out


# --------------------------------------------------------------------------------------------
# Grounding and detection


def _labelled_boxes(text: str) -> list[tuple[str, Box]]:
    """(label, box) of a detection answer ("Nodule: [..]; Pleural Effusion: [..] [..]")."""
    out = []
    for part in text.split(";"):
        label = part.split(":")[0].strip().lower() if ":" in part else ""
        out.extend((label, b) for b in parse_boxes(part))
    return out


def grounding_scores(
    records: Sequence[tuple[Any, str, str]], threshold: float = 0.5, labelled: bool = False
) -> dict[str, float]:
    """mAP at IoU ``threshold`` and mean IoU of box answers.

    Args:
        records: ``(record id, true answer, answer)``; the true answer holds the true boxes.
        labelled: Detection answers: boxes carry labels, and AP is taken per label, then
            averaged (a box counts only for its own label).
    """
    per_label: dict[str, tuple[list[tuple[int, str, Box]], dict[Any, list[Box]]]] = {}
    ious: list[float] = []
    parsed = 0
    for rid, truth, answer in records:
        true = _labelled_boxes(truth) if labelled else [("", b) for b in parse_boxes(truth)]
        given = _labelled_boxes(answer) if labelled else [("", b) for b in parse_boxes(answer)]
        parsed += bool(given)
        for label, box in true:
            ranked, by_record = per_label.setdefault(label, ([], {}))
            by_record.setdefault(rid, []).append(box)
        for rank, (label, box) in enumerate(given):
            ranked, _ = per_label.setdefault(label, ([], {}))
            ranked.append((rank, str(rid), box))
        for label, box in true:
            same = [b for lab, b in given if lab == label]
            ious.append(max((iou(box, b) for b in same), default=0.0))
    out: dict[str, float] = {}
    aps = []
    for label, (ranked, truth_boxes) in sorted(per_label.items()):
        order = sorted(ranked, key=lambda r: (r[0], r[1]))
        ap = average_precision([(s, b) for _, s, b in order], truth_boxes, threshold)
        if labelled:
            out[f"ap50/{label}"] = ap
        if not math.isnan(ap):
            aps.append(ap)
    out["map50"] = sum(aps) / len(aps) if aps else float("nan")
    out["mean_iou"] = sum(ious) / len(ious) if ious else float("nan")
    out["parsed"] = parsed / len(records) if records else float("nan")
    out["n"] = float(len(records))
    return out


# --------------------------------------------------------------------------------------------
# Tokens


def token_f1(truth: str, answer: str) -> dict[str, float]:
    """Bag-of-words precision / recall / F1 of one answer (see the module doc)."""
    t, a = Counter(_TOKEN.findall(truth.lower())), Counter(_TOKEN.findall(answer.lower()))
    overlap = sum((t & a).values())
    p = overlap / sum(a.values()) if a else float(not t)
    r = overlap / sum(t.values()) if t else float(not a)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


# --------------------------------------------------------------------------------------------
# A whole prediction file


def task_scores(records: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{task: scores}`` of ``radixpert generate``'s conversation output (module doc).

    Raises:
        ValueError: A record without ``task``, ``model_prediction`` or the true answer
            (``report``), naming the record.
    """
    by_task: dict[str, list[tuple[str, str, str]]] = {}
    for rid, rec in records.items():
        missing = [k for k in ("task", "model_prediction", "report") if k not in rec]
        if missing:
            raise ValueError(f"record {rid!r}: no {', '.join(missing)} (radixpert generate's "
                             "output for conversations has them)")  # fmt: skip
        by_task.setdefault(str(rec["task"]), []).append(
            (rid, str(rec["report"] or ""), str(rec["model_prediction"] or ""))
        )
    out: dict[str, dict[str, float]] = {}
    for task, rows in sorted(by_task.items()):
        scores: dict[str, float] = {}
        if task == "classification":
            scores.update(classification_scores([t for _, t, _ in rows], [a for *_, a in rows]))
        elif task in GROUNDING_TASKS:
            scores.update(grounding_scores(rows))
        elif task == "detection":
            scores.update(grounding_scores(rows, labelled=True))
        tokens = [token_f1(t, a) for _, t, a in rows]
        for key in ("precision", "recall", "f1"):
            scores[f"token_{key}"] = mean([x[key] for x in tokens])
        scores["n"] = float(len(rows))
        out[task] = scores
    return out
