"""Error-count judges: CheXprompt-style counts of six error types, and a CRIMSON-style weighting.

    radixpert evaluate -r refs.json -c cands.json -m chexprompt,crimson-weighted \\
        --judge-url http://127.0.0.1:8000/v1 --judge-model NAME

One question per report pair, asked once for both metrics (same prompt, same cache): an LLM
judge counts the candidate's errors of six types, each split into clinically significant
(likely to change treatment, management or outcome) and insignificant. The six types are
CheXprompt's (Zambrano Chaves et al., "A clinically accessible small multimodal radiology
model and evaluation metric for chest X-ray findings", Nat. Commun. 2025; microsoft/chexprompt
``src/chexprompt/eval_utils.py`` ERROR_TYPE_MAP, commit 3502f80), the same as ReXVal's and
GREEN's (a)-(f):

    false_finding       false prediction of a finding absent from the reference
    omitted_finding     omission of a finding present in the reference
    wrong_location      incorrect location / position of a finding
    wrong_severity      incorrect severity of a finding
    false_comparison    mention of a comparison not in the reference
    omitted_comparison  omission of a change from a prior study the reference describes

The prompt (`PROMPT_VERSION`) is written for this project, not CheXprompt's few-shot GPT-4
prompt, and asks for a JSON object with exactly those twelve integer counts; `parse_counts`
accepts nothing else (one ```json fence at most), so an answer is either read exactly or
asked again with the reason, and after the retries counted as a failure.

Scores per pair (lower is better; a failed pair is NaN, left out of the means and counted in
``detailed["failed"]`` / ``detailed["failed_indices"]``):

* ``chexprompt``: the number of clinically significant errors, CheXprompt's headline count
  (LLaVA-Rad reports its mean over the test set); companions ``chexprompt-total`` (all
  errors) and ``chexprompt-insignificant``; each of the twelve counts in
  ``per_sample_detailed``.
* ``crimson-weighted``: the same counts weighted by clinical significance with weights taken
  from CRIMSON (Baharoon et al. 2026, arXiv 2603.06183; rajpurkarlab/CRIMSON
  ``CRIMSON/generate_score.py`` at 07e3331): a finding error (false or omitted finding)
  weighs 1.0 when significant and 0.25 when not; an attribute error (location, severity,
  and comparison errors, which CRIMSON counts as temporal attribute errors) weighs 0.5 when
  significant and 0 when not. CRIMSON grades findings on four levels (urgent 1.0,
  actionable non-urgent 0.5, non-actionable 0.25, benign 0) where this judgement has two,
  so "significant" takes the urgent weight and "insignificant" the non-actionable one
  (CRIMSON's default for an unlabelled finding). This is radixpert's weighting of
  CheXprompt counts, not the CRIMSON score: CRIMSON's (-1, 1] score needs matched findings
  and the weighted number of reference findings, which this judgement does not ask for.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from radixpert.evaluate.base import MetricResult
from radixpert.evaluate.judges.backend import (
    Judgement,
    JudgeMetric,
    JudgeParseError,
    Messages,
    json_answer,
    mean_over_judged,
)

log = logging.getLogger(__name__)

PROMPT_VERSION = "radixpert-chexprompt-v1"
NAMESPACE = "chexprompt"  # the cache both metrics read
MAX_TOKENS = 512
CATEGORIES = (
    "false_finding",
    "omitted_finding",
    "wrong_location",
    "wrong_severity",
    "false_comparison",
    "omitted_comparison",
)
LEVELS = ("significant", "insignificant")
SOURCE = "microsoft/chexprompt@3502f80 src/chexprompt/eval_utils.py ERROR_TYPE_MAP (error types)"

# CRIMSON's weights (rajpurkarlab/CRIMSON@07e3331 CRIMSON/generate_score.py): findings
# urgent 1.0 / non-actionable 0.25, attribute errors significant 0.5 / negligible 0.
FINDING_ERRORS = ("false_finding", "omitted_finding")
CRIMSON_WEIGHTS: dict[str, dict[str, float]] = {
    c: (
        {"significant": 1.0, "insignificant": 0.25}
        if c in FINDING_ERRORS
        else {"significant": 0.5, "insignificant": 0.0}
    )
    for c in CATEGORIES
}
CRIMSON_SOURCE = "rajpurkarlab/CRIMSON@07e3331 CRIMSON/generate_score.py (weights only)"

SYSTEM = (
    "You are a board-certified radiologist who checks machine-written chest X-ray reports "
    "against a radiologist's reference report. You count errors and answer with one JSON "
    "object and nothing else."
)

_ZEROS = ", ".join(f'"{c}": 0' for c in CATEGORIES)
_TEMPLATE = f'{{"significant": {{{_ZEROS}}}, "insignificant": {{{_ZEROS}}}}}'

INSTRUCTIONS = f"""Compare the CANDIDATE report with the REFERENCE report and count the errors in the candidate. The reference is correct.

