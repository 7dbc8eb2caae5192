"""Confidence intervals from per-sample scores: the normal approximation and the bootstrap.

* `normal_ci`: mean ± 1.96·SE, SE = sample std / sqrt(n) — as ReXrank reports; `clip` keeps
  the interval of a bounded statistic (F1, BLEU, ROUGE in [0, 1]) inside its range.
* `bootstrap_replicates` + `percentile_interval`: percentile interval over resampled report
  sets (500 by default, seeded) — as LLaVA-Rad reports. Corpus statistics (corpus BLEU,
  micro F1) are recomputed on each resample through `MetricResult.corpus_fn`; other metrics
  resample the per-sample mean. Resamples are drawn in chunks of about `CHUNK_ELEMENTS`
  indices, so memory stays bounded whatever the number of resamples; the chunks are the
  rows `bootstrap_indices` draws, in order, so every metric sees the same resamples.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
CHUNK_ELEMENTS = 2_000_000  # bootstrap indices held at once (16 MB of int64)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str

    def as_dict(self) -> dict[str, float | str]:
        return {"low": self.low, "high": self.high, "method": self.method}


def normal_ci(values: Sequence[float], z: float = Z95) -> tuple[float, float, Interval]:
    """(mean, standard error, interval) of per-sample scores; SE is nan for n < 2.

    A per-sample nan (a pair the metric could not score: an LLM judge's counted failure,
    RadFact's empty denominator) is left out; the metric reports how many there were.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return math.nan, math.nan, Interval(math.nan, math.nan, "normal")
    m = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return m, se, Interval(m - z * se, m + z * se, "normal")


def clip(interval: Interval, bounds: tuple[float, float] | None) -> Interval:
    """`interval` cut to the statistic's range `bounds` (None: unbounded, unchanged).

    The normal approximation can reach past a bound (an F1 near 1 over few reports gets an
    upper limit above 1); the statistic cannot.
    """
    if bounds is None:
        return interval
    lo, hi = bounds
    low = interval.low if math.isnan(interval.low) else min(max(interval.low, lo), hi)
    high = interval.high if math.isnan(interval.high) else max(min(interval.high, hi), lo)
    return Interval(low, high, interval.method)


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) index matrix; the same seed gives the same resamples for every metric,
    so intervals of different metrics (and models on the same ids) are paired."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n))


def iter_bootstrap_indices(
    n: int, resamples: int, seed: int, chunk_elements: int = CHUNK_ELEMENTS
) -> Iterator[np.ndarray]:
    """The rows of `bootstrap_indices(n, resamples, seed)`, a block of rows at a time.

    One generator drawn block after block gives the same numbers as one draw of the whole
    matrix, so chunking changes memory, not the resamples.
    """
    rng = np.random.default_rng(seed)
    step = max(1, chunk_elements // max(n, 1))
    for s in range(0, resamples, step):
        yield rng.integers(0, n, size=(min(step, resamples - s), n))


def bootstrap_replicates(
    values: Sequence[float],
    resamples: int = 500,
    seed: int = 0,
    corpus_fn: Callable[[np.ndarray], float] | None = None,
) -> np.ndarray:
    """The statistic on each resample: corpus_fn(idx) if given, else the mean."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0 or resamples <= 0:
        return np.empty(0)
    out = np.empty(resamples)
    unscored = bool(np.isnan(x).any())
    s = 0
    for block in iter_bootstrap_indices(n, resamples, seed):
        if corpus_fn is not None:
            out[s : s + len(block)] = [corpus_fn(row) for row in block]
        elif not unscored:
            out[s : s + len(block)] = x[block].mean(axis=1)
        else:
            # nanmean: unscored pairs (nan) are left out of each resample's mean, as out of
            # the mean itself; a resample of only unscored pairs is nan (and then ignored).
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[s : s + len(block)] = np.nanmean(x[block], axis=1)
        s += len(block)
    return out


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> Interval:
    """The (1 - level)/2 and (1 + level)/2 quantiles of the replicates (numpy's default
    linear interpolation); nan for no replicates. A nan replicate (a resample on which the
    statistic is undefined, e.g. only unscored pairs drawn) is left out."""
    replicates = replicates[~np.isnan(replicates)]
    if replicates.size == 0:
        return Interval(math.nan, math.nan, "bootstrap-percentile")
    a = (1 - level) / 2
    lo, hi = np.quantile(replicates, [a, 1 - a])
    return Interval(float(lo), float(hi), "bootstrap-percentile")
