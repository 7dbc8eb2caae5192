"""Paired tests: exact permutation p-values by enumeration, parity with scipy, pinned
multiple-comparison adjustments and the corpus-statistic paths."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from radixpert.evaluate.compare import (
    PairedTest,
    approximate_randomization,
    correct,
    paired_bootstrap,
)
from radixpert.evaluate.stats import bootstrap_indices, bootstrap_replicates

# Eight pairs scored in tenths: in exact arithmetic many sign patterns tie with the observed
# sum, which floating point would split without the tie tolerance.
A8 = [0.7, 0.3, 0.9, 0.5, 0.6, 0.2, 0.8, 0.4]
B8 = [0.5, 0.4, 0.6, 0.5, 0.3, 0.3, 0.7, 0.2]


def exact_sign_flip_p(a: list[float], b: list[float]) -> float:
    """All 2^n swaps, counted on integer tenths so ties are exact."""
    d = [round(10 * x) - round(10 * y) for x, y in zip(a, b, strict=True)]
    observed = abs(sum(d))
    hits = sum(
        abs(sum(s * v for s, v in zip(signs, d, strict=True))) >= observed
        for signs in itertools.product((1, -1), repeat=len(d))
    )
    return hits / 2 ** len(d)


def test_exact_enumeration_pinned_and_matches_scipy():
    # d in tenths = [2, -1, 3, 0, 3, -1, 1, 2]: |d| sums to 13, the observed sum is 9. A sign
    # pattern flipping |d| of weight w gives |13 - 2w| >= 9 iff w <= 2 or w >= 11: 9 + 9 subsets
    # of the seven nonzero |d| (1; three 1s; two 2s and three pairs of 1s; complements), times
    # 2 for the zero: 36 of 256.
    assert exact_sign_flip_p(A8, B8) == 36 / 256
    stats = pytest.importorskip("scipy.stats")
    ref = stats.permutation_test(
        (np.array(A8), np.array(B8)),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        vectorized=True,
    )
    assert ref.pvalue == pytest.approx(36 / 256, abs=1e-12)  # 2^8 < 9999: exact in scipy


def test_approximate_randomization_close_to_exact():
    exact = exact_sign_flip_p(A8, B8)
    r = 200_000
    res = approximate_randomization(A8, B8, resamples=r, seed=3)
    se = math.sqrt(exact * (1 - exact) / r)
    assert abs(res.p_value - exact) < 4 * se
    assert res.difference == pytest.approx(0.1125, abs=1e-12)  # 0.9 / 8


def test_identical_systems():
    x = np.random.default_rng(0).random(50)
    ar = approximate_randomization(x, x, resamples=500)
    bs = paired_bootstrap(x, x, resamples=200)
    for res in (ar, bs):
        assert res.p_value == 1.0 and res.difference == 0.0
    assert bs.interval is not None and bs.interval.low == bs.interval.high == 0.0


def test_clearly_better_system_is_significant():
    rng = np.random.default_rng(1)
    a = rng.random(200)
    b = a + 0.1 + rng.normal(0, 0.05, size=200)
    ar = approximate_randomization(a, b)
    bs = paired_bootstrap(a, b)
    assert ar.p_value < 0.01 and bs.p_value < 0.01
    # RadEval's count / resamples, not add-one: no trial reaches the observed difference
    assert ar.p_value == 0.0 and ar.resamples == 10_000
    assert ar.difference == bs.difference == pytest.approx(float(np.mean(a - b)))
    assert ar.difference < 0 and bs.interval is not None and bs.interval.high < 0


def test_moderate_difference_agrees_with_paired_t_test():
    # n = 400, true difference near the 5% boundary: both tests approximate the t-test
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    a = rng.random(400)
    b = a + rng.normal(0.02, 0.2, size=400)
    t = stats.ttest_rel(a, b).pvalue
    assert 0.005 < t < 0.2
    assert approximate_randomization(a, b, resamples=20_000).p_value == pytest.approx(t, abs=0.02)
    assert paired_bootstrap(a, b, resamples=4000).p_value == pytest.approx(t, abs=0.02)


def test_paired_bootstrap_uses_the_ci_resamples():
    rng = np.random.default_rng(2)
    a = rng.random(120)
    b = a + rng.normal(0.01, 0.1, size=120)
    res = paired_bootstrap(a, b, resamples=300, seed=9)
    # the difference of the two systems' CI replicates is this test's distribution
    deltas = bootstrap_replicates(a, 300, 9) - bootstrap_replicates(b, 300, 9)
    assert res.interval is not None
    assert res.interval.low == pytest.approx(np.quantile(deltas, 0.025), abs=1e-12)
    assert res.interval.high == pytest.approx(np.quantile(deltas, 0.975), abs=1e-12)
    observed = float(np.mean(a - b))
    assert res.p_value == np.mean(np.abs(deltas - observed) >= abs(observed))


def test_seeded_and_deterministic():
    rng = np.random.default_rng(4)
    a, b = rng.random(60), rng.random(60)
    for test in (approximate_randomization, paired_bootstrap):
        first = test(a, b, resamples=400, seed=1)
        assert first == test(a, b, resamples=400, seed=1)
        assert first.p_value != test(a, b, resamples=400, seed=2).p_value


def ratio_data(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """Matches over lengths per report; the corpus statistic is a ratio of sums."""
    rng = np.random.default_rng(seed)
    len_a = rng.integers(1, 40, size=n).astype(float)
    len_b = rng.integers(1, 40, size=n).astype(float)
    hit_a = np.floor(len_a * rng.uniform(0.3, 0.9, size=n))
    hit_b = np.floor(len_b * rng.uniform(0.2, 0.9, size=n))
    return hit_a, len_a, hit_b, len_b


def test_corpus_statistic_approximate_randomization():
    hit_a, len_a, hit_b, len_b = ratio_data(80, seed=6)
    hits, lens = np.concatenate([hit_a, hit_b]), np.concatenate([len_a, len_b])

    def pooled(idx: np.ndarray) -> float:
        return float(hits[idx].sum() / lens[idx].sum())

    a, b = hit_a / len_a, hit_b / len_b
    corpus = approximate_randomization(a, b, resamples=2000, seed=0, pooled_corpus_fn=pooled)
    mean = approximate_randomization(a, b, resamples=2000, seed=0)
    assert corpus.statistic == "corpus" and mean.statistic == "mean"
    assert corpus.difference == pytest.approx(hit_a.sum() / len_a.sum() - hit_b.sum() / len_b.sum())
    assert corpus.difference != pytest.approx(mean.difference)
    assert corpus.p_value != mean.p_value
    assert corpus == approximate_randomization(
        a, b, resamples=2000, seed=0, pooled_corpus_fn=pooled
    )
    # a pooled mean is the mean path: same swaps, same counts
    scores = np.concatenate([a, b])
    via_pool = approximate_randomization(
        a, b, resamples=2000, seed=0, pooled_corpus_fn=lambda idx: float(scores[idx].mean())
    )
    assert via_pool.p_value == mean.p_value
    assert via_pool.difference == pytest.approx(mean.difference, abs=1e-12)


def test_corpus_statistic_matches_exact_enumeration():
    hit_a, len_a, hit_b, len_b = ratio_data(8, seed=7)

    def ratio_difference(swapped: tuple[bool, ...]) -> float:
        s = np.array(swapped)
        ha, la = np.where(s, hit_b, hit_a), np.where(s, len_b, len_a)
        hb, lb = np.where(s, hit_a, hit_b), np.where(s, len_a, len_b)
        return ha.sum() / la.sum() - hb.sum() / lb.sum()

    observed = abs(ratio_difference((False,) * 8))
    flips = [abs(ratio_difference(s)) for s in itertools.product((False, True), repeat=8)]
    exact = float(np.mean(np.array(flips) >= observed * (1 - 1e-9)))
    hits, lens = np.concatenate([hit_a, hit_b]), np.concatenate([len_a, len_b])
    r = 20_000
    res = approximate_randomization(
        hit_a / len_a,
        hit_b / len_b,
        resamples=r,
        seed=8,
        pooled_corpus_fn=lambda idx: float(hits[idx].sum() / lens[idx].sum()),
    )
    assert 0.01 < exact < 0.99
    assert abs(res.p_value - exact) < 4 * math.sqrt(exact * (1 - exact) / r)


def test_corpus_statistic_paired_bootstrap():
    hit_a, len_a, hit_b, len_b = ratio_data(80, seed=6)

    def fa(idx: np.ndarray) -> float:
        return float(hit_a[idx].sum() / len_a[idx].sum())

    def fb(idx: np.ndarray) -> float:
        return float(hit_b[idx].sum() / len_b[idx].sum())

    a, b = hit_a / len_a, hit_b / len_b
    res = paired_bootstrap(a, b, resamples=300, seed=2, corpus_fn_a=fa, corpus_fn_b=fb)
    assert res.statistic == "corpus"
    assert res == paired_bootstrap(a, b, resamples=300, seed=2, corpus_fn_a=fa, corpus_fn_b=fb)
    assert res.difference == pytest.approx(fa(np.arange(80)) - fb(np.arange(80)))
    deltas = np.array([fa(row) - fb(row) for row in bootstrap_indices(80, 300, 2)])
    assert res.interval is not None
    assert res.interval.low == pytest.approx(np.quantile(deltas, 0.025), abs=1e-12)
    assert res.p_value == np.mean(np.abs(deltas - res.difference) >= abs(res.difference))
    assert res.difference != pytest.approx(paired_bootstrap(a, b, resamples=300).difference)


def test_paired_test_record():
    res = paired_bootstrap([0.1, 0.5, 0.3], [0.2, 0.4, 0.1], resamples=50, seed=3)
    d = res.as_dict()
    assert d["method"] == "paired-bootstrap" and d["resamples"] == 50 and d["seed"] == 3
    assert d["interval"]["method"] == "bootstrap-percentile"
    ar = approximate_randomization([0.1, 0.5], [0.2, 0.4], resamples=10).as_dict()
    assert ar["interval"] is None and ar["statistic"] == "mean"
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.p_value = 0.0  # type: ignore[misc]
    assert isinstance(res, PairedTest)


# Documented vector: nan at index 2; m = 5 counted; sorted 0.001, 0.012, 0.035, 0.04, 0.2.
P = [0.04, 0.001, math.nan, 0.035, 0.012, 0.2]
# Bonferroni: 5 p, capped at 1.
BONFERRONI = [0.2, 0.005, math.nan, 0.175, 0.06, 1.0]
# Holm: 5*.001=.005, 4*.012=.048, 3*.035=.105, 2*.04=.08 -> .105 (step-down max), 1*.2=.2.
HOLM = [0.105, 0.005, math.nan, 0.105, 0.048, 0.2]
# BH: 5/1*.001=.005, 5/2*.012=.03, 5/3*.035=.0583 -> .05 (step-up min), 5/4*.04=.05, .2.
BH = [0.05, 0.005, math.nan, 0.05, 0.03, 0.2]


@pytest.mark.parametrize(
    ("method", "expected"),
    [("bonferroni", BONFERRONI), ("holm", HOLM), ("bh", BH), ("none", P)],
)
def test_correction_pinned(method, expected):
    got = correct(P, method)
    assert len(got) == len(P) and math.isnan(got[2])
    del got[2]
    assert got == pytest.approx([e for i, e in enumerate(expected) if i != 2], abs=1e-12)


def test_correction_caps_and_edges():
    assert correct([0.6, 0.7]) == [1.0, 1.0]
    assert correct([0.6, 0.7], "bonferroni") == [1.0, 1.0]
    assert correct([]) == []
    assert all(math.isnan(x) for x in correct([math.nan, math.nan], "bh"))
    assert correct([0.03, math.nan], "holm") == pytest.approx([0.03, math.nan], nan_ok=True)
    # ties share one adjusted value
    assert correct([0.01, 0.01, 0.5], "holm") == pytest.approx([0.03, 0.03, 0.5])


@pytest.mark.parametrize(
    ("method", "sm_name"), [("bonferroni", "bonferroni"), ("holm", "holm"), ("bh", "fdr_bh")]
)
def test_correction_matches_statsmodels(method, sm_name):
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).uniform(0, 0.2, size=12)
    ref = multitest.multipletests(p, method=sm_name)[1]
    assert correct(p.tolist(), method) == pytest.approx(ref.tolist(), abs=1e-12)


def test_correction_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown correction 'fdr'"):
        correct([0.1], "fdr")
    with pytest.raises(ValueError, match=r"index 1 is 1\.5"):
        correct([0.1, 1.5])


@pytest.mark.parametrize("test", [approximate_randomization, paired_bootstrap])
def test_bad_inputs(test):
    with pytest.raises(ValueError, match="a has 3, b has 4"):
        test([0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="at least 1 pair"):
        test([], [])
    with pytest.raises(ValueError, match="a has a non-finite score at index 2: nan"):
        test([0.1, 0.2, math.nan, math.inf], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="b has a non-finite score at index 0: inf"):
        test([0.1, 0.2], [math.inf, 0.2])
    with pytest.raises(ValueError, match="one score per id"):
        test([[0.1, 0.2]], [[0.1, 0.2]])
    for bad in (0, -5):
        with pytest.raises(ValueError, match="resamples must be > 0"):
            test([0.1, 0.2], [0.2, 0.1], resamples=bad)
    with pytest.raises(ValueError, match="resamples must be an integer"):
        test([0.1, 0.2], [0.2, 0.1], resamples=10.0)


def test_bad_corpus_inputs():
    with pytest.raises(ValueError, match="both corpus_fn_a and corpus_fn_b"):
        paired_bootstrap([0.1, 0.2], [0.2, 0.1], corpus_fn_a=lambda idx: 0.0)
    with pytest.raises(ValueError, match="at least 2 pairs, got 1"):
        paired_bootstrap([0.1], [0.2])
    with pytest.raises(ValueError, match="corpus statistic is nan"):
        approximate_randomization(
            [0.1, 0.2], [0.2, 0.1], resamples=10, pooled_corpus_fn=lambda idx: math.nan
        )
