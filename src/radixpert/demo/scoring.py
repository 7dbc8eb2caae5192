"""How well a model reads phantoms: findings F1, grounding mAP@0.5 and laterality accuracy.

The phantoms' ground truth is exact (``radixpert.data.phantoms``), so these scores need no
reference model:

* ``findings_f1``: the generated report is labelled by the project's rule-based labeler
  (``evaluate.clinical.chexpert_rules``, the same one that checks the phantom reports); a
  finding counts as predicted when its label is 1. Micro F1 over the six phantom findings
  against the phantom's drawn findings; per-finding F1 beside it.
* ``grounding_map50``: the answers to "Where is the <finding> in this image?" (the
  ``grounding-abnormality`` task, asked for every drawn finding, devices included) are parsed for
  ``[x1, y1, x2, y2]`` boxes; per finding, the boxes of all studies are ranked by their order
  in the answer (the model gives no confidence; the first box of an answer ranks first, ties
  broken by study), matched greedily to the true boxes of the same study at IoU >= 0.5, and
  average precision is the area under the interpolated precision-recall curve (the VOC/COCO
  101-point rule); the mAP is the mean over findings that occur.
* ``laterality_acc``: for every drawn one-sided finding (pleural effusion and pneumothorax:
  their side; consolidation and lung lesion: the side of their lobe) that the generated report
  mentions, whether the sentences mentioning it name the true side and not the other one.
  ``laterality_n`` is how many were mentioned, so a model that mentions nothing has no score
  (NaN), not a good one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from radixpert.data.phantoms import FINDINGS, OBSERVATION_KEYWORDS, ZONES
from radixpert.evaluate.tasks import average_precision, parse_boxes

__all__ = [
    "average_precision",
    "findings_scores",
    "grounding_scores",
    "lateral_findings",
    "laterality_scores",
    "predicted_findings",
]

_SENTENCE = re.compile(r"[^.;]+")
_SIDE = {"right": re.compile(r"\bright\b", re.I), "left": re.compile(r"\bleft\b|\blingula\b", re.I)}


def findings_scores(
    reports: Sequence[str], truth: Sequence[Mapping[str, int | None]]
) -> dict[str, float]:
    """Micro and per-finding F1 of the labeler's reading of ``reports`` against ``truth``.

    Args:
        reports: Generated findings, one per study.
        truth: The phantoms' labels (1 = drawn), one mapping per study.

    Returns:
        ``findings_f1`` (micro), ``findings_macro_f1``, ``f1/<finding>`` and the counts.
    """
    from radixpert.evaluate.clinical.chexpert_rules import label_reports

    if len(reports) != len(truth):
        raise ValueError(f"{len(reports)} reports for {len(truth)} studies")
    predicted = label_reports(reports)
    out: dict[str, float] = {}
    tp_all = fp_all = fn_all = 0
    f1s = []
    for finding in FINDINGS:
        tp = sum(1 for p, t in zip(predicted, truth) if p[finding] == 1 and t.get(finding) == 1)
        fp = sum(1 for p, t in zip(predicted, truth) if p[finding] == 1 and t.get(finding) != 1)
        fn = sum(1 for p, t in zip(predicted, truth) if p[finding] != 1 and t.get(finding) == 1)
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        out[f"f1/{finding}"] = f1
        if not math.isnan(f1):
            f1s.append(f1)
    denominator = 2 * tp_all + fp_all + fn_all
    out["findings_f1"] = 2 * tp_all / denominator if denominator else float("nan")
    out["findings_macro_f1"] = sum(f1s) / len(f1s) if f1s else float("nan")
    out.update(findings_tp=tp_all, findings_fp=fp_all, findings_fn=fn_all)
    return out


def predicted_findings(report: str) -> list[str]:
    """The phantom findings the labeler reads as present in ``report``."""
    from radixpert.evaluate.clinical.chexpert_rules import label_report

    labels = label_report(report)
    return [f for f in FINDINGS if labels[f] == 1]


def grounding_scores(
    answers: Sequence[str], questions: Sequence[Mapping[str, Any]], threshold: float = 0.5
) -> dict[str, float]:
    """mAP at IoU ``threshold`` of grounding answers.

    Args:
        answers: The model's answers, one per question.
        questions: Per answer: ``study`` (id), ``label`` (the finding asked about) and
            ``boxes`` (the true boxes, ``(x1, y1, x2, y2)``).

    Returns:
        ``grounding_map50``, ``ap50/<finding>`` and ``grounding_parsed`` (share of answers
        with at least one box).
    """
    by_label: dict[str, tuple[list[tuple[int, Any, tuple[float, ...]]], dict[Any, list]]] = {}
    parsed = 0
    for answer, q in zip(answers, questions, strict=True):
        ranked, truth = by_label.setdefault(q["label"], ([], {}))
        truth.setdefault(q["study"], []).extend(tuple(b) for b in q["boxes"])
        boxes = parse_boxes(answer)
        parsed += bool(boxes)
        ranked.extend((rank, q["study"], box) for rank, box in enumerate(boxes))
    out: dict[str, float] = {}
    aps = []
    for label, (ranked, truth) in sorted(by_label.items()):
        order = sorted(ranked, key=lambda r: (r[0], str(r[1])))
        ap = average_precision([(s, b) for _, s, b in order], truth, threshold)
        out[f"ap50/{label}"] = ap
        if not math.isnan(ap):
            aps.append(ap)
    out["grounding_map50"] = sum(aps) / len(aps) if aps else float("nan")
    out["grounding_parsed"] = parsed / len(answers) if answers else float("nan")
    return out


def lateral_findings(spec: Mapping[str, Any]) -> dict[str, str]:
    """The one-sided findings of a phantom's drawn ``spec`` and their side."""
    sides: dict[str, str] = {}
    for finding in ("Pleural Effusion", "Pneumothorax"):
        if finding in spec and spec[finding].get("side") in ("right", "left"):
            sides[finding] = spec[finding]["side"]
    for finding in ("Consolidation", "Lung Lesion"):
        zone = spec.get(finding, {}).get("zone")
        if zone in ZONES:
            sides[finding] = ZONES[zone][0]
    return sides


def laterality_scores(
    reports: Sequence[str], sides: Sequence[Mapping[str, str]]
) -> dict[str, float]:
    """Accuracy of the side stated for each mentioned one-sided finding (see module doc).

    Args:
        reports: Generated reports, one per study.
        sides: Per study, finding -> true side (``lateral_findings``).
    """
    correct = mentioned = 0
    for report, truth in zip(reports, sides, strict=True):
        present = set(predicted_findings(report))
        sentences = [m.group(0) for m in _SENTENCE.finditer(report)]
        for finding, side in truth.items():
            if finding not in present:
                continue
            words = OBSERVATION_KEYWORDS[finding]
            about = [s for s in sentences if any(w in s.lower() for w in words)]
            mentioned += 1
            other = "left" if side == "right" else "right"
            says = any(_SIDE[side].search(s) for s in about)
            contradicts = any(_SIDE[other].search(s) for s in about)
            correct += says and not contradicts
    return {
        "laterality_acc": correct / mentioned if mentioned else float("nan"),
        "laterality_n": float(mentioned),
    }
