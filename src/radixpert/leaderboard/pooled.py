"""Corpus statistics rebuilt from what a result file stores, on any multiset of samples.

    fn = corpus_fn(entry)                      # one system: its bootstrap / corpus value
    fn = pooled_fn(entry_a, entry_b)           # the pool [a's samples, b's samples]
    compare.approximate_randomization(a, b, pooled_corpus_fn=fn)

A metric entry whose aggregate is a corpus statistic (micro / macro F1, AP, a ratio of sums)
carries ``pooled = {"statistic": NAME, ...}`` naming one of ``STATISTICS`` and where its
inputs are stored (per-sample series in ``per_sample_detailed``; box hits in
``detailed["boxes"]``). From these the leaderboard recomputes the statistic on a swapped
pseudo-system (approximate randomisation mixes two systems' samples, so a system's own
``corpus_fn`` cannot serve) and on bootstrap resamples. ``radixpert benchmark run`` writes
them for task benchmarks (``leaderboard.tasks``); the report metrics' result entries (corpus
BLEU, CheXbert micro F1) do not store their per-sample statistics, so for those the
leaderboard tests the mean of the per-sample scores and says so.

Every function takes an index array over the samples (repeats allowed: a bootstrap draw)
and returns the statistic, NaN where it is undefined (no label ever occurs, no true box).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["STATISTICS", "ap50", "corpus_fn", "macro_f1", "micro_f1", "pooled_fn", "ratio"]

CorpusFn = Callable[[np.ndarray], float]
STATISTICS = ("micro-f1", "macro-f1", "ratio", "ap50")
_RECALLS = np.arange(101) / 100  # COCO's 101 recall points, written as evaluate.tasks does


def micro_f1(tp: Sequence[float], fp: Sequence[float], fn: Sequence[float]) -> CorpusFn:
    """2 sum(tp) / (2 sum(tp) + sum(fp) + sum(fn)) over the chosen samples."""
    t, p, n = (np.asarray(x, dtype=float) for x in (tp, fp, fn))

    def f(idx: np.ndarray) -> float:
        a, b, c = t[idx].sum(), p[idx].sum(), n[idx].sum()
        return float(2 * a / (2 * a + b + c)) if a + b + c else math.nan

    return f


def macro_f1(gold: Sequence[float], answer: Sequence[float], labels: int) -> CorpusFn:
    """Mean F1 over the labels that occur (in the truth or the answers) of the chosen samples;
    ``gold`` and ``answer`` are per-sample bit masks over ``labels`` labels."""
    bits = 1 << np.arange(labels, dtype=np.int64)
    g = (np.asarray(gold, dtype=np.int64)[:, None] & bits) > 0
    a = (np.asarray(answer, dtype=np.int64)[:, None] & bits) > 0

    def f(idx: np.ndarray) -> float:
        gi, ai = g[idx], a[idx]
        tp = (gi & ai).sum(axis=0)
        fp = (~gi & ai).sum(axis=0)
        fn = (gi & ~ai).sum(axis=0)
        occur = tp + fp + fn > 0
        if not occur.any():
            return math.nan
        return float((2 * tp[occur] / (2 * tp + fp + fn)[occur]).mean())

    return f


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> CorpusFn:
    """sum(numerator) / sum(denominator) over the chosen samples (mean IoU per true box)."""
    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)

    def f(idx: np.ndarray) -> float:
        d = den[idx].sum()
        return float(num[idx].sum() / d) if d else math.nan

    return f


def ap50(
    hits: Sequence[Sequence[float]], true_boxes: Sequence[float], keys: Sequence[str]
) -> CorpusFn:
    """Average precision at IoU 0.5 as ``evaluate.tasks.grounding_scores`` computes it.

    Args:
        hits: Per sample, whether each answer box (in answer order) matched a true box of the
            same sample (greedy, IoU >= 0.5; per sample, so it does not depend on the others).
        true_boxes: Per sample, its number of true boxes.
        keys: Per sample, its record id: boxes rank by (place in the answer, record id), as
            ``grounding_scores`` ranks them; a repeated sample's boxes stay together.
    """
    n_true = np.asarray(true_boxes, dtype=float)
    rows = [(r, keys[s], s, float(h)) for s, hs in enumerate(hits) for r, h in enumerate(hs)]
    rows.sort(key=lambda x: x[:3])
    owner = np.array([x[2] for x in rows], dtype=np.int64)
    hit = np.array([x[3] for x in rows], dtype=float)

    def f(idx: np.ndarray) -> float:
        weight = np.bincount(np.asarray(idx, dtype=np.int64), minlength=n_true.size)
        total = float((weight * n_true).sum())
        if total == 0:
            return math.nan
        h = np.repeat(hit, weight[owner])
        if h.size == 0:
            return 0.0
        tp = np.cumsum(h)
        precision = tp / np.arange(1, h.size + 1)
        recall = tp / total
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        at = np.searchsorted(recall, _RECALLS, side="left")
        return float(np.where(at < h.size, precision[np.minimum(at, h.size - 1)], 0.0).sum() / 101)

    return f


def _inputs(entry: dict[str, Any]) -> dict[str, Any]:
    spec = entry.get("pooled") or {}
    name = spec.get("statistic")
    if name not in STATISTICS:
        raise ValueError(f"unknown pooled statistic {name!r}; one of {', '.join(STATISTICS)}")
    series = entry.get("per_sample_detailed") or {}
    if name == "ap50":
        boxes = (entry.get("detailed") or {}).get("boxes") or {}
        return {k: list(boxes[k]) for k in ("hits", "true_boxes", "keys")}
    return {k: list(series[k]) for k in spec["inputs"]} | (
        {"labels": int(spec["labels"])} if name == "macro-f1" else {}
    )


def _build(name: str, inputs: dict[str, Any]) -> CorpusFn:
    if name == "micro-f1":
        return micro_f1(inputs["tp"], inputs["fp"], inputs["fn"])
    if name == "macro-f1":
        return macro_f1(inputs["gold_labels"], inputs["answer_labels"], inputs["labels"])
    if name == "ratio":
        num, den = (k for k in inputs)
        return ratio(inputs[num], inputs[den])
    return ap50(inputs["hits"], inputs["true_boxes"], inputs["keys"])


def corpus_fn(entry: dict[str, Any], order: Sequence[int] | None = None) -> CorpusFn | None:
    """The entry's corpus statistic on index arrays (samples reordered by ``order``), or None
    when the entry has no ``pooled`` recipe (its aggregate is the per-sample mean, or the
    file does not hold what the statistic needs)."""
    if not entry.get("pooled"):
        return None
    inputs = _inputs(entry)
    if order is not None:
        inputs = {
            k: ([v[i] for i in order] if isinstance(v, list) else v) for k, v in inputs.items()
        }
    return _build(entry["pooled"]["statistic"], inputs)


def pooled_fn(
    a: dict[str, Any],
    b: dict[str, Any],
    order_a: Sequence[int] | None = None,
    order_b: Sequence[int] | None = None,
) -> CorpusFn | None:
    """The statistic over the pool ``[a's samples, b's samples]`` (``approximate_randomization``'s
    ``pooled_corpus_fn``: index i < n is a's sample i, n + i is b's), each side reordered by its
    ``order`` so that position i is the same id; None unless both entries carry one recipe."""
    spec_a, spec_b = a.get("pooled"), b.get("pooled")
    if not spec_a or not spec_b:
        return None
    if spec_a.get("statistic") != spec_b.get("statistic"):
        raise ValueError(
            f"the results pool their statistic differently ({spec_a.get('statistic')} and "
            f"{spec_b.get('statistic')})"
        )
    ia, ib = _inputs(a), _inputs(b)
    if order_a is not None:
        ia = {k: ([v[i] for i in order_a] if isinstance(v, list) else v) for k, v in ia.items()}
    if order_b is not None:
        ib = {k: ([v[i] for i in order_b] if isinstance(v, list) else v) for k, v in ib.items()}
    joined = {k: (ia[k] + ib[k] if isinstance(ia[k], list) else ia[k]) for k in ia}
    return _build(spec_a["statistic"], joined)
