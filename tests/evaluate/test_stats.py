"""Confidence intervals: pinned normal-approximation numbers and bootstrap properties."""

from __future__ import annotations

import math

import numpy as np

from radixpert.evaluate.stats import (
    Interval,
    bootstrap_indices,
    bootstrap_replicates,
    clip,
    iter_bootstrap_indices,
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


def test_percentile_interval_is_the_95_percent_one_exactly():
    x = np.random.default_rng(5).random(57)
    reps = bootstrap_replicates(x, 400, seed=11)
    # the same resamples drawn independently: rows of default_rng(seed).integers
    idx = np.random.default_rng(11).integers(0, x.size, size=(400, x.size))
    means = x[idx].mean(axis=1)
    assert np.allclose(reps, means, rtol=0, atol=1e-12)
    # 2.5 / 97.5 percentiles, numpy's linear interpolation: (n - 1) * q between sorted values
    s = np.sort(means)
    lo_pos, hi_pos = 399 * 0.025, 399 * 0.975
    lo = s[int(lo_pos)] + (lo_pos - int(lo_pos)) * (s[int(lo_pos) + 1] - s[int(lo_pos)])
    hi = s[int(hi_pos)] + (hi_pos - int(hi_pos)) * (s[int(hi_pos) + 1] - s[int(hi_pos)])
    iv = percentile_interval(reps)
    assert math.isclose(iv.low, lo, rel_tol=0, abs_tol=1e-12)
    assert math.isclose(iv.high, hi, rel_tol=0, abs_tol=1e-12)
    narrower = percentile_interval(reps, level=0.90)  # a 90% interval is not the 95% one
    assert narrower.low > iv.low and narrower.high < iv.high


def test_percentile_interval_hand_computed():
    # 0..100: the 2.5 / 97.5 percentiles are 2.5 and 97.5
    iv = percentile_interval(np.arange(101, dtype=float))
    assert math.isclose(iv.low, 2.5, abs_tol=1e-12) and math.isclose(iv.high, 97.5, abs_tol=1e-12)


def test_chunked_indices_are_the_whole_matrix():
    whole = bootstrap_indices(7, 23, seed=9)
    chunks = list(iter_bootstrap_indices(7, 23, seed=9, chunk_elements=20))
    assert [len(c) for c in chunks] == [2] * 11 + [1]
    assert np.array_equal(np.concatenate(chunks), whole)
    x = np.random.default_rng(0).random(7)
    corpus = bootstrap_replicates(x, 23, seed=9, corpus_fn=lambda idx: float(x[idx].max()))
    assert np.array_equal(corpus, x[whole].max(axis=1))


def test_clip_keeps_a_bounded_interval_in_range():
    iv = Interval(0.91, 1.07, "normal")
    assert clip(iv, (0.0, 1.0)) == Interval(0.91, 1.0, "normal")
    assert clip(Interval(-0.2, 0.05, "normal"), (0.0, 1.0)).low == 0.0
    assert clip(iv, None) is iv
    nan = clip(Interval(math.nan, math.nan, "normal"), (0.0, 1.0))
    assert math.isnan(nan.low) and math.isnan(nan.high)


def test_unscored_pairs_are_left_out_of_the_mean_and_intervals():
    import math

    from radixpert.evaluate.stats import bootstrap_replicates, normal_ci, percentile_interval

    scored = [1.0, 2.0, 3.0, 4.0]
    with_gaps = [1.0, math.nan, 2.0, 3.0, math.nan, 4.0]
    m, se, interval = normal_ci(with_gaps)
    assert (m, se) == normal_ci(scored)[:2]
    assert m == 2.5 and not math.isnan(interval.low)
    reps = bootstrap_replicates(with_gaps, 200, 0)
    assert np.isfinite(reps).sum() >= 190  # only all-nan resamples are nan
    boot = percentile_interval(reps)
    assert 1.0 <= boot.low < 2.5 < boot.high <= 4.0
