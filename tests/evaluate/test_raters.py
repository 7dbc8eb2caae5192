"""Metric validation against radiologists: the ReXVal reader, Kendall's tau-b and its interval.

The fixture (tests/evaluate/data/rexval) is in ReXVal's real layout with made-up reports and
counts; its README says where the layout was looked up.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

from radixpert.errors import ReaderError, UsageError
from radixpert.evaluate import raters, registry
from radixpert.evaluate.base import Metric, MetricResult
from radixpert.evaluate.raters import (
    RATINGS_FILE,
    REPORTS_FILE,
    against_raters,
    correlate,
    format_table,
    kendall_tau_b,
    read_rexval,
)
from radixpert.evaluate.stats import bootstrap_indices

DATA = Path(__file__).parent / "data" / "rexval"
CANDIDATES = ("radgraph", "bertscore", "s_emb", "bleu")


def direct_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b by counting all n(n-1)/2 pairs: (C - D) / sqrt((n0 - n1)(n0 - n2))."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        ties_x += dx == 0
        ties_y += dy == 0
        if dx * dy > 0:
            concordant += 1
        elif dx * dy < 0:
            discordant += 1
    n0 = len(x) * (len(x) - 1) // 2
    return (concordant - discordant) / math.sqrt((n0 - ties_x) * (n0 - ties_y))


def copy_fixture(tmp_path: Path) -> Path:
    for name in (REPORTS_FILE, RATINGS_FILE):
        shutil.copy(DATA / name, tmp_path / name)
    return tmp_path


def rewrite(path: Path, edit) -> None:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(edit(rows))


def result(name: str, scores: Sequence[float], higher_is_better: bool = True) -> MetricResult:
    return MetricResult(name, float(np.mean(scores)), list(scores), higher_is_better)


# --- the reader -------------------------------------------------------------------------------


def test_reads_the_rexval_layout():
    data = read_rexval(DATA)
    assert len(data.ids) == 20 and data.ids[:4] == [f"0_{c}" for c in CANDIDATES]
    assert data.raters == [str(r) for r in range(6)]
    assert data.categories == [str(c) for c in range(1, 7)]
    assert data.counts.shape == (20, 6, 2)
    with (DATA / REPORTS_FILE).open(newline="") as f:
        studies = list(csv.DictReader(f))
    # study_number is the 0-based row of the reports file, not its study_id
    assert data.study_ids[5] == studies[1]["study_id"]
    assert data.references[5] == studies[1]["gt_report"]
    assert data.candidates[5] == studies[1]["bertscore"]
    assert data.unrated == []


@pytest.mark.parametrize("variant", ["total", "significant", "insignificant"])
def test_radiologist_score_is_the_mean_over_raters(variant):
    # Recount from the CSV by hand: sum the pair's rows, divide by the six raters.
    keep = {"total": ("True", "False"), "significant": ("True",), "insignificant": ("False",)}
    sums: dict[str, float] = {}
    with (DATA / RATINGS_FILE).open(newline="") as f:
        for row in csv.DictReader(f):
            key = f"{row['study_number']}_{row['candidate_type']}"
            if row["clinically_significant"] in keep[variant]:
                sums[key] = sums.get(key, 0.0) + float(row["num_errors"])
            else:
                sums.setdefault(key, 0.0)
    data = read_rexval(DATA)
    expected = [sums[i] / 6 for i in data.ids]
    np.testing.assert_allclose(data.radiologist_errors(variant), expected, rtol=0, atol=1e-12)


def test_total_is_significant_plus_insignificant():
    data = read_rexval(DATA)
    np.testing.assert_allclose(
        data.radiologist_errors("total"),
        data.radiologist_errors("significant") + data.radiologist_errors("insignificant"),
    )
    # the candidate copying its reference (study 0, radgraph) has no errors
    assert data.radiologist_errors()[0] == 0
    with pytest.raises(UsageError, match="variant 'major'"):
        data.radiologist_errors("major")


@pytest.mark.parametrize("given", ["", REPORTS_FILE, RATINGS_FILE])
def test_reads_a_folder_or_either_file(given):
    assert read_rexval(DATA / given).ids == read_rexval(DATA).ids


def test_no_such_path(tmp_path):
    with pytest.raises(ReaderError, match="no such file or folder"):
        read_rexval(tmp_path / "absent")
    (tmp_path / REPORTS_FILE).write_text("study_id,gt_report,bleu\n")
    with pytest.raises(ReaderError, match=f"{RATINGS_FILE}: no such file"):
        read_rexval(tmp_path)


@pytest.mark.parametrize(
    ("file", "column"),
    [
        (REPORTS_FILE, "gt_report"),
        (RATINGS_FILE, "num_errors"),
        (RATINGS_FILE, "clinically_significant"),
        (RATINGS_FILE, "rater_index"),
    ],
)
def test_missing_column_names_file_and_column(tmp_path, file, column):
    folder = copy_fixture(tmp_path)

    def drop(rows):
        k = rows[0].index(column)
        return [r[:k] + r[k + 1 :] for r in rows]

    rewrite(folder / file, drop)
    with pytest.raises(ReaderError, match=rf"{file}: missing column '{column}'") as e:
        read_rexval(folder)
    assert str(folder / file) in str(e.value)


@pytest.mark.parametrize(
    ("line", "column", "value", "message"),
    [
        (2, 0, "50", "line 2: study_number 50 is not a row of"),
        (2, 0, "zero", "line 2: study_number 'zero' is not an integer"),
        (3, 1, "chexbert", "line 3: candidate_type 'chexbert' is not a candidate column"),
        (4, 4, "maybe", "line 4: clinically_significant 'maybe' is not True/False"),
        (5, 5, "-1", "line 5: num_errors '-1' is not a count"),
        (5, 5, "", "line 5: num_errors '' is not a count"),
    ],
)
def test_bad_rating_rows_name_the_line(tmp_path, line, column, value, message):
    folder = copy_fixture(tmp_path)

    def edit(rows):
        rows[line - 1][column] = value
        return rows

    rewrite(folder / RATINGS_FILE, edit)
    with pytest.raises(ReaderError, match=message):
        read_rexval(folder)


def test_a_missing_or_repeated_count_is_an_error_not_a_zero(tmp_path):
    folder = copy_fixture(tmp_path)
    rewrite(folder / RATINGS_FILE, lambda rows: rows[:100] + rows[101:])  # drop line 101
    with pytest.raises(ReaderError, match="no row for study_number 0"):
        read_rexval(folder)
    shutil.copy(DATA / RATINGS_FILE, folder / RATINGS_FILE)
    rewrite(folder / RATINGS_FILE, lambda rows: [*rows, rows[1]])
    with pytest.raises(ReaderError, match="a second row for study_number 0"):
        read_rexval(folder)


def test_unrated_candidates_are_counted(tmp_path):
    folder = copy_fixture(tmp_path)
    rewrite(folder / RATINGS_FILE, lambda rows: [r for r in rows if r[0] != "4"])
    data = read_rexval(folder)
    assert len(data.ids) == 16
    assert data.unrated == [f"4_{c}" for c in CANDIDATES]


# --- Kendall's tau-b --------------------------------------------------------------------------


def test_tau_b_pinned_by_hand():
    # Pairs of (x, y) = (1,1) (2,3) (3,2) (3,2): 3 concordant, 2 discordant, and the last pair
    # tied in both, so tau-b = (3 - 2) / sqrt((6 - 1) * (6 - 1)) = 0.2.
    tau, p = kendall_tau_b([1, 2, 3, 3], [1, 3, 2, 2])
    assert tau == pytest.approx(0.2, abs=1e-12)
    assert direct_tau_b([1, 2, 3, 3], [1, 3, 2, 2]) == pytest.approx(0.2, abs=1e-12)
    assert 0 < p < 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tau_b_matches_scipy_and_a_direct_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, 40).astype(float)  # many ties on both sides
    y = np.round(x / 2 + rng.integers(0, 3, 40))
    tau, p = kendall_tau_b(x, y)
    ref = kendalltau(x, y, variant="b")
    assert tau == ref.statistic and p == ref.pvalue
    assert tau == pytest.approx(direct_tau_b(x, y), abs=1e-12)


def test_constant_side_has_no_tau():
    tau, p = kendall_tau_b([1, 1, 1], [1, 2, 3])
    assert math.isnan(tau) and math.isnan(p)


# --- the sign and the interval ----------------------------------------------------------------


def test_sign_perfect_metrics_give_plus_one():
    errors = np.array([0, 0.5, 0.5, 1, 2, 3, 3, 4.5])  # with ties
    ids, studies = [str(i) for i in range(8)], list(range(8))
    # a higher-is-better score that falls exactly as errors rise
    good = correlate(result("good", -errors), errors, ids, studies, bootstrap=50)
    assert good.tau == pytest.approx(1.0) and good.raw_tau == pytest.approx(-1.0)
    # an error-like score (lower is better, as RadCliQ) that rises with the errors
    err = correlate(result("err", errors * 2 + 1, False), errors, ids, studies, bootstrap=50)
    assert err.tau == pytest.approx(1.0) and err.raw_tau == pytest.approx(1.0)
    # a higher-is-better score that rises with the errors is as wrong as can be
    bad = correlate(result("bad", errors), errors, ids, studies, bootstrap=50)
    assert bad.tau == pytest.approx(-1.0)
    assert good.ci_low == pytest.approx(1.0) and good.ci_high == pytest.approx(1.0)


def test_interval_is_the_percentile_interval_of_resampled_pairs():
    rng = np.random.default_rng(7)
    errors = rng.integers(0, 6, 60).astype(float)
    scores = -errors + rng.normal(0, 2, 60)
    ids, studies = [str(i) for i in range(60)], list(range(60))
    c = correlate(result("m", scores), errors, ids, studies, bootstrap=400, seed=3)
    # the same resamples, drawn and scored here
    reps = [
        -kendalltau(scores[row], errors[row], variant="b").statistic
        for row in bootstrap_indices(60, 400, 3)
    ]
    lo, hi = np.quantile(reps, [0.025, 0.975])
    assert (c.ci_low, c.ci_high) == pytest.approx((lo, hi), abs=1e-12)
    assert c.ci_low < c.tau < c.ci_high
    assert c.degenerate_resamples == 0
    again = correlate(result("m", scores), errors, ids, studies, bootstrap=400, seed=3)
    assert (again.ci_low, again.ci_high) == (c.ci_low, c.ci_high)


def test_interval_narrows_with_more_pairs():
    rng = np.random.default_rng(11)
    widths = []
    for n in (30, 300):
        errors = rng.integers(0, 8, n).astype(float)
        scores = -errors + rng.normal(0, 3, n)
        c = correlate(result("m", scores), errors, [str(i) for i in range(n)], list(range(n)))
        assert c.ci_low <= c.tau <= c.ci_high
        widths.append(c.ci_high - c.ci_low)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(10) as wide


def test_studies_resample_whole_studies():
    groups = np.repeat([3, 1, 2], [2, 3, 1])  # studies of 2, 3 and 1 pairs
    members = [np.flatnonzero(groups == g) for g in (1, 2, 3)]
    rows = list(raters._resample_rows(groups, 50, 0))
    assert len(rows) == 50
    for row in rows:
        counts = np.bincount(row, minlength=groups.size)
        for m in members:  # a study comes whole, any number of times
            assert len(set(counts[m])) == 1
        assert sum(counts[m[0]] for m in members) == 3  # three studies drawn
    assert len({tuple(r) for r in rows}) > 1


def test_non_finite_scores_are_left_out_and_listed():
    errors = np.arange(6, dtype=float)
    scores = [5, 4, math.nan, 2, 1, 0]
    c = correlate(result("m", scores), errors, list("abcdef"), list(range(6)), bootstrap=0)
    assert c.excluded == ["c"] and c.n == 5 and c.tau == pytest.approx(1.0)
    assert math.isnan(c.ci_low)


# --- the whole analysis -----------------------------------------------------------------------


class OracleErrors(Metric):
    """Scores a pair with the radiologists' mean error count: lower is better, tau = +1."""

    name = "oracle-errors"
    higher_is_better = False

    def compute(self, references, candidates):
        data = read_rexval(DATA)
        lookup = dict(zip(zip(data.references, data.candidates), data.radiologist_errors()))
        scores = [lookup[p] for p in zip(references, candidates)]
        return MetricResult(self.name, float(np.mean(scores)), scores, False)


