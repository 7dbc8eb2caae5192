"""RadCliQ-v1: the formula against hand-worked values, the 1/mean display, the plumbing."""

from __future__ import annotations

import importlib.machinery
import json
import math
import sys
import types
from importlib import resources

import numpy as np
import pytest

from radixpert.evaluate import registry
from radixpert.evaluate.base import Metric, MetricResult
from radixpert.evaluate.clinical import radcliq

MEAN = [0.5379231241355762, 0.6175725628125001, 0.7647942121140658, 0.44738335396242174]
SCALE = [0.3028258411486429, 0.22430938459304575, 0.2539439110169773, 0.2989271671041838]
COEF = [-0.37708368261038905, -0.37030009974480316, -0.25261621789593225, 4.315048405024756e-12]
INTERCEPT = 2.466552561323256e-10


def test_shipped_constants_are_the_reference_ones():
    c = radcliq.constants()
    assert (c["scaler_mean"], c["scaler_scale"], c["coefficients"]) == (MEAN, SCALE, COEF)
    assert c["intercept"] == INTERCEPT
    shipped = json.loads(
        resources.files("radixpert.evaluate").joinpath("data/radcliq_v1.json").read_text()
    )
    assert shipped["features"] == list(radcliq.FEATURES)


def test_formula_against_hand_worked_rows():
    c = radcliq.constants()["check_values"]
    rows = np.array(
        [
            [1.0, 1.0, 1.0, 1.0],
            [0.0, 0.0, 0.0, 0.0],
            MEAN,  # every feature at the scaler mean: only the intercept is left
            [MEAN[0] + SCALE[0], MEAN[1], MEAN[2], MEAN[3]],  # one SD up in RadGraph
            [MEAN[0], MEAN[1] + 2 * SCALE[1], MEAN[2] - SCALE[2], MEAN[3]],
            [MEAN[0], MEAN[1], MEAN[2], MEAN[3] + 100 * SCALE[3]],  # BLEU barely counts
        ]
    )
    expected = [
        c["all four features 1.0"],
        c["all four features 0.0"],
        INTERCEPT,
        -0.37708368261038905 + INTERCEPT,
        2 * -0.37030009974480316 - -0.25261621789593225 + INTERCEPT,
        100 * 4.315048405024756e-12 + INTERCEPT,
    ]
    got = radcliq.radcliq_v1(rows)
    assert got[:2] == pytest.approx(expected[:2], abs=5e-5)  # check values have 4 decimals
    assert got[2:] == pytest.approx(expected[2:], abs=1e-12)
    assert got[4] == pytest.approx(-0.4879839813470187, abs=1e-12)  # -0.74060 + 0.25262
    # term by term, as written in the json's formula
    x = rows[3]
    by_hand = sum(COEF[k] * (x[k] - MEAN[k]) / SCALE[k] for k in range(4)) + INTERCEPT
    assert got[3] == pytest.approx(by_hand, abs=1e-12)
    with pytest.raises(ValueError, match="shape"):
        radcliq.radcliq_v1(np.zeros((2, 3)))


def test_display_is_the_inverse_mean_and_never_divides_by_a_non_positive_mean():
    assert radcliq.display_value(0.5) == 2.0
    assert radcliq.display_value(0.0) is None
    assert radcliq.display_value(-1.44) is None
    assert radcliq.display_value(math.nan) is None


class _Fixed(Metric):
    """A sub-metric that returns given per-sample scores and remembers its options."""

    made: dict[str, dict] = {}  # noqa: RUF012 - test bookkeeping
    scores: dict[str, list[float]] = {}  # noqa: RUF012

    def __init__(self, which: str, **options):
        self.which = which
        _Fixed.made[which] = options

    def compute(self, references, candidates):
        s = _Fixed.scores[self.which]
        return MetricResult(self.which, float(np.mean(s)), s, settings={"which": self.which})


@pytest.fixture
def fake_bleu(monkeypatch):
    """Stands in for radixpert.evaluate.lexical.sentence_bleu (written elsewhere)."""
    name = "radixpert.evaluate.lexical.sentence_bleu"
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.values = []
    module.bleu2_radcliq = lambda refs, cands: list(module.values)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def _fake(monkeypatch, names):
    _Fixed.made, _Fixed.scores = {}, {}
    real_create = registry.create

    def create(name, **options):
        if name in names:
            return _Fixed(name, **options)
        return real_create(name, **options)

    monkeypatch.setattr(registry, "create", create)
    return _Fixed


@pytest.fixture
def fake_subs(monkeypatch):
    return _fake(monkeypatch, ("radgraph-f1", "bertscore", "semb-score"))


