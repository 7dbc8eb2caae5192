"""Confidence intervals: pinned normal-approximation numbers and bootstrap properties."""

from __future__ import annotations

import math

import numpy as np

from radixpert.evaluate.stats import (
    bootstrap_replicates,
    normal_ci,
    percentile_interval,
)


def test_normal_ci_pinned():
    # values 0..9: mean 4.5, sample std sqrt(55/6), SE = std / sqrt(10)
    mean, se, ci = normal_ci(range(10))
    assert mean == 4.5
    assert math.isclose(se, math.sqrt(55 / 6) / math.sqrt(10), rel_tol=1e-12)
    assert math.isclose(ci.low, 4.5 - 1.959963984540054 * se, rel_tol=1e-12)
    assert math.isclose(ci.high, 4.5 + 1.959963984540054 * se, rel_tol=1e-12)


def test_normal_ci_degenerate():
    mean, se, ci = normal_ci([0.3])
    assert mean == 0.3 and math.isnan(se) and math.isnan(ci.low)
    assert math.isnan(normal_ci([])[0])


def test_bootstrap_is_seeded_and_paired():
    x = np.random.default_rng(1).random(300)
    a = bootstrap_replicates(x, 200, seed=7)
    b = bootstrap_replicates(x, 200, seed=7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, bootstrap_replicates(x, 200, seed=8))
    # the mean path and an explicit corpus_fn computing the mean agree exactly
    c = bootstrap_replicates(x, 200, seed=7, corpus_fn=lambda idx: float(x[idx].mean()))
    assert np.allclose(a, c, rtol=0, atol=1e-12)


def test_bootstrap_interval_covers_mean_and_matches_normal_roughly():
    x = np.random.default_rng(2).normal(0.4, 0.2, size=2000)
    iv = percentile_interval(bootstrap_replicates(x, 500, seed=0))
    mean, _se, ci = normal_ci(x)
    assert iv.low < mean < iv.high
    # the two intervals estimate the same thing: widths within 20 %
    assert abs((iv.high - iv.low) - (ci.high - ci.low)) < 0.2 * (ci.high - ci.low)


def test_bootstrap_chunking_matches_unchunked():
    # n large enough that the mean path is computed in several chunks
    x = np.random.default_rng(3).random(50_000)
    reps = bootstrap_replicates(x, 60, seed=4)
    idx = np.random.default_rng(4).integers(0, x.size, size=(60, x.size))
    assert np.allclose(reps, x[idx].mean(axis=1), rtol=0, atol=1e-12)