class OracleQuality(OracleErrors):
    """The negated error count, higher is better: tau = +1, raw tau = -1."""

    name = "oracle-quality"

    def compute(self, references, candidates):
        r = super().compute(references, candidates)
        scores = [-s for s in r.per_sample]
        return MetricResult(self.name, float(np.mean(scores)), scores, True)


@pytest.fixture
def oracles(monkeypatch):
    for name in ("OracleErrors", "OracleQuality"):
        monkeypatch.setitem(
            registry.REGISTRY,
            name.lower(),
            registry.Entry(f"{__name__}:{name}", "test", "perfect by construction"),
        )


def test_perfect_metrics_through_the_registry(oracles):
    res = against_raters(DATA, ["oracleerrors", "oraclequality"], bootstrap=100)
    assert res["metrics"]["oracle-errors"]["tau"] == pytest.approx(1.0)
    assert res["metrics"]["oracle-errors"]["raw_tau"] == pytest.approx(1.0)
    assert res["metrics"]["oracle-quality"]["tau"] == pytest.approx(1.0)
    assert res["metrics"]["oracle-quality"]["raw_tau"] == pytest.approx(-1.0)
    # ...and against the significant errors alone, no longer perfect
    sig = against_raters(DATA, ["oracleerrors"], bootstrap=0, variant="significant")
    assert sig["metrics"]["oracle-errors"]["tau"] < 1