def test_plumbing_features_options_and_result(fake_subs, fake_bleu):
    fake_subs.scores = {
        "radgraph-f1": [1.0, 0.0, 0.5],
        "bertscore": [1.0, 0.0, 0.6],
        "semb-score": [1.0, 0.0, 0.7],
    }
    fake_bleu.values = [1.0, 0.0, 0.4]
    metric = registry.create(
        "radcliq-v1",
        device="cpu",
        batch_size=7,
        bertscore_model_dir="/w/roberta",
        chexbert_dir="/w/chexbert",
        bert_dir="/w/bert",
        radgraph_model_dir="/w/radgraph",
    )
    assert metric.check() is None
    result = metric.compute(["r1", "r2", "r3"], ["c1", "c2", "c3"])
    made = fake_subs.made
    assert made["bertscore"] == {
        "cache": True,
        "device": "cpu",
        "batch_size": 7,
        "model_dir": "/w/roberta",
    }
    assert made["semb-score"]["chexbert_dir"] == "/w/chexbert"
    assert made["semb-score"]["bert_dir"] == "/w/bert"
    assert made["radgraph-f1"]["model_dir"] == "/w/radgraph"

    rows = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [0.5, 0.6, 0.7, 0.4]], dtype=float)
    expected = radcliq.radcliq_v1(rows)
    assert result.name == "radcliq-v1" and result.higher_is_better is False
    assert result.per_sample == pytest.approx(expected.tolist())
    assert result.aggregate == pytest.approx(expected.mean())
    assert result.display == pytest.approx(1 / expected.mean())
    assert result.display_transform == "inverse"
    assert result.per_sample_detailed["bleu_score"] == [1.0, 0.0, 0.4]
    assert result.per_sample_detailed["radgraph"] == [1.0, 0.0, 0.5]
    assert result.detailed["semb_score"] == pytest.approx(np.mean([1.0, 0.0, 0.7]))
    assert "note" not in result.detailed
    assert result.settings["sub_metrics"]["bertscore"] == {"which": "bertscore"}


def test_non_positive_mean_has_no_display_and_a_note(fake_subs, fake_bleu):
    fake_subs.scores = {k: [1.0, 0.95] for k in ("radgraph-f1", "bertscore", "semb-score")}
    fake_bleu.values = [1.0, 0.9]
    result = radcliq.RadCliQV1().compute(["a", "b"], ["a", "b"])
    assert result.aggregate < 0
    assert result.display is None
    assert result.detailed["note"] == "mean <= 0: 1/mean is undefined; report the raw mean"


def test_options_that_cannot_work_are_refused(fake_subs, fake_bleu):
    # options that would change the definition never reach the sub-metrics
    metric = registry.create("radcliq-v1", idf=True, model_type="radgraph-xl", model_dir="/x")
    metric._sub_metric("radgraph")
    assert fake_subs.made["radgraph-f1"] == {"cache": True}
    fake_subs.scores = {k: [0.5] for k in ("radgraph-f1", "bertscore", "semb-score")}
    fake_bleu.values = [0.5, 0.5]  # one too many
    with pytest.raises(RuntimeError, match="bleu_score gave 2 scores for 1 pairs"):
        radcliq.RadCliQV1().compute(["a"], ["b"])


def test_check_names_missing_weights_of_sub_metrics(tmp_path, fake_bleu):
    reason = radcliq.RadCliQV1(bertscore_model_dir=tmp_path / "none").check()
    assert reason is not None and "radixpert weights pull distilroberta-base" in reason


@pytest.mark.slow
def test_with_tiny_bertscore_and_chexbert(tmp_path, monkeypatch, fake_bleu):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("bert_score")
    from radixpert.evaluate.clinical.chexbert import SembScore
    from radixpert.evaluate.semantic.bertscore import BertScore
    from tests.evaluate.tiny_models import (
        build_tiny_bert_base,
        build_tiny_chexbert,
        build_tiny_distilroberta,
    )

    monkeypatch.setenv("RADIXPERT_HOME", str(tmp_path / "home"))
    roberta = build_tiny_distilroberta(tmp_path / "distilroberta-base")
    bert = build_tiny_bert_base(tmp_path / "bert-base-uncased")
    chexbert = build_tiny_chexbert(tmp_path / "chexbert", bert)
    refs = ["No acute process.", "Small left pleural effusion.", "Heart size is normal."]
    cands = ["No acute process.", "Mild pulmonary edema.", "Heart size normal."]
    fake = _fake(monkeypatch, ("radgraph-f1",))
    fake.scores = {"radgraph-f1": [1.0, 0.2, 0.5]}
    fake_bleu.values = [1.0, 0.0, 0.3]
    result = radcliq.RadCliQV1(
        device="cpu",
        batch_size=2,
        bertscore_model_dir=roberta,
        chexbert_dir=chexbert,
        bert_dir=bert,
    ).compute(refs, cands)
    bert_f1 = BertScore(model_dir=roberta, cache=False).compute(refs, cands).per_sample
    semb = SembScore(chexbert_dir=chexbert, bert_dir=bert, cache=False).compute(refs, cands)
    assert result.per_sample_detailed["bertscore"] == pytest.approx(bert_f1, abs=1e-7)
    assert result.per_sample_detailed["semb_score"] == pytest.approx(semb.per_sample, abs=1e-7)
    x = np.column_stack([[1.0, 0.2, 0.5], bert_f1, semb.per_sample, [1.0, 0.0, 0.3]])
    assert result.per_sample == pytest.approx(radcliq.radcliq_v1(x).tolist(), abs=1e-6)
    assert fake.made["radgraph-f1"] == {"cache": True, "device": "cpu", "batch_size": 2}
    assert result.settings["sub_metrics"]["bertscore"]["num_layers"] == 5
