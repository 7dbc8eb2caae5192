"""F1 over CheXpert observation labels of reference and candidate reports.

Shared by F1-CheXbert (labels from the CheXbert model) and F1-CheXpert (labels from
radixpert's rule-based labeler): both supply one label dict per report,
``{observation: 1 | 0 | -1 | None}`` (positive, negative, uncertain, not mentioned), and
`label_f1_results` turns reference and candidate labels into eight scores.

Binarisation, two ways:

* uncertain as positive (the default, the ``"rrg"`` mode of the f1chexbert package used by
  RadEval and ReXrank): positive and uncertain -> 1, negative and not mentioned -> 0;
* uncertain as negative (suffix ``-uneg``): only positive -> 1.

Scores, for each binarisation: micro and macro F1 over the 14 observations and over the
five competition observations (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural
Effusion), computed exactly as scikit-learn's
``f1_score(y_true, y_pred, average="micro" | "macro", zero_division=0)`` on the
multilabel 0/1 matrix (references are ``y_true``). These are corpus statistics; each result
carries a `corpus_fn` that recomputes it on a bootstrap resample of report indices.

Per report (``per_sample``): the F1 of that report's candidate label vector against its
reference vector, ``2 * |both| / (|reference| + |candidate|)`` over the result's
observations, and 1.0 when both vectors are all zero (nothing to find and nothing claimed
is full agreement). Their mean is not the corpus F1; it is kept for paired tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from radixpert.evaluate.base import MetricResult
from radixpert.vocab import OBSERVATIONS, OBSERVATIONS_5

BINARISATIONS: dict[str, str] = {
    "": "uncertain as positive (f1chexbert 'rrg' mode): positive and uncertain -> 1, "
    "negative and blank -> 0",
    "-uneg": "uncertain as negative: positive -> 1; uncertain, negative and blank -> 0",
}
AVERAGES: dict[str, str] = {
    "micro": "micro F1: true / reference / candidate positives pooled over all reports and "
    "observations (sklearn f1_score average='micro', zero_division=0)",
    "macro": "macro F1: unweighted mean of the per-observation F1 (sklearn f1_score "
    "average='macro', zero_division=0)",
}
PER_SAMPLE_DEFINITION = (
    "per-report F1 of the binary label vectors over the result's observations, "
    "2|both| / (|reference| + |candidate|); 1.0 when both vectors are all zero"
)


_BLANK = 2  # code of "not mentioned" in the label-code matrix


def _code(value: Any) -> int:
    """1, 0, -1 for positive, negative, uncertain; 2 for blank (None or NaN)."""
    if value is None:
        return _BLANK
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"label value {value!r} is not 1, 0, -1 or None") from None
    if math.isnan(v):
        return _BLANK
    if v in (1.0, 0.0, -1.0):
        return int(v)
    raise ValueError(f"label value {value!r} is not 1, 0, -1 or None")


def label_codes(
    labels: Sequence[Mapping[str, Any]], observations: Sequence[str] = OBSERVATIONS
) -> np.ndarray:
    """An (n_reports, n_observations) int8 matrix: 1, 0, -1, and 2 for blank / missing."""
    out = np.full((len(labels), len(observations)), _BLANK, dtype=np.int8)
    for i, row in enumerate(labels):
        for j, obs in enumerate(observations):
            out[i, j] = _code(row.get(obs))
    return out


def binarise(
    labels: Sequence[Mapping[str, Any]] | np.ndarray,
    observations: Sequence[str] = OBSERVATIONS,
    uncertain_positive: bool = True,
) -> np.ndarray:
    """An (n_reports, n_observations) bool matrix of label dicts (missing keys are blank).

    Args:
        labels: one ``{observation: 1 | 0 | -1 | None}`` dict per report, or the matrix of
            `label_codes` for `observations`.
        observations: the columns, in order.
        uncertain_positive: count uncertain (-1) as 1 (else as 0).
    """
    codes = labels if isinstance(labels, np.ndarray) else label_codes(labels, observations)
    if uncertain_positive:
        return (codes == 1) | (codes == -1)
    return codes == 1


def _f1(tp: np.ndarray, n_true: np.ndarray, n_pred: np.ndarray) -> np.ndarray:
    """F1 = 2 tp / (n_true + n_pred), 0 where both are 0 (sklearn's zero_division=0)."""
    denom = n_true + n_pred
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's ``f1_score(average="micro", zero_division=0)`` for 0/1 matrices."""
    tp = float(np.logical_and(y_true, y_pred).sum())
    return float(_f1(np.array(tp), np.array(float(y_true.sum())), np.array(float(y_pred.sum()))))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's ``f1_score(average="macro", zero_division=0)`` for 0/1 matrices."""
    tp = np.logical_and(y_true, y_pred).sum(axis=0)
    return float(_f1(tp, y_true.sum(axis=0), y_pred.sum(axis=0)).mean())


def per_report_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """F1 of each row's label vector; 1.0 where both rows are all zero."""
    tp = np.logical_and(y_true, y_pred).sum(axis=1)
    denom = y_true.sum(axis=1) + y_pred.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 1.0)


