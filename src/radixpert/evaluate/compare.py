"""Paired significance tests for two systems scored on the same test ids, and p-value correction.

* `approximate_randomization`: swap each pair's two outputs with probability 1/2 and count
  how often the swapped difference is at least the observed one, as RadEval's
  `compare_systems` does (jbdel/RadEval, `radeval/utils.py`).
* `paired_bootstrap`: resample ids with replacement, the same ids for both systems and the
  same resamples as the bootstrap CIs of `stats` (`bootstrap_indices`), and report the 95%
  percentile interval of the difference with a shifted-distribution p-value.
* `correct`: Holm, Bonferroni or Benjamini-Hochberg adjustment when a leaderboard makes
  several comparisons.

Both tests take the per-sample scores `a` and `b` (`MetricResult.per_sample`, same ids in the
same order) and compare the mean unless a corpus statistic is given (corpus BLEU, micro F1).
A swap in approximate randomisation builds mixed pseudo-systems, so its corpus statistic is
a *pooled* function over both systems' samples; the bootstrap never mixes systems and takes
each system's own `MetricResult.corpus_fn`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from radixpert.evaluate.stats import (
    Interval,
    bootstrap_indices,
    bootstrap_replicates,
    percentile_interval,
)

CorpusFn = Callable[[np.ndarray], float]

# Resampled differences within this relative distance of the observed one count as ties:
# swaps that tie in exact arithmetic (scores in steps of 0.1, a zero difference flipped)
# can differ in the last bits. scipy.stats.permutation_test does the same (100 ulp).
_TIE_RTOL = 1e-9
_CHUNK = 2_000_000  # bound on the elements of a temporary (resamples x n) array

CORRECTIONS = ("holm", "bonferroni", "bh", "none")


@dataclass(frozen=True)
class PairedTest:
    """The outcome of one paired test of system a against system b.

    Attributes:
        method: "approximate-randomization" or "paired-bootstrap".
        difference: observed statistic of a minus that of b (positive: a scores higher).
        p_value: two-sided p-value, by the method's own rule (see its function).
        resamples: randomisation trials or bootstrap resamples drawn.
        seed: seed of the numpy generator that drew them.
        statistic: "mean" (of per-sample scores) or "corpus" (a corpus function's).
        interval: 95% percentile interval of the difference (bootstrap only).
    """

    method: str
    difference: float
    p_value: float
    resamples: int
    seed: int
    statistic: str = "mean"
    interval: Interval | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "difference": self.difference,
            "p_value": self.p_value,
            "resamples": self.resamples,
            "seed": self.seed,
            "statistic": self.statistic,
            "interval": None if self.interval is None else self.interval.as_dict(),
        }


def approximate_randomization(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 10_000,
    seed: int = 0,
    pooled_corpus_fn: CorpusFn | None = None,
) -> PairedTest:
    """Paired two-sided approximate randomisation test of system a against system b.

    Each trial swaps the two systems' outputs of every id independently with probability
    1/2 and recomputes the difference of the system statistic. The p-value is RadEval's
    (jbdel/RadEval `radeval/utils.py`, `PairedTest._approximate_randomization_test`):
    ``count / resamples`` with count the trials where |swapped difference| >= |observed
    difference|. It is not the add-one ``(count + 1) / (resamples + 1)`` of sacrebleu and
    Phipson & Smyth (2010), so it can be 0; that one is ``(p * resamples + 1) /
    (resamples + 1)``. Unlike RadEval, differences within a relative 1e-9 of the observed
    one count as ties (see `_TIE_RTOL`). Trials are drawn with numpy's generator, so the
    numbers are not RadEval's bit for bit, only the procedure.

    Args:
        a: per-sample scores of system a.
        b: per-sample scores of system b, same ids in the same order.
        resamples: randomisation trials.
        seed: seed of the trials; the same seed gives the same swaps for any statistic.
        pooled_corpus_fn: for a corpus statistic, the statistic of a system made of the
            given samples of the pool ``[a's samples, b's samples]``: index ``i < n`` is
            a's output for id i, ``n + i`` is b's. A trial that swaps id i gives
            pseudo-system a index ``n + i`` and pseudo-system b index ``i``; the observed
            difference is ``f(arange(n)) - f(arange(n, 2n))``. A system's own
            `MetricResult.corpus_fn` cannot serve: a swapped system mixes both systems'
            samples. `a` and `b` then only fix n and are checked; None means the mean.

    Returns:
        PairedTest with method "approximate-randomization" and no interval.
    """
    x, y = _check_pair(a, b)
    _check_resamples(resamples)
    n = x.size
    if pooled_corpus_fn is None:
        d = x - y
        observed = float(d.mean())
        scale = max(abs(observed), float(np.abs(x).mean() + np.abs(y).mean()))
        trials = np.concatenate(
            [np.where(swap, -d, d).mean(axis=1) for swap in _swaps(n, resamples, seed)]
        )
        statistic = "mean"
    else:
        own = np.arange(n)
        stat_a, stat_b = _corpus(pooled_corpus_fn, own), _corpus(pooled_corpus_fn, own + n)
        observed = stat_a - stat_b
        scale = max(abs(observed), abs(stat_a), abs(stat_b))
        trials = np.array(
            [
                _corpus(pooled_corpus_fn, np.where(row, own + n, own))
                - _corpus(pooled_corpus_fn, np.where(row, own, own + n))
                for swap in _swaps(n, resamples, seed)
                for row in swap
            ]
        )
        statistic = "corpus"
    count = int(np.count_nonzero(np.abs(trials) >= abs(observed) - _TIE_RTOL * scale))
    return PairedTest(
        method="approximate-randomization",
        difference=observed,
        p_value=count / resamples,
        resamples=resamples,
        seed=seed,
        statistic=statistic,
    )


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 1000,
    seed: int = 0,
    corpus_fn_a: CorpusFn | None = None,
    corpus_fn_b: CorpusFn | None = None,
) -> PairedTest:
    """Paired bootstrap test of the difference a - b (Koehn 2004; Berg-Kirkpatrick et al. 2012).

    Resample r draws n ids with replacement, the same ids for both systems and the same
    draws as `stats.bootstrap_replicates` with this seed, and gives the difference
    ``delta_r``. The interval is the 2.5-97.5 percentile interval of ``delta_r``. The
    p-value is two-sided on the bootstrap distribution shifted to the null (Hall & Wilson
    1991, "Two guidelines for bootstrap hypothesis testing"): the share of resamples with
    ``|delta_r - delta| >= |delta|``, delta the observed difference; ties within a relative
    1e-9 count. Its one-sided form, ``delta_r > 2 * delta``, is Berg-Kirkpatrick et al.'s
    (2012, section 2); the share is not add-one corrected, so it can be 0, as in
    approximate randomisation. Identical systems give p = 1.

    Args:
        a: per-sample scores of system a.
        b: per-sample scores of system b, same ids in the same order; n >= 2 (with one
            id every resample repeats the observed difference and any nonzero difference
            would get p = 0).
        resamples: bootstrap resamples.
        seed: seed of `stats.bootstrap_indices`.
        corpus_fn_a: system a's `MetricResult.corpus_fn` (statistic on an index array);
            give it with `corpus_fn_b` or neither. None compares means.
        corpus_fn_b: system b's `MetricResult.corpus_fn`.

    Returns:
        PairedTest with method "paired-bootstrap" and the percentile interval.
    """
    x, y = _check_pair(a, b)
    _check_resamples(resamples)
    n = x.size
    if n < 2:
        raise ValueError(f"paired_bootstrap needs at least 2 pairs, got {n}")
    if (corpus_fn_a is None) != (corpus_fn_b is None):
        raise ValueError("give both corpus_fn_a and corpus_fn_b, or neither")
    if corpus_fn_a is None or corpus_fn_b is None:
        d = x - y
        observed = float(d.mean())
        scale = max(abs(observed), float(np.abs(x).mean() + np.abs(y).mean()))
        deltas = bootstrap_replicates(d, resamples, seed)
        statistic = "mean"
    else:
        fa, fb = corpus_fn_a, corpus_fn_b
        own = np.arange(n)
        stat_a, stat_b = _corpus(fa, own), _corpus(fb, own)
        observed = stat_a - stat_b
        scale = max(abs(observed), abs(stat_a), abs(stat_b))
        idx = bootstrap_indices(n, resamples, seed)
        deltas = np.array([_corpus(fa, row) - _corpus(fb, row) for row in idx])
        statistic = "corpus"
    shifted = np.abs(deltas - observed)
    count = int(np.count_nonzero(shifted >= abs(observed) - _TIE_RTOL * scale))
    return PairedTest(
        method="paired-bootstrap",
        difference=observed,
        p_value=count / resamples,
        resamples=resamples,
        seed=seed,
        statistic=statistic,
        interval=percentile_interval(deltas),
    )


def correct(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """Adjust p-values for multiple comparisons; order kept, nan passed through uncounted.

    With m the number of non-nan p-values and p_(1) <= ... <= p_(m):

    * "bonferroni": min(1, m p).
    * "holm" (Holm 1979, step-down): p_(i) becomes max over j <= i of min(1, (m - j + 1) p_(j)).
    * "bh" (Benjamini & Hochberg 1995, step-up FDR): p_(i) becomes min over j >= i of
      min(1, m p_(j) / j), so adjusted values keep the order of the raw ones.
    * "none": unchanged.

    These are statsmodels' `multipletests` methods "bonferroni", "holm" and "fdr_bh".

    Raises:
        ValueError: for another method, or a p-value outside [0, 1] (nan aside).
    """
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; choose one of {', '.join(CORRECTIONS)}")
    p = np.asarray(p_values, dtype=float).reshape(-1)
    out = p.copy()
    keep = ~np.isnan(p)
    bad = np.flatnonzero(keep & ((p < 0) | (p > 1)))
    if bad.size:
        raise ValueError(f"p-values must lie in [0, 1]: index {bad[0]} is {p[bad[0]]}")
    m = int(keep.sum())
    if m == 0 or method == "none":
        return out.tolist()
    q = p[keep]
    if method == "bonferroni":
        adjusted = np.minimum(1.0, m * q)
    else:
        order = np.argsort(q, kind="stable")
        ranked = q[order]
        rank = np.arange(1, m + 1)
        if method == "holm":
            stepped = np.maximum.accumulate(np.minimum(1.0, (m - rank + 1) * ranked))
        else:  # bh
            stepped = np.minimum.accumulate(np.minimum(1.0, m * ranked / rank)[::-1])[::-1]
        adjusted = np.empty(m)
        adjusted[order] = stepped
    out[keep] = adjusted
    return out.tolist()


def _check_pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    for name, v in (("a", x), ("b", y)):
        if v.ndim != 1:
            raise ValueError(f"{name} must be one score per id, got shape {v.shape}")
    if x.size != y.size:
        raise ValueError(f"a and b must score the same ids: a has {x.size}, b has {y.size}")
    if x.size == 0:
        raise ValueError("a and b are empty: a paired test needs at least 1 pair")
    for name, v in (("a", x), ("b", y)):
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise ValueError(f"{name} has a non-finite score at index {bad[0]}: {v[bad[0]]}")
    return x, y


def _check_resamples(resamples: int) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int | np.integer):
        raise ValueError(f"resamples must be an integer, got {resamples!r}")
    if resamples <= 0:
        raise ValueError(f"resamples must be > 0, got {resamples}")


def _swaps(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Boolean (rows, n) blocks, True where a trial swaps an id; chunking does not change
    the draws (the generator's doubles come in sequence), so every path sees the same swaps."""
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK // n)
    for start in range(0, resamples, step):
        yield rng.random((min(step, resamples - start), n)) < 0.5


def _corpus(fn: CorpusFn, idx: np.ndarray) -> float:
    value = float(fn(idx))
    if not math.isfinite(value):
        raise ValueError(f"corpus statistic is {value} on a resample of {idx.size} samples")
    return value
