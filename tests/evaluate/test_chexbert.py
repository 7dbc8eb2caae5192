"""CheXbert, F1-CheXbert and SembScore on a tiny random CheXbert saved as chexbert.pth.

The checkpoint is written with the original layout ("module." keys under
"model_state_dict") by code independent of the library, then loaded by the library.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from radixpert import weights
from radixpert.evaluate import registry
from radixpert.evaluate.clinical import chexbert as cb
from tests.evaluate.tiny_models import (
    build_tiny_bert_base,
    build_tiny_chexbert,
    chexbert_state_dict,
)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

REFS = [
    "No acute cardiopulmonary process.",
    "There is a small left pleural effusion.",
    "Heart size is normal.\n\nLungs are clear.",
    "",
]
CANDS = [
    "No acute process.",
    "Small left effusion.",
    "Heart  size is normal. Lungs are clear.",
    "Mild cardiomegaly with pulmonary edema.",
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_tiny_bert_base(tmp_path_factory.mktemp("bert-base-uncased"))


@pytest.fixture(scope="module")
def chexbert_dir(tmp_path_factory, bert_dir):
    return build_tiny_chexbert(tmp_path_factory.mktemp("chexbert"), bert_dir)


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIXPERT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _reference_forward(bert_dir, chexbert_dir, texts):
    """Labels and [CLS] vectors computed without the library: one report at a time."""
    from transformers import BertConfig, BertModel, BertTokenizer

    state = torch.load(chexbert_dir / "chexbert.pth", weights_only=True)["model_state_dict"]
    state = {k[len("module.") :]: v for k, v in state.items()}
    bert = BertModel(BertConfig.from_pretrained(bert_dir)).eval()
    bert.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("bert.")})
    tok = BertTokenizer.from_pretrained(bert_dir)
    classes, vectors = [], []
    with torch.no_grad():
        for text in texts:
            text = " ".join(text.split())
            ids = tok(text, truncation=True, max_length=512)["input_ids"]
            cls = bert(torch.tensor([ids]))[0][0, 0]
            heads = [
                state[f"linear_heads.{i}.weight"] @ cls + state[f"linear_heads.{i}.bias"]
                for i in range(14)
            ]
            classes.append([int(h.argmax()) for h in heads])
            vectors.append(cls.numpy())
    return classes, vectors


def test_state_dict_layout_round_trips_strictly(bert_dir, chexbert_dir):
    from transformers import BertConfig

    model = cb.build_labeler(BertConfig.from_pretrained(bert_dir))
    cb.load_checkpoint(model, chexbert_dir / "chexbert.pth")
    saved = torch.load(chexbert_dir / "chexbert.pth", weights_only=True)["model_state_dict"]
    ours = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert set(ours) == set(saved)
    assert all(torch.equal(ours[k], saved[k]) for k in saved)
    hidden = model.bert.config.hidden_size
    for i in range(13):
        assert saved[f"module.linear_heads.{i}.weight"].shape == (4, hidden)
    assert saved["module.linear_heads.13.weight"].shape == (2, hidden)
    # names as in the original checkpoint (transformers 2.x BERT naming)
    for name in (
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
        "bert.encoder.layer.1.output.LayerNorm.bias",
        "bert.pooler.dense.weight",
        "linear_heads.13.bias",
    ):
        assert f"module.{name}" in ours


def test_checkpoint_errors_name_the_keys(bert_dir, tmp_path):
    from transformers import BertConfig

    config = BertConfig.from_pretrained(bert_dir)
    state = chexbert_state_dict(bert_dir)
    state["module.extra_head.weight"] = torch.zeros(1)
    del state["module.linear_heads.13.bias"]
    torch.save({"model_state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        cb.load_checkpoint(cb.build_labeler(config), tmp_path / "bad.pth")
    assert "linear_heads.13.bias" in str(err.value) and "extra_head.weight" in str(err.value)

    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="model_state_dict"):
        cb.load_checkpoint(cb.build_labeler(config), tmp_path / "other.pth")

    # transformers 3.x wrote the position_ids buffer; it is accepted when it is 0..n-1
    state = chexbert_state_dict(bert_dir)
    n = config.max_position_embeddings
    state["module.bert.embeddings.position_ids"] = torch.arange(n).expand((1, -1))
    torch.save({"model_state_dict": state}, tmp_path / "old.pth")
    cb.load_checkpoint(cb.build_labeler(config), tmp_path / "old.pth")
    state["module.bert.embeddings.position_ids"] = torch.zeros((1, n), dtype=torch.long)
    torch.save({"model_state_dict": state}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="position_ids"):
        cb.load_checkpoint(cb.build_labeler(config), tmp_path / "odd.pth")


def test_tokenisation_as_the_original(bert_dir):
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(bert_dir)
    assert cb.clean_report("  Heart size\n\nis   normal.\t") == "Heart size is normal."
    assert cb.token_ids(tok, "") == [tok.cls_token_id, tok.sep_token_id]
    for text in ("Heart size is normal.", "effusion " * 700):
        ids = cb.token_ids(tok, cb.clean_report(text))
        assert ids == tok(text, truncation=True, max_length=512)["input_ids"]
    long = cb.token_ids(tok, "effusion " * 700)
    assert len(long) == 512 and long[-1] == tok.sep_token_id


def test_label_values_follow_label_py():
    values = cb.labels_to_values([0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    assert list(values) == list(cb.CONDITIONS)
    assert values["Enlarged Cardiomediastinum"] is None
    assert (values["Cardiomegaly"], values["Lung Opacity"], values["Lung Lesion"]) == (1, 0, -1)
    assert values["No Finding"] == 1
    with pytest.raises(ValueError):
        cb.labels_to_values([0] * 13)


@pytest.mark.slow
def test_labels_and_semb_match_a_plain_forward_pass(bert_dir, chexbert_dir, fresh_home):
    classes, vectors = _reference_forward(bert_dir, chexbert_dir, REFS + CANDS)
    labeler = cb.CheXbertF1(chexbert_dir=chexbert_dir, bert_dir=bert_dir, batch_size=3)
    assert labeler.label(REFS + CANDS) == [cb.labels_to_values(c) for c in classes]
    assert len({tuple(c) for c in classes}) > 1  # the tiny model does tell texts apart

    semb = registry.create("semb-score", chexbert_dir=chexbert_dir, bert_dir=bert_dir)
    result = semb.compute(REFS, CANDS)
    expected = [
        float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        for a, b in zip(vectors[: len(REFS)], vectors[len(REFS) :])
    ]
    assert result.name == "semb-score" and result.higher_is_better
    assert result.per_sample == pytest.approx(expected, abs=1e-5)
    assert result.per_sample[2] == pytest.approx(1.0)  # same text up to whitespace
    assert result.aggregate == pytest.approx(np.mean(expected), abs=1e-5)
    assert len(result.settings["checkpoint_sha256"]) == 64


@pytest.mark.slow
def test_cached_and_uncached_runs_are_identical(bert_dir, chexbert_dir, fresh_home, monkeypatch):
    kw = {"chexbert_dir": chexbert_dir, "bert_dir": bert_dir, "batch_size": 2}
    uncached = cb.SembScore(cache=False, **kw).compute(REFS, CANDS)
    labels_uncached = cb.CheXbertF1(cache=False, **kw).label(REFS + CANDS)
    first = cb.SembScore(**kw).compute(REFS, CANDS)  # fills the cache

    def fail(self, texts):
        raise AssertionError(f"encoded again: {texts}")

    monkeypatch.setattr(cb.CheXbertEncoder, "_run", fail)
    # the other metric, and a later run, read every text from the cache
    assert cb.CheXbertF1(**kw).label(REFS + CANDS) == labels_uncached
    second = cb.SembScore(**kw).compute(REFS, CANDS)
    assert uncached.per_sample == first.per_sample == second.per_sample
    with pytest.raises(AssertionError, match="encoded again"):
        cb.SembScore(cache=False, **kw).compute(REFS, CANDS)


@pytest.mark.slow
def test_batching_does_not_change_outputs(bert_dir, chexbert_dir, fresh_home):
    texts = REFS + CANDS
    one = cb.CheXbertEncoder(chexbert_dir, bert_dir, batch_size=1).encode(texts, cache=False)
    many = cb.CheXbertEncoder(chexbert_dir, bert_dir, batch_size=8).encode(texts, cache=False)
    assert np.array_equal(one.classes, many.classes)
    np.testing.assert_allclose(one.cls, many.cls, atol=1e-5)


def test_f1_passes_labels_to_label_f1(bert_dir, chexbert_dir, fresh_home, monkeypatch):
    label_f1 = pytest.importorskip("radixpert.evaluate.clinical.label_f1")
    seen = {}
    real = label_f1.label_f1_results

    def spy(prefix, references, candidates, settings):
        seen.update(prefix=prefix, refs=references, cands=candidates, settings=settings)
        return real(prefix, references, candidates, settings)

    monkeypatch.setattr(label_f1, "label_f1_results", spy)
    metric = registry.create("chexbert", chexbert_dir=chexbert_dir, bert_dir=bert_dir)
    result = metric.compute(REFS, CANDS)
    labels = metric.label(REFS + CANDS)
    assert seen["prefix"] == "f1-chexbert"
    assert seen["refs"] == labels[: len(REFS)] and seen["cands"] == labels[len(REFS) :]
    assert seen["settings"]["checkpoint_sha256"] == result.settings["checkpoint_sha256"]
    for r in result.flatten():
        assert len(r.per_sample) == len(REFS)
        assert r.name.startswith("f1-chexbert") and math.isfinite(r.aggregate)


def test_missing_weights(tmp_path, bert_dir, fresh_home):
    metric = cb.SembScore(chexbert_dir=tmp_path / "none", bert_dir=bert_dir)
    assert "chexbert.pth" in metric.check()
    with pytest.raises(weights.WeightsMissing, match="radixpert weights pull chexbert"):
        metric.compute(["a"], ["b"])
    metric = cb.CheXbertF1(chexbert_dir=tmp_path / "none", bert_dir=tmp_path / "none")
    assert "radixpert weights pull bert-base-uncased" in metric.check()
    with pytest.raises(ValueError, match="1 references but 2 candidates"):
        cb.SembScore(chexbert_dir=tmp_path, bert_dir=bert_dir).compute(["a"], ["b", "c"])


def test_head_order_is_chexberts():
    # CheXbert src/constants.py CONDITIONS: the order of the 14 heads in chexbert.pth
    assert cb.CONDITIONS == (
        "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
        "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
        "Pleural Other", "Fracture", "Support Devices", "No Finding",
    )  # fmt: skip