def _per_observation(
    y_true: np.ndarray, y_pred: np.ndarray, observations: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    """Precision, recall, F1 and support (reference positives) per observation."""
    tp = np.logical_and(y_true, y_pred).sum(axis=0)
    n_true = y_true.sum(axis=0)
    n_pred = y_pred.sum(axis=0)
    f1 = _f1(tp, n_true, n_pred)
    out = {}
    for j, obs in enumerate(observations):
        out[obs] = {
            "precision": float(tp[j] / n_pred[j]) if n_pred[j] else 0.0,
            "recall": float(tp[j] / n_true[j]) if n_true[j] else 0.0,
            "f1": float(f1[j]),
            "support": int(n_true[j]),
            "predicted": int(n_pred[j]),
        }
    return out


def _corpus_fn(y_true: np.ndarray, y_pred: np.ndarray, average: str) -> Callable[[Any], float]:
    """Recompute the corpus micro / macro F1 on resampled rows (an index array, repeats ok).

    A resample is turned into row weights (how often each report was drawn), so the counts
    per observation are one matrix-vector product instead of a copy of the resampled rows.
    Counts stay exact: they are small integers held in float64.
    """
    n = len(y_true)
    # columns: true positives, reference positives, candidate positives per observation
    counts = np.hstack([np.logical_and(y_true, y_pred), y_true, y_pred]).astype(np.float64)
    k = y_true.shape[1]

    def totals(idx: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        weights = np.bincount(np.asarray(idx, dtype=np.intp), minlength=n).astype(np.float64)
        summed = weights @ counts
        return summed[:k], summed[k : 2 * k], summed[2 * k :]

    if average == "micro":

        def micro(idx: Any) -> float:
            tp, n_true, n_pred = (float(x.sum()) for x in totals(idx))
            return 2.0 * tp / (n_true + n_pred) if n_true + n_pred else 0.0

        return micro

    def macro(idx: Any) -> float:
        return float(_f1(*totals(idx)).mean())

    return macro


def label_f1_results(
    prefix: str,
    references: list[dict[str, int | None]],
    candidates: list[dict[str, int | None]],
    settings: dict[str, Any],
) -> MetricResult:
    """Micro / macro F1 over 14 and 5 observations, uncertain as positive and as negative.

    Args:
        prefix: the metric family, e.g. "f1-chexbert" or "f1-chexpert".
        references: one label dict per reference report (1, 0, -1 or None per observation).
        candidates: one label dict per candidate report, same order.
        settings: what produced the labels (labeler, checkpoint, ...); copied into each
            result's settings.

    Returns:
        ``{prefix}-14-micro`` (uncertain as positive) with `extra`: ``{prefix}-14-macro``,
        ``{prefix}-5-micro``, ``{prefix}-5-macro`` and the same four with suffix ``-uneg``
        (uncertain as negative). Each has per-report F1 (`per_sample`), per-observation
        precision / recall / F1 / support (`detailed`) and a bootstrap `corpus_fn`.

    Raises:
        ValueError: the two lists differ in length, or a label value is not 1, 0, -1, None.
    """
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
    ref_codes = label_codes(references, OBSERVATIONS)
    cand_codes = label_codes(candidates, OBSERVATIONS)
    columns_5 = [OBSERVATIONS.index(o) for o in OBSERVATIONS_5]
    results: list[MetricResult] = []
    for suffix, rule in BINARISATIONS.items():
        unc_pos = suffix == ""
        for n_obs, observations in ((14, OBSERVATIONS), (5, OBSERVATIONS_5)):
            cols = list(range(14)) if n_obs == 14 else columns_5
            y_true = binarise(ref_codes[:, cols], observations, unc_pos)
            y_pred = binarise(cand_codes[:, cols], observations, unc_pos)
            per_sample = per_report_f1(y_true, y_pred).tolist()
            detailed = {
                "per_observation": _per_observation(y_true, y_pred, observations),
                "micro_f1": micro_f1(y_true, y_pred) if len(y_true) else math.nan,
                "macro_f1": macro_f1(y_true, y_pred) if len(y_true) else math.nan,
                "mean_per_report_f1": float(np.mean(per_sample)) if per_sample else math.nan,
            }
            for average in ("micro", "macro"):
                results.append(
                    MetricResult(
                        name=f"{prefix}-{n_obs}-{average}{suffix}",
                        aggregate=detailed[f"{average}_f1"],
                        per_sample=per_sample,
                        higher_is_better=True,
                        settings={
                            **settings,
                            "observations": list(observations),
                            "average": AVERAGES[average],
                            "binarisation": rule,
                            "per_sample": PER_SAMPLE_DEFINITION,
                        },
                        detailed=dict(detailed),
                        corpus_fn=_corpus_fn(y_true, y_pred, average),
                        versions={"numpy": np.__version__},
                    )
                )
    primary, *extra = results
    primary.extra = extra
    return primary