Error types:
- false_finding: the candidate states a finding that the reference does not support.
- omitted_finding: the candidate leaves out a finding that the reference reports.
- wrong_location: the candidate places a finding (or a device) in the wrong side, lobe, zone or position.
- wrong_severity: the candidate gets the size, extent, amount or severity of a finding wrong.
- false_comparison: the candidate describes a change from, or a comparison with, a prior study that the reference does not describe.
- omitted_comparison: the candidate leaves out a change from a prior study that the reference describes.

Count every error as significant when it is likely to change the patient's treatment, management or outcome, and as insignificant otherwise.

Rules:
- Judge clinical content only. Different wording, order or style of the same content is not an error.
- A normal or negative statement ("no pneumothorax") is an error only when the reference says otherwise.
- Count each error once, under the one type that fits it best.
- Write 0 for a type without errors.

Example. Reference: "Moderate right pleural effusion, larger than on the prior study. No pneumothorax." Candidate: "Small left pleural effusion. No pneumothorax. Mild cardiomegaly." Errors: the effusion is on the wrong side (wrong_location, significant), it is called small instead of moderate (wrong_severity, insignificant), its increase since the prior study is left out (omitted_comparison, significant), the cardiomegaly is not in the reference (false_finding, significant).

Answer with this JSON object, with your counts as whole numbers, and nothing before or after it:
{_TEMPLATE}"""  # noqa: E501 - prompt text


def chexprompt_messages(reference: str, candidate: str) -> Messages:
    """The conversation asking for the twelve error counts of one report pair."""
    user = (
        f"{INSTRUCTIONS}\n\nREFERENCE:\n<<<\n{reference.strip()}\n>>>\n\n"
        f"CANDIDATE:\n<<<\n{candidate.strip()}\n>>>"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_counts(text: str) -> dict[str, dict[str, int]]:
    """The twelve counts of an answer, or JudgeParseError saying what is wrong.

    The answer must be one JSON object with exactly the keys "significant" and
    "insignificant", each an object with exactly the six error types, each a non-negative
    integer (not a float, a string or a boolean).
    """
    value = json_answer(text)
    if not isinstance(value, dict):
        raise JudgeParseError("the answer must be a JSON object")
    _exact_keys(value, LEVELS, "the answer")
    out: dict[str, dict[str, int]] = {}
    for level in LEVELS:
        counts = value[level]
        if not isinstance(counts, dict):
            raise JudgeParseError(f'"{level}" must be an object of the six error counts')
        _exact_keys(counts, CATEGORIES, f'"{level}"')
        for c in CATEGORIES:
            n = counts[c]
            if type(n) is not int or n < 0:
                raise JudgeParseError(
                    f'"{level}"."{c}" must be a whole number 0 or more, got {json_text(n)}'
                )
        out[level] = {c: counts[c] for c in CATEGORIES}
    return out


def _exact_keys(obj: dict[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise JudgeParseError(f'{where} lacks the key "{missing[0]}"')
    extra = [k for k in obj if k not in keys]
    if extra:
        raise JudgeParseError(f'{where} has a key "{extra[0]}" that was not asked for')


def json_text(value: Any) -> str:
    """A value as the judge wrote it (for error messages)."""
    return json.dumps(value)


def count_table(results: Sequence[Judgement]) -> np.ndarray:
    """(pairs, 2 levels, 6 types) error counts; rows of failed answers are NaN."""
    table = np.full((len(results), len(LEVELS), len(CATEGORIES)), math.nan)
    for i, r in enumerate(results):
        if r.ok:
            for a, level in enumerate(LEVELS):
                table[i, a] = [r.value[level][c] for c in CATEGORIES]
    return table


def _series(x: np.ndarray) -> list[float]:
    return [float(v) for v in x]


def _scored(
    name: str, values: np.ndarray, settings: dict[str, Any], detailed: dict[str, Any]
) -> MetricResult:
    aggregate, corpus_fn = mean_over_judged(values)
    return MetricResult(
        name=name,
        aggregate=aggregate,
        per_sample=_series(values),
        higher_is_better=False,
        settings=settings,
        detailed=detailed,
        corpus_fn=corpus_fn,
        bounds=(0.0, math.inf),
        versions={"numpy": np.__version__},
    )


def _failures(results: Sequence[Judgement]) -> dict[str, Any]:
    failed = [i for i, r in enumerate(results) if not r.ok]
    return {
        "n": len(results),
        "judged": len(results) - len(failed),
        "failed": len(failed),
        "failed_indices": failed,
        "failure_reasons": sorted({str(results[i].error) for i in failed})[:10],
    }


class _ErrorCounts(JudgeMetric):
    """The shared question of `chexprompt` and `crimson-weighted`."""

    higher_is_better = False
    prompt_version = PROMPT_VERSION
    cache_namespace = NAMESPACE
    max_tokens = MAX_TOKENS

    def counts(
        self, references: Sequence[str], candidates: Sequence[str]
    ) -> tuple[np.ndarray, list[Judgement]]:
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        self.ensure_available()
        questions = [chexprompt_messages(r, c) for r, c in zip(references, candidates)]
        results = self.judge(questions, parse_counts)
        failed = sum(not r.ok for r in results)
        if failed:
            log.warning("%s: %d of %d answers never parsed (NaN)", self.name, failed, len(results))
        return count_table(results), results

    def base_settings(self, results: Sequence[Judgement]) -> dict[str, Any]:
        return {
            **self.judge_settings(results),
            "error_types": list(CATEGORIES),
            "error_types_source": SOURCE,
            "failed_pairs": "NaN per sample, left out of the mean, counted in detailed",
        }


class CheXprompt(_ErrorCounts):
    """CheXprompt-style error counts: clinically significant errors per report (lower is
    better), with the total and the insignificant errors as companions."""

    name = "chexprompt"
    description = (
        "CheXprompt-style LLM judge: clinically significant errors per report (six error "
        "types; total and insignificant as companions); lower is better"
    )

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        table, results = self.counts(references, candidates)
        significant, insignificant = table[:, 0].sum(axis=1), table[:, 1].sum(axis=1)
        settings = self.base_settings(results)
        base = _failures(results)
        detailed: dict[str, Any] = dict(base)
        for a, level in enumerate(LEVELS):
            for j, c in enumerate(CATEGORIES):
                column = table[:, a, j]
                detailed[f"mean_{level}_{c}"] = (
                    float(np.nanmean(column)) if base["judged"] else math.nan
                )
        judged = ~np.isnan(significant)
        detailed["share_without_significant_error"] = (
            float((significant[judged] == 0).mean()) if judged.any() else math.nan
        )
        per_sample_detailed = {
            f"{level}_{c}": _series(table[:, a, j])
            for a, level in enumerate(LEVELS)
            for j, c in enumerate(CATEGORIES)
        }
        head = _scored(
            self.name,
            significant,
            {**settings, "score": "number of clinically significant errors"},
            detailed,
        )
        head.per_sample_detailed = per_sample_detailed
        head.extra = [
            _scored(
                f"{self.name}-total",
                significant + insignificant,
                {**settings, "score": "number of errors, significant or not"},
                dict(base),
            ),
            _scored(
                f"{self.name}-insignificant",
                insignificant,
                {**settings, "score": "number of clinically insignificant errors"},
                dict(base),
            ),
        ]
        return head


class CrimsonWeighted(_ErrorCounts):
    """CheXprompt-style counts weighted by clinical significance with CRIMSON's weights (see
    the module docstring); lower is better. Not the CRIMSON score."""

    name = "crimson-weighted"
    description = (
        "CheXprompt-style error counts weighted by significance with CRIMSON's weights "
        "(finding errors 1 / 0.25, attribute errors 0.5 / 0); not the CRIMSON score; "
        "lower is better"
    )

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        table, results = self.counts(references, candidates)
        weights = np.array([[CRIMSON_WEIGHTS[c][level] for c in CATEGORIES] for level in LEVELS])
        weighted = (table * weights).sum(axis=(1, 2))
        finding = [CATEGORIES.index(c) for c in FINDING_ERRORS]
        attribute = [j for j in range(len(CATEGORIES)) if j not in finding]
        by_finding = (table[:, :, finding] * weights[:, finding]).sum(axis=(1, 2))
        by_attribute = (table[:, :, attribute] * weights[:, attribute]).sum(axis=(1, 2))
        settings = {
            **self.base_settings(results),
            "score": "sum over the twelve counts of weight x count",
            "weights": CRIMSON_WEIGHTS,
            "weights_source": CRIMSON_SOURCE,
            "note": "radixpert's weighting of CheXprompt-style counts, not the CRIMSON score",
        }
        result = _scored(self.name, weighted, settings, _failures(results))
        result.per_sample_detailed = {
            "weighted_finding_errors": _series(by_finding),
            "weighted_attribute_errors": _series(by_attribute),
        }
        return result
