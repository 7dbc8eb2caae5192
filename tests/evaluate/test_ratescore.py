"""RaTEScore through the RaTEScore package, on tiny random models of the real architectures.

The NER model is a DeBERTa-v2 token classifier with RaTE-NER-DeBERTa's label set (the
order of the model card's `ner_labels`, Angelakeke/RaTE-NER-Deberta README, commit
41458cd); the embedding model is an MPNet, the architecture of BioLORD-2023(-C). Both are
saved with their tokenizers to temporary folders and loaded by the package's own
`RaTEScore` constructor through `RaTEScoreMetric`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("RaTEScore")
pytest.importorskip("medspacy")

from radixpert.errors import MetricUnavailable
from radixpert.evaluate import registry
from radixpert.evaluate.clinical import ratescore as rs
from tests.evaluate.tiny_models import WORDS

NER_LABELS = [
    "B-ABNORMALITY",
    "I-ABNORMALITY",
    "B-NON-ABNORMALITY",
    "I-NON-ABNORMALITY",
    "B-DISEASE",
    "I-DISEASE",
    "B-NON-DISEASE",
    "I-NON-DISEASE",
    "B-ANATOMY",
    "I-ANATOMY",
    "O",
]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def build_tiny_ner(folder: Path, seed: int = 0) -> Path:
    """A DeBERTa-v2 token classifier (hidden 16) with a small unigram tokenizer."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForTokenClassification, DebertaV2Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = [(t, 0.0) for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")]
    vocab += [(f"▁{w}", -1.0) for w in WORDS] + [("▁", -2.0)]
    vocab += [(c, -5.0) for c in LETTERS + LETTERS.upper() + ".,:;-"]
    tokenizer = DebertaV2Tokenizer(vocab=vocab, unk_id=3)
    tokenizer.save_pretrained(folder)
    config = DebertaV2Config(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=32,
        pos_att_type=["p2c", "c2p"],
        pad_token_id=0,
        id2label=dict(enumerate(NER_LABELS)),
        label2id={label: i for i, label in enumerate(NER_LABELS)},
    )
    torch.manual_seed(seed)
    DebertaV2ForTokenClassification(config).save_pretrained(folder)
    return folder


def build_tiny_embedder(folder: Path, seed: int = 0) -> Path:
    """An MPNet (hidden 16) with a WordPiece vocabulary, as BioLORD-2023 ships."""
    import torch
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "[UNK]", "<mask>", *WORDS]
    vocab += list(LETTERS + ".,:;-") + [f"##{c}" for c in LETTERS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    MPNetTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = MPNetConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=64,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    MPNetModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ratescore")
    return {"ner": build_tiny_ner(root / "ner"), "emb": build_tiny_embedder(root / "emb")}


def metric(tiny, **kw) -> rs.RaTEScoreMetric:
    return rs.RaTEScoreMetric(
        ner_model_dir=tiny["ner"], embedding_model_dir=tiny["emb"], device="cpu", **kw
    )


REFS = [
    "No acute cardiopulmonary process.",
    "Small left pleural effusion. Lungs are clear.",
    "Heart size is normal. No edema.",
]
CANDS = [
    "No acute process. Heart size normal.",
    "Mild edema at the bases, right pleural effusion.",
    "There is a small opacity at the left lung base.",
]


@pytest.mark.slow
def test_agrees_with_the_package_compute_score(tiny):
    from RaTEScore import RaTEScore

    res = metric(tiny, batch_size=2).compute(REFS, CANDS)
    package = RaTEScore(
        bert_model=str(tiny["ner"]), eval_model=str(tiny["emb"]), batch_size=1, use_gpu=False
    )
    expected = package.compute_score(CANDS, REFS)
    assert res.per_sample == pytest.approx(expected, rel=1e-5)
    assert res.aggregate == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert res.name == "ratescore"
    assert res.detailed["mean_entities_reference"] > 0, "random tags should yield entities"
    assert res.settings["affinity_matrix"].startswith("long")
    assert res.settings["ner_model"] == "ner" and len(res.settings["ner_weights_sha256"]) == 16
    assert res.versions["RaTEScore"] == "0.6.0"


def test_reports_without_sentences_score_half_and_keep_alignment(tiny):
    m = metric(tiny)
    refs = ["", "Heart size is normal. No edema.", "ok", REFS[1]]
    cands = ["Left lung opacity.", CANDS[2], "   ", CANDS[1]]
    res = m.compute(refs, cands)
    assert res.per_sample[0] == 0.5 and res.per_sample[2] == 0.5
    assert math.isnan(res.per_sample_detailed["precision"][0])
    assert res.detailed["n_texts_without_sentences"] == 3  # "", "ok", "   "
    assert res.detailed["n_pairs_without_entities"] >= 2
    # The pairs after an empty report score as they do on their own.
    alone = m.compute([refs[1], refs[3]], [cands[1], cands[3]])
    assert [res.per_sample[1], res.per_sample[3]] == pytest.approx(alone.per_sample)


def test_ner_is_cached_per_text(tiny, monkeypatch):
    import RaTEScore.score

    texts = ["Right pleural effusion.", "No acute process at the bases."]
    first = metric(tiny).compute(texts, texts[::-1])

    def fail(*args, **kwargs):
        raise AssertionError("NER should come from the cache")

    monkeypatch.setattr(RaTEScore.score, "run_ner", fail)
    second = metric(tiny).compute(texts, texts[::-1])
    assert second.per_sample == pytest.approx(first.per_sample)
    # Identical reports: every entity finds itself (similarity 1, same type): score 1.
    same = metric(tiny).compute(texts, texts)
    for score, n in zip(same.per_sample, same.per_sample_detailed["entities_reference"]):
        assert score == pytest.approx(1.0 if n else 0.5)


def test_short_matrix_and_registry(tiny):
    m = registry.create(
        "ratescore",
        ner_model_dir=tiny["ner"],
        embedding_model_dir=tiny["emb"],
        affinity_matrix="short",
        device="cpu",
        model_dir="ignored",
    )
    res = m.compute(REFS, CANDS)
    assert res.settings["affinity_matrix"].startswith("short")
    assert all(0.0 <= x <= 1.0 for x in res.per_sample)
    with pytest.raises(ValueError):
        rs.RaTEScoreMetric(affinity_matrix="medium")


def test_missing_weights(tmp_path):
    m = rs.RaTEScoreMetric(ner_model_dir=tmp_path / "a", embedding_model_dir=tmp_path / "b")
    reason = m.check()
    assert "rate-ner-deberta" in reason and "radixpert weights pull rate-ner-deberta" in reason
    with pytest.raises(MetricUnavailable):
        m.compute(["a"], ["b"])
