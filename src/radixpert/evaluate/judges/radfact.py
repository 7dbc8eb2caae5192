"""RadFact-style grounded judge (Bannur et al. 2024, MAIRA-2): entailment, then box overlap.

    metric = RadFact(judge_url="http://127.0.0.1:8000/v1", judge_model="qwen2.5-72b-instruct")
    result = metric.compute(references, candidates)   # grounded reports, boxes inline
    result.aggregate                                  # logical F1; companions: P / R, boxes

A grounded report is a list of sentences, each with zero or more boxes ``[x1, y1, x2, y2]``
(0-1 image coordinates) written inline, as this project writes boxes. What is measured
follows microsoft/RadFact@72463ac (``src/radfact/metric/radfact.py``, ``metric/schema.py``,
``metric/box_metrics.py`` and the README's definitions); the prompt and the parser are this
project's own (``PROMPT_VERSION``).

* **Sentences**: a report is cut after ``.``, ``!`` or ``?`` followed by white space or the
  end, and at line breaks; a box belongs to the sentence it is written in, or, written after a
  sentence's full stop, to that sentence; sentences without a letter or digit are dropped.
  RadFact rewrites a *narrative* report into one-finding phrases with an LLM; for grounded
  reports (MAIRA-2's setting) it takes the report's own sentences, as here. Narrative
  reports are split into sentences, not rephrased: a sentence holding two findings is one
  unit.
* **Entailment**, in both directions: for each sentence of the candidate, the judge is shown
  the numbered sentences of the reference (text only, as RadFact) and answers whether the
  sentence is entailed, with the numbers of the evidence sentences; then the same for each
  reference sentence against the candidate. Answer: one JSON object ``{"verdict": "entailed"
  | "not_entailed", "evidence": [numbers]}``. Against an empty report nothing is asked: no
  sentence of it can support anything (counted as ``unasked_empty_premise``).
* **Spatial entailment** of a sentence with boxes: logically entailed, and its boxes lie in
  the union of its evidence sentences' boxes with pixel precision above 0.5 (``> 0.5``) on a
  224 x 224 mask (coordinates x 224, truncated to integers, as ``box_metrics``); false when
  the evidence has no boxes. Coordinates are clipped to 0-1 first; a box without area has no
  pixels, so its sentence is never spatially entailed (counted as ``degenerate_boxes``).
* Per report pair (``compute_radfact_score_oneway``): logical precision = share of candidate
  sentences entailed by the reference; logical recall = share of reference sentences
  entailed by the candidate; grounding precision / recall = share of the *entailed* sentences
  with boxes that are spatially entailed; spatial precision / recall = share of *all*
  sentences with boxes that are spatially entailed. A share with an empty denominator is
  NaN (undefined), as RadFact's ``_divide_or_nan``.
* Aggregate (``RadFactScore.from_aggregate``, ``aggregate_results``): each of the six is
  averaged over pairs ignoring NaN; F1 = 2PR / (P + R) of the averaged P and R (0 when both
  are 0). The headline, as RadFact returns it, is the logical F1; ``per_sample`` is each
  pair's own logical F1, and ``corpus_fn`` recomputes the headline on a bootstrap resample.

A question whose answer never parses is a counted failure, not a verdict: by default the
pair it belongs to gets NaN for every score and is counted in ``invalid_samples`` (RadFact
drops a pair its engine could not process the same way); ``on_failure="not_entailed"`` takes
RadFact's rule for a phrase the LLM did not answer instead (not entailed), still counted.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from radixpert.evaluate.base import MetricResult
from radixpert.evaluate.judges.backend import JudgeBackend, JudgeMetric, JudgeParseError
from radixpert.evaluate.tasks import parse_boxes

__all__ = [
    "PROMPT_VERSION",
    "RadFact",
    "Sentence",
    "box_precision",
    "boxes_entailed",
    "entailment_messages",
    "one_way",
    "parse_verdict",
    "split_grounded_report",
]

log = logging.getLogger(__name__)

PROMPT_VERSION = "radixpert-radfact-ev-v1"
IMAGE_SIZE = 224  # RadFactMetric(image_size=224)
BOX_PRECISION_THRESHOLD = 0.5  # RadFactMetric(box_precision_threshold=0.5), compared with >
ENTAILED, NOT_ENTAILED = "entailed", "not_entailed"
SENTENCE_RULE = (
    "cut after . ! ? followed by white space or the end, and at line breaks; a box belongs to "
    "the sentence it is written in or that it follows; sentences without a letter or digit "
    "dropped; no LLM rephrasing"
)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Sentence:
    """One sentence of a grounded report: its text without boxes, and its boxes."""

    text: str
    boxes: tuple[Box, ...] = ()


_BRACKET = re.compile(r"\[[^\[\]]*\]")
_END = re.compile(r"[.!?]+(?=\s|$)|\n+")
_WORD = re.compile(r"[A-Za-z0-9]")


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    return text.lstrip("-*• ").strip()


def split_grounded_report(text: str) -> list[Sentence]:
    """The sentences of a grounded report, each with its boxes (rule in the module doc)."""
    clean, placed = [], []  # box-free text; (offset in it, box)
    size, end = 0, 0
    for m in _BRACKET.finditer(text):
        found = parse_boxes(m.group(0))
        if len(found) != 1:
            continue  # not a box: stays text
        clean.append(text[end : m.start()])
        size += m.start() - end
        placed.append((size, found[0]))
        end = m.end()
    clean.append(text[end:])
    plain = "".join(clean)
    spans: list[tuple[int, str]] = []  # (offset of the first non-space character, text)
    start = 0
    for m in [*_END.finditer(plain), None]:
        stop = m.end() if m is not None else len(plain)
        segment = plain[start:stop]
        if _WORD.search(segment):
            spans.append((start + len(segment) - len(segment.lstrip()), _tidy(segment)))
        start = stop
    if not spans:
        return []
    boxes: list[list[Box]] = [[] for _ in spans]
    for offset, box in placed:
        k = max((i for i, (s, _) in enumerate(spans) if s <= offset), default=0)
        boxes[k].append(box)
    return [Sentence(t, tuple(b)) for (_, t), b in zip(spans, boxes)]


# -------------------------------------------------------------------------------- boxes


def _mask(boxes: Sequence[Box], size: int) -> np.ndarray:
    """The pixels of a union of boxes, as RadFact's ``get_mask_from_boxes``."""
    mask = np.zeros((size, size), dtype=bool)
    for box in boxes:
        clipped = np.clip(np.asarray(box, dtype=float), 0.0, 1.0)
        x1, y1, x2, y2 = (clipped * size).astype(int)
        mask[x1:x2, y1:y2] = True
    return mask


