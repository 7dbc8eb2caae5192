"""Confidence intervals from per-sample scores: the normal approximation and the bootstrap.

* `normal_ci`: mean ± 1.96·SE, SE = sample std / sqrt(n) — as ReXrank reports.
* `bootstrap_ci`: percentile interval over resampled report sets (500 by default, seeded)
  — as LLaVA-Rad reports. Corpus statistics (corpus BLEU, micro F1) are recomputed on each
  resample through `MetricResult.corpus_fn`; other metrics resample the per-sample mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str

    def as_dict(self) -> dict[str, float | str]:
        return {"low": self.low, "high": self.high, "method": self.method}


def normal_ci(values: Sequence[float], z: float = Z95) -> tuple[float, float, Interval]:
    """(mean, standard error, interval) of per-sample scores; SE is nan for n < 2."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return math.nan, math.nan, Interval(math.nan, math.nan, "normal")
    m = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return m, se, Interval(m - z * se, m + z * se, "normal")


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) index matrix; the same seed gives the same resamples for every metric,
    so intervals of different metrics (and models on the same ids) are paired."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n))


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
    idx = bootstrap_indices(n, resamples, seed)
    if corpus_fn is not None:
        return np.array([corpus_fn(row) for row in idx], dtype=float)
    out = np.empty(resamples)
    step = max(1, 2_000_000 // n)  # bound the temporary (rows x n) array
    for s in range(0, resamples, step):
        out[s : s + step] = x[idx[s : s + step]].mean(axis=1)
    return out


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> Interval:
    if replicates.size == 0:
        return Interval(math.nan, math.nan, "bootstrap-percentile")
    a = (1 - level) / 2
    lo, hi = np.quantile(replicates, [a, 1 - a])
    return Interval(float(lo), float(hi), "bootstrap-percentile")