def test_offline_metrics_against_the_fixture(tmp_path, capsys):
    res = against_raters(DATA, ["bleu-2-radcliq", "f1-chexpert", "rouge-l"], bootstrap=200)
    assert res["pairs"] == 20 and res["studies"] == 5
    assert {"bleu-2-radcliq", "rouge-l", "f1-chexpert-14-micro"} <= set(res["metrics"])
    errors = np.array(res["radiologist_errors"])
    for name, m in res["metrics"].items():
        raw = kendalltau(m["per_sample"], errors, variant="b")
        assert m["raw_tau"] == raw.statistic and m["p_value"] == raw.pvalue
        assert m["tau"] == -m["raw_tau"]  # all three are higher-is-better
        assert m["n"] == 20 and m["ci_low"] <= m["tau"] <= m["ci_high"], name
    # the lexical metrics follow the made-up errors
    assert res["metrics"]["rouge-l"]["tau"] > 0.3
    assert res["confidence"] == {
        "level": 0.95,
        "method": "bootstrap-percentile",
        "resample": "pairs",
        "resamples": 200,
        "seed": 0,
    }

    out = tmp_path / "sub" / "raters.json"
    assert raters.main(DATA, ["rouge-l"], out=out, bootstrap=50, quiet=True) == 0
    written = json.loads(out.read_text())
    assert written["metrics"]["rouge-l"]["tau"] == res["metrics"]["rouge-l"]["tau"]
    assert written["radiologist_score"]["variant"] == "total"
    table = capsys.readouterr().out
    assert "rouge-l" in table and "bootstrap percentile over pairs, 50 resamples" in table
    assert f"results: {out}" in table


def test_table_and_json_with_undefined_numbers(tmp_path):
    res = against_raters(DATA, ["rouge-l"], bootstrap=0)
    assert math.isnan(res["metrics"]["rouge-l"]["ci_low"])
    assert "[n/a, n/a]" in format_table(res)
    raters.main(DATA, ["rouge-l"], out=tmp_path / "r.json", bootstrap=0, quiet=True)
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and json.loads(text)["metrics"]["rouge-l"]["ci_low"] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bootstrap": -1}, "--bootstrap -1"),
        ({"seed": -1}, "--seed -1"),
        ({"resample": "patients"}, "resample 'patients'"),
        ({"variant": "major"}, "variant 'major'"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(UsageError, match=message):
        against_raters(DATA, ["rouge-l"], **kwargs)