def box_precision(boxes: Sequence[Box], evidence: Sequence[Box], size: int = IMAGE_SIZE) -> float:
    """Share of the boxes' pixels inside the union of the evidence boxes (NaN: no pixels)."""
    pred, true = _mask(boxes, size), _mask(evidence, size)
    area = int(pred.sum())
    return float((pred & true).sum() / area) if area else math.nan


def boxes_entailed(
    boxes: Sequence[Box],
    evidence: Sequence[Box],
    size: int = IMAGE_SIZE,
    threshold: float = BOX_PRECISION_THRESHOLD,
) -> bool:
    """RadFact's ``_are_boxes_entailed``: pixel precision above `threshold`."""
    if not evidence:
        return False
    p = box_precision(boxes, evidence, size)
    return not math.isnan(p) and p > threshold


def _degenerate(box: Box) -> bool:
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in box)
    return not (x1 < x2 and y1 < y2)


# ------------------------------------------------------------------------------- prompt

SYSTEM = (
    "You are a radiologist checking chest X-ray reports. You decide whether one statement is "
    "supported by a reference report of the same image, and you answer in JSON only."
)

INSTRUCTIONS = """Reference report, sentence by sentence:
{premise}

Statement: {hypothesis}

Is the statement entailed by the reference report? It is entailed when the report, read as \
a whole, supports everything the statement says: the findings, their presence or absence, \
location, size, severity and change over time. A statement that the report contradicts, that \
adds a detail the report does not support, or that the report does not address is not \
entailed. Judge the meaning, not the wording.

Answer with one JSON object and nothing else:
{{"verdict": "entailed" or "not_entailed", "evidence": [the numbers of the reference \
sentences your verdict rests on]}}
An entailed statement needs at least one evidence sentence; use [] when no sentence is \
relevant."""


