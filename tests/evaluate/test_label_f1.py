"""label_f1: parity with scikit-learn, bootstrap resampling, names, and per-report F1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radixpert.evaluate.clinical.label_f1 import binarise, label_f1_results, per_report_f1
from radixpert.vocab import OBSERVATIONS, OBSERVATIONS_5

VALUES = (1, 0, -1, None)
NAMES = [
    f"{n}-{avg}{suffix}" for suffix in ("", "-uneg") for n in (14, 5) for avg in ("micro", "macro")
]


def random_labels(rng: np.random.Generator, n: int, p_blank: float = 0.6) -> list[dict]:
    """Label dicts with many blanks, like real reports."""
    out = []
    for _ in range(n):
        row = {}
        for obs in OBSERVATIONS:
            if rng.random() < p_blank:
                row[obs] = None if rng.random() < 0.5 else np.nan  # both spellings of blank
            else:
                row[obs] = VALUES[rng.integers(0, 3)]
        out.append(row)
    return out


def by_name(result):
    return {r.name: r for r in result.flatten()}


def test_names_and_order():
    rng = np.random.default_rng(0)
    res = label_f1_results("f1-x", random_labels(rng, 5), random_labels(rng, 5), {"labeler": "t"})
    assert res.name == "f1-x-14-micro"
    assert [r.name for r in res.flatten()] == [f"f1-x-{n}" for n in NAMES]
    for r in res.flatten():
        assert r.higher_is_better and r.settings["labeler"] == "t"
        assert "binarisation" in r.settings and r.corpus_fn is not None
        assert r.extra == [] or r is res
    assert OBSERVATIONS_5 == (
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Pleural Effusion",
    )
    assert OBSERVATIONS[0] == "No Finding" and len(OBSERVATIONS) == 14


@pytest.mark.parametrize("seed", range(6))
def test_parity_with_sklearn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    refs, cands = random_labels(rng, n), random_labels(rng, n)
    if seed == 0:  # an all-blank corpus: sklearn's zero_division=0 everywhere
        refs = [{} for _ in range(n)]
        cands = [{} for _ in range(n)]
    got = by_name(label_f1_results("p", refs, cands, {}))
    for unc_pos, suffix in ((True, ""), (False, "-uneg")):
        for obs, n_obs in ((OBSERVATIONS, 14), (OBSERVATIONS_5, 5)):
            y_true = binarise(refs, obs, unc_pos).astype(int)
            y_pred = binarise(cands, obs, unc_pos).astype(int)
            for avg in ("micro", "macro"):
                want = metrics.f1_score(y_true, y_pred, average=avg, zero_division=0)
                r = got[f"p-{n_obs}-{avg}{suffix}"]
                assert math.isclose(r.aggregate, want, abs_tol=1e-12), (avg, suffix, n_obs)
            report = metrics.classification_report(
                y_true, y_pred, target_names=list(obs), output_dict=True, zero_division=0
            )
            for o in obs:
                d = r.detailed["per_observation"][o]
                assert math.isclose(d["f1"], report[o]["f1-score"], abs_tol=1e-12)
                assert math.isclose(d["precision"], report[o]["precision"], abs_tol=1e-12)
                assert math.isclose(d["recall"], report[o]["recall"], abs_tol=1e-12)
                assert d["support"] == report[o]["support"]


def test_resample_identity_and_parity():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    refs, cands = random_labels(rng, 40), random_labels(rng, 40)
    res = label_f1_results("p", refs, cands, {})
    for r in res.flatten():
        assert math.isclose(r.corpus_fn(np.arange(40)), r.aggregate, abs_tol=1e-12)
    idx = rng.integers(0, 40, size=40)  # a bootstrap resample, with repeats
    got = by_name(res)
    for unc_pos, suffix in ((True, ""), (False, "-uneg")):
        for obs, n_obs in ((OBSERVATIONS, 14), (OBSERVATIONS_5, 5)):
            y_true = binarise([refs[i] for i in idx], obs, unc_pos).astype(int)
            y_pred = binarise([cands[i] for i in idx], obs, unc_pos).astype(int)
            for avg in ("micro", "macro"):
                want = metrics.f1_score(y_true, y_pred, average=avg, zero_division=0)
                assert math.isclose(
                    got[f"p-{n_obs}-{avg}{suffix}"].corpus_fn(idx), want, abs_tol=1e-12
                )


def test_uncertain_binarisation():
    refs = [{"Edema": -1}, {"Edema": 1}]
    cands = [{"Edema": -1}, {"Edema": 0}]
    got = by_name(label_f1_results("p", refs, cands, {}))
    # uncertain as positive: report 1 agrees on Edema; report 2 misses it
    assert got["p-5-micro"].aggregate == pytest.approx(2 * 1 / (2 + 1))
    assert got["p-5-micro"].per_sample == [1.0, 0.0]
    # uncertain as negative: report 1 has nothing on either side (1.0); report 2 misses Edema
    assert got["p-5-micro-uneg"].aggregate == 0.0
    assert got["p-5-micro-uneg"].per_sample == [1.0, 0.0]


def test_per_report_f1_definition():
    t = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    p = np.array([[1, 0, 1], [0, 0, 0], [0, 0, 0], [0, 1, 0]], dtype=bool)
    assert per_report_f1(t, p).tolist() == [0.5, 1.0, 0.0, 0.0]


def test_mismatch_and_bad_values():
    with pytest.raises(ValueError, match="2 references but 1 candidates"):
        label_f1_results("p", [{}, {}], [{}], {})
    with pytest.raises(ValueError, match="not 1, 0, -1 or None"):
        label_f1_results("p", [{"Edema": 2}], [{}], {})


def test_empty_corpus():
    res = label_f1_results("p", [], [], {})
    assert all(math.isnan(r.aggregate) and r.per_sample == [] for r in res.flatten())


def test_f1_chexpert_metric():
    from radixpert.evaluate import registry

    # the shared CLI options (device, batch size, ...) are offered to every metric
    metric = registry.create("f1-chexpert", device="cpu", batch_size=4)
    assert metric.check() is None
    refs = ["Small left pleural effusion. Mild cardiomegaly.", "No acute disease.", "Normal."]
    cands = ["Left pleural effusion.", "No acute cardiopulmonary process.", "Pneumothorax."]
    res = metric.compute(refs, cands)
    assert res.name == "f1-chexpert-14-micro"
    assert [r.name for r in res.flatten()] == [f"f1-chexpert-{n}" for n in NAMES]
    assert "not CheXbert" in res.settings["labeler"]
    assert "radixpert" in res.versions
    # per report: {effusion, cardiomegaly} vs {effusion}; no finding = no finding;
    # no finding vs pneumothorax
    assert res.per_sample == pytest.approx([2 / 3, 1.0, 0.0])
    with pytest.raises(ValueError, match="1 references but 2 candidates"):
        metric.compute(["a"], ["b", "c"])