def entailment_messages(hypothesis: str, premise: Sequence[Sentence]) -> list[dict[str, str]]:
    """The question whether `hypothesis` is entailed by the `premise` sentences."""
    numbered = "\n".join(f"{i}. {s.text}" for i, s in enumerate(premise, 1))
    user = INSTRUCTIONS.format(premise=numbered, hypothesis=hypothesis)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)\n?\s*```", re.DOTALL)


def parse_verdict(text: str, n_premise: int) -> dict[str, Any]:
    """The verdict in a judge's answer, strictly; raises JudgeParseError otherwise.

    The answer must be one JSON object (alone, or alone inside one ``` code fence) with
    exactly the keys "verdict" ("entailed" or "not_entailed") and "evidence" (distinct
    integers 1..n_premise; at least one when entailed).

    Returns:
        {"verdict": ..., "evidence": [0-based sentence indices, ascending]}
    """
    body = text.strip()
    fenced = _FENCE.fullmatch(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        raise JudgeParseError("the answer is not a single JSON object") from None
    if not isinstance(value, dict) or set(value) != {"verdict", "evidence"}:
        raise JudgeParseError('the object must have exactly the keys "verdict" and "evidence"')
    verdict, evidence = value["verdict"], value["evidence"]
    if verdict not in (ENTAILED, NOT_ENTAILED):
        raise JudgeParseError(f'"verdict" must be "entailed" or "not_entailed", not {verdict!r}')
    if not isinstance(evidence, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in evidence
    ):
        raise JudgeParseError('"evidence" must be a list of sentence numbers')
    bad = [i for i in evidence if not 1 <= i <= n_premise]
    if bad:
        raise JudgeParseError(
            f"evidence {bad} is not a sentence number (the report has sentences 1 to {n_premise})"
        )
    if len(set(evidence)) != len(evidence):
        raise JudgeParseError("evidence lists a sentence twice")
    if verdict == ENTAILED and not evidence:
        raise JudgeParseError("an entailed statement needs at least one evidence sentence")
    return {"verdict": verdict, "evidence": sorted(i - 1 for i in evidence)}


# ------------------------------------------------------------------------------- scoring


def _share(k: int, n: int) -> float:
    return k / n if n else math.nan


def one_way(
    hypotheses: Sequence[Sentence],
    premise: Sequence[Sentence],
    verdicts: Sequence[dict[str, Any]],
    size: int = IMAGE_SIZE,
    threshold: float = BOX_PRECISION_THRESHOLD,
) -> dict[str, float]:
    """RadFact's ``compute_radfact_score_oneway`` for one direction.

    Args:
        verdicts: per hypothesis, {"verdict", "evidence" (0-based premise indices)}.

    Returns:
        entailed_fraction, entailed_box_fraction (grounding), full_box_fraction (spatial),
        and the counts behind them.
    """
    entailed = [v["verdict"] == ENTAILED for v in verdicts]
    boxed = [i for i, h in enumerate(hypotheses) if h.boxes]
    spatial = [
        i
        for i in boxed
        if entailed[i]
        and boxes_entailed(
            hypotheses[i].boxes,
            [b for e in verdicts[i]["evidence"] for b in premise[e].boxes],
            size,
            threshold,
        )
    ]
    n_entailed_boxed = sum(entailed[i] for i in boxed)
    return {
        "entailed_fraction": _share(sum(entailed), len(hypotheses)),
        "entailed_box_fraction": _share(len(spatial), n_entailed_boxed),
        "full_box_fraction": _share(len(spatial), len(boxed)),
        "phrases": float(len(hypotheses)),
        "phrases_with_boxes": float(len(boxed)),
        "spatially_entailed": float(len(spatial)),
    }


def f1(p: float, r: float) -> float:
    """2PR / (P + R); NaN when either is NaN, 0 when both are 0."""
    if math.isnan(p) or math.isnan(r):
        return math.nan
    return 2 * p * r / (p + r) if p + r else 0.0


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


SCORES = (
    ("logical_precision", "precision", "entailed_fraction"),
    ("logical_recall", "recall", "entailed_fraction"),
    ("grounding_precision", "precision", "entailed_box_fraction"),
    ("grounding_recall", "recall", "entailed_box_fraction"),
    ("spatial_precision", "precision", "full_box_fraction"),
    ("spatial_recall", "recall", "full_box_fraction"),
)


class RadFact(JudgeMetric):
    """RadFact logical F1 of grounded reports, with logical, grounding and spatial P / R.

    Args:
        image_size: side of the pixel mask of the box check (RadFact: 224).
        box_precision_threshold: pixel precision a sentence's boxes must exceed (0.5).
        on_failure: "invalid" (a pair with an unanswered question scores NaN) or
            "not_entailed" (RadFact's rule for a phrase the LLM did not answer).
        judge_*, cache, device, backend: the judge (see ``JudgeMetric``).
    """

    name = "radfact"
    higher_is_better = True
    description = (
        "RadFact-style: LLM entailment of each sentence both ways, boxes checked against the "
        "evidence; logical F1, logical / grounding / spatial precision and recall"
    )
    prompt_version = PROMPT_VERSION
    max_tokens = 256

    def __init__(
        self,
        image_size: int = IMAGE_SIZE,
        box_precision_threshold: float = BOX_PRECISION_THRESHOLD,
        on_failure: str = "invalid",
        judge_url: str | None = None,
        judge_model: str | None = None,
        judge_api_key_env: str | None = None,
        judge_allow_remote: bool = False,
        judge_local: str | None = None,
        judge_workers: int = 4,
        judge_retries: int = 2,
        cache: bool = True,
        device: str | None = None,
        backend: JudgeBackend | None = None,
    ) -> None:
        if on_failure not in ("invalid", "not_entailed"):
            raise ValueError(f"on_failure must be 'invalid' or 'not_entailed', not {on_failure!r}")
        super().__init__(
            judge_url,
            judge_model,
            judge_api_key_env,
            judge_allow_remote,
            judge_local,
            judge_workers,
            judge_retries,
            cache,
            device,
            backend,
        )
        self.image_size = int(image_size)
        self.threshold = float(box_precision_threshold)
        self.on_failure = on_failure

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        self.ensure_available()
        refs = [split_grounded_report(r) for r in references]
        cands = [split_grounded_report(c) for c in candidates]
        # One question per (pair, direction, hypothesis sentence); "precision": candidate
        # sentences against the reference, "recall": reference sentences against the candidate.
        questions: list[tuple[int, str, int, list[Sentence], str]] = []
        for i, (ref, cand) in enumerate(zip(refs, cands)):
            for direction, hyps, premise in (("precision", cand, ref), ("recall", ref, cand)):
                questions += [(i, direction, k, premise, h.text) for k, h in enumerate(hyps)]
        verdicts, failed, results, unasked = self._ask(questions)

        rows: dict[str, list[float]] = {key: [] for key, _, _ in SCORES}
        counts: dict[str, list[float]] = {
            k: []
            for k in (
                "candidate_sentences",
                "reference_sentences",
                "candidate_sentences_with_boxes",
                "reference_sentences_with_boxes",
            )
        }
        invalid = []
        for i, (ref, cand) in enumerate(zip(refs, cands)):
            ways = {}
            for direction, hyps, premise in (("precision", cand, ref), ("recall", ref, cand)):
                v = [verdicts[(i, direction, k)] for k in range(len(hyps))]
                ways[direction] = one_way(hyps, premise, v, self.image_size, self.threshold)
            bad = failed.get(i, 0) > 0 and self.on_failure == "invalid"
            if bad:
                invalid.append(i)
            for key, direction, fraction in SCORES:
                rows[key].append(math.nan if bad else ways[direction][fraction])
            for side, direction in (("candidate", "precision"), ("reference", "recall")):
                counts[f"{side}_sentences"].append(ways[direction]["phrases"])
                counts[f"{side}_sentences_with_boxes"].append(ways[direction]["phrases_with_boxes"])
        return self._result(rows, counts, invalid, failed, results, unasked, refs, cands)

    def _ask(
        self, questions: list[tuple[int, str, int, list[Sentence], str]]
    ) -> tuple[dict[tuple[int, str, int], dict[str, Any]], dict[int, int], list[Any], int]:
        """Verdicts per (pair, direction, sentence), failed questions per pair, the
        judgements and the number of questions not asked (empty premise)."""
        none = {"verdict": NOT_ENTAILED, "evidence": []}
        verdicts: dict[tuple[int, str, int], dict[str, Any]] = {}
        failed: dict[int, int] = {}
        results: list[Any] = []
        unasked = 0
        # The parser checks evidence numbers against the premise's length: one batch per length.
        by_length: dict[int, list[tuple[int, str, int, list[Sentence], str]]] = {}
        for q in questions:
            if not q[3]:
                verdicts[q[:3]] = none
                unasked += 1
            else:
                by_length.setdefault(len(q[3]), []).append(q)
        for n, batch in sorted(by_length.items()):
            answers = self.judge(
                [entailment_messages(q[4], q[3]) for q in batch],
                lambda text, n=n: parse_verdict(text, n),
            )
            results += answers
            for q, a in zip(batch, answers):
                if a.ok:
                    verdicts[q[:3]] = a.value
                else:
                    verdicts[q[:3]] = none  # used only when on_failure="not_entailed"
                    failed[q[0]] = failed.get(q[0], 0) + 1
                    log.warning("radfact: no verdict for pair %d (%s): %s", q[0], q[1], a.error)
        return verdicts, failed, results, unasked

    def _result(
        self,
        rows: dict[str, list[float]],
        counts: dict[str, list[float]],
        invalid: list[int],
        failed: dict[int, int],
        results: list[Any],
        unasked: int,
        refs: list[list[Sentence]],
        cands: list[list[Sentence]],
    ) -> MetricResult:
        arrays = {k: np.asarray(v, dtype=float) for k, v in rows.items()}

        def mean_fn(key: str) -> Any:
            return lambda idx: _nanmean(arrays[key][np.asarray(idx)])

        def f1_fn(kind: str) -> Any:
            p, r = arrays[f"{kind}_precision"], arrays[f"{kind}_recall"]
            return lambda idx: f1(_nanmean(p[np.asarray(idx)]), _nanmean(r[np.asarray(idx)]))

        everyone = np.arange(len(refs))
        means = {k: _nanmean(a) for k, a in arrays.items()}
        boxes = [b for report in (*refs, *cands) for s in report for b in s.boxes]
        settings = {
            **(self.judge_settings(results) if self.backend is not None else {}),
            "sentences": SENTENCE_RULE,
            "image_size": self.image_size,
            "box_precision_threshold": f"> {self.threshold}",
            "on_failure": self.on_failure,
            "source": "microsoft/RadFact@72463ac metric/radfact.py, schema.py, box_metrics.py",
        }
        detailed: dict[str, Any] = {
            "n": len(refs),
            **means,
            **{f"{k}_f1": f1_fn(k)(everyone) for k in ("logical", "grounding", "spatial")},
            **{f"mean_{k}": _nanmean(np.asarray(v)) for k, v in counts.items()},
            "invalid_samples": len(invalid),
            "invalid_indices": invalid,
            "failed_questions": sum(failed.values()),
            "unasked_empty_premise": unasked,
            "degenerate_boxes": sum(_degenerate(b) for b in boxes),
        }
        per_pair = {
            k: [f1(p, r) for p, r in zip(rows[f"{k}_precision"], rows[f"{k}_recall"])]
            for k in ("logical", "grounding", "spatial")
        }
        series = {**rows, **counts}

        def companion(key: str, per_sample: list[float], fn: Any) -> MetricResult:
            return MetricResult(
                name=f"{self.name}-{key.replace('_', '-')}",
                aggregate=fn(everyone),
                per_sample=per_sample,
                higher_is_better=True,
                settings=settings,
                corpus_fn=fn,
                versions={"numpy": np.__version__},
            )

        extra = [companion(key, rows[key], mean_fn(key)) for key, _, _ in SCORES]
        extra += [companion(f"{k}_f1", per_pair[k], f1_fn(k)) for k in ("grounding", "spatial")]
        return MetricResult(
            name=self.name,
            aggregate=f1_fn("logical")(everyone),
            per_sample=per_pair["logical"],
            higher_is_better=True,
            settings={**settings, "per_sample": "the pair's logical F1 (NaN when undefined)"},
            detailed=detailed,
            per_sample_detailed=series,
            extra=extra,
            corpus_fn=f1_fn("logical"),
            versions={"numpy": np.__version__},
        )
