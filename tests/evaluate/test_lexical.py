"""Lexical metrics: parity with pycocoevalcap and NLTK, tokenisers, bootstrap hooks, edge cases."""

from __future__ import annotations

import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from radixpert.evaluate import registry
from radixpert.evaluate.lexical import _ngrams
from radixpert.evaluate.lexical import tokenize as tok
from radixpert.evaluate.lexical.bleu import CorpusBleu
from radixpert.evaluate.lexical.cider import CiderD
from radixpert.evaluate.lexical.rouge import RougeL, lcs_lengths, lcs_reference
from radixpert.evaluate.lexical.sentence_bleu import (
    RadCliQBleu2,
    bleu2_radcliq,
    radcliq_tokenize,
)

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="Java is not installed (no `java` on PATH)")
EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "radixpert" / "examples"

# Hand-written report pairs (reference, candidate), with the edge cases the metrics must
# survive: empty candidate, one word, identical pair, repeated words, a very long report.
HAND_PAIRS = [
    (
        "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
        "Heart size is normal. Lungs are clear without effusion or pneumothorax.",
    ),
    (
        "Moderate cardiomegaly. Small bilateral pleural effusions with bibasilar atelectasis.",
        "Mild cardiomegaly with small left pleural effusion.",
    ),
    (
        "Left-sided PICC line terminates in the lower SVC. No pneumothorax.",
        "Right-sided PICC line tip in the cavoatrial junction. No pneumothorax.",
    ),
    (
        "Patchy right lower lobe opacity concerning for pneumonia.",
        "Right lower lobe consolidation, likely pneumonia (clinical correlation recommended).",
    ),
    ("No acute cardiopulmonary process.", ""),
    ("No acute cardiopulmonary process.", "Normal."),
    ("Stable chest radiograph.", "Stable chest radiograph."),
    ("No effusion. No effusion. No pneumothorax.", "No no no no effusion effusion effusion."),
    (
        "ET tube 5 cm above the carina; NG tube below the diaphragm. 2.5cm nodule at the "
        "left apex, previously 1.5 cm.",
        "ET tube tip 4 cm above carina. Enteric tube in the stomach. Left apical nodule 2.5 cm.",
    ),
    (
        " ".join(
            ["The cardiomediastinal silhouette is within normal limits."] * 12
            + ["There is mild degenerative change of the thoracic spine."] * 10
        ),
        " ".join(
            ["The cardiomediastinal silhouette is normal."] * 9
            + ["Degenerative changes of the spine are noted."] * 14
        ),
    ),
    ("Heart size normal.No effusion.", "heart size normal. no effusion"),
    ("Findings: XXXX opacity, s/p CABG; can't exclude pneumonia.", "XXXX opacity s/p CABG."),
]


def _example_pairs() -> list[tuple[str, str]]:
    """Report pairs built from the shipped examples: whole reports and sentence pairs."""
    from radixpert.evaluate.io import pair_reports, read_reports

    if not (EXAMPLES / "references.json").is_file():
        return [(r, c) for r, c in HAND_PAIRS if c]
    pairs = pair_reports(
        read_reports(EXAMPLES / "references.json"), read_reports(EXAMPLES / "candidates.json")
    )
    refs, cands = list(pairs.references), list(pairs.candidates)
    out = list(zip(refs, cands))
    # More, shorter pairs: the i-th sentence of a reference against that of its candidate.
    for r, c in zip(refs, cands):
        rs = [s for s in re.split(r"(?<=\.)\s+", r) if s.strip()]
        cs = [s for s in re.split(r"(?<=\.)\s+", c) if s.strip()]
        out.extend(zip(rs, cs))
    return out


def _coco_scores(refs: list[str], cands: list[str]) -> dict[str, tuple[float, np.ndarray]]:
    """pycocoevalcap Bleu(4), Rouge and Cider on already tokenised, space-joined texts."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [c] for i, c in enumerate(cands)}
    bleu, bleu_ps = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu-{k + 1}": (bleu[k], np.asarray(bleu_ps[k])) for k in range(4)}
    rouge, rouge_ps = Rouge().compute_score(gts, res)
    cider, cider_ps = Cider().compute_score(gts, res)
    out["rouge-l"] = (float(rouge), np.asarray(rouge_ps))
    out["cider-d"] = (float(cider), np.asarray(cider_ps))
    return out


def _ours(refs: list[str], cands: list[str], tokenizer: str) -> dict[str, object]:
    results = {}
    for metric in (CorpusBleu(tokenizer=tokenizer), RougeL(tokenizer), CiderD(tokenizer)):
        for r in metric.compute(refs, cands).flatten():
            results[r.name] = r
    return results


def _assert_parity(refs: list[str], cands: list[str]) -> None:
    """Our metrics on raw text with "basic" == pycocoevalcap on the basic-tokenised text."""
    pytest.importorskip("pycocoevalcap")
    joined_r = [" ".join(t) for t in tok.tokenize(refs, "basic")]
    joined_c = [" ".join(t) for t in tok.tokenize(cands, "basic")]
    coco = _coco_scores(joined_r, joined_c)
    for tokenizer, (r_in, c_in) in {"basic": (refs, cands), "none": (joined_r, joined_c)}.items():
        ours = _ours(r_in, c_in, tokenizer)
        for name, (agg, per_sample) in coco.items():
            got = ours[name]
            assert got.aggregate == pytest.approx(agg, abs=1e-6, rel=0), (tokenizer, name)
            np.testing.assert_allclose(got.per_sample, per_sample, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------
# tokenisers
# ---------------------------------------------------------------------------------------

PINNED = {
    "The heart size is normal. No pleural effusion or pneumothorax.": (
        "the heart size is normal no pleural effusion or pneumothorax"
    ),
    "Left-sided PICC line tip in the SVC; ET tube 5 cm above the carina.": (
        "left-sided picc line tip in the svc et tube 5 cm above the carina"
    ),
    "1. Bibasilar atelectasis. 2. No focal consolidation (stable).": (
        "1 bibasilar atelectasis 2 no focal consolidation -lrb- stable -rrb-"
    ),
    "Nodule measures 2.5cm, previously 1.5 cm; see CT. Dr. Smith's note, e.g. AP/PA views.": (
        "nodule measures 2.5 cm previously 1.5 cm see ct. dr. smith 's note e.g. ap/pa views"
    ),
    "There's no change: 50% smaller, +/- 3 mm [comparison 01/02/2003].": (
        "there 's no change 50 % smaller + / 3 mm -lsb- comparison 01/02/2003 -rsb-"
    ),
    "Patient\u2019s \u201clungs\u201d clear \u2014 no edema\u2026": (
        "patient 's lungs clear no edema"
    ),
    "Heart size normal.No effusion. The lungs are clear": (
        "heart size normal.no effusion the lungs are clear"
    ),
    "XXXX opacity s/p CABG, can't exclude pneumonia.": (
        "xxxx opacity s/p cabg ca n't exclude pneumonia"
    ),
    "": "",
    "   \n ": "",
}


def test_basic_tokenizer_pinned():
    for text, expected in PINNED.items():
        assert tok.basic_tokenize(text) == expected.split(), text
    assert tok.tokenize(list(PINNED), "basic") == [v.split() for v in PINNED.values()]


def test_basic_tokenizer_is_idempotent_on_its_output():
    for text in PINNED:
        once = tok.basic_tokenize(text)
        assert tok.basic_tokenize(" ".join(once)) == once


def test_none_tokenizer_splits_on_whitespace_only():
    assert tok.tokenize(["A b,\tc.\nD", "", "  "], "none") == [["A", "b,", "c.", "D"], [], []]


def test_unknown_tokenizer():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tok.tokenize(["x"], "spacy")
    assert "unknown tokenizer" in CorpusBleu(tokenizer="spacy").check()


@pytest.mark.slow
@needs_java
def test_ptb_tokenizer_matches_pycocoevalcap_and_basic():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    texts = [t for t in PINNED if t.strip()] + [r for r, _ in HAND_PAIRS]
    ours = tok.tokenize(texts, "ptb")
    coco = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    assert ours == [coco[i][0].split() for i in range(len(texts))]
    # "basic" approximates PTB; on these report sentences it agrees exactly.
    assert ours == tok.tokenize(texts, "basic")
    # Blank texts never reach the jar and stay empty, wherever they are.
    assert tok.tokenize(["", "No effusion.", "  ", ""], "ptb") == [[], ["no", "effusion"], [], []]


@needs_java
def test_basic_agrees_with_ptb_on_example_reports():
    texts = [t for pair in _example_pairs()[:200] for t in pair]
    ptb = tok.tokenize(texts, "ptb")
    basic = tok.tokenize(texts, "basic")
    agree = sum(a == b for a, b in zip(ptb, basic)) / len(texts)
    assert agree >= 0.97


def test_ptb_check_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(tok.shutil, "which", lambda name: None)
    reason = tok.check_tokenizer("ptb")
    if tok._pycocoevalcap_dir() is not None:
        assert "Java" in reason
    monkeypatch.setattr(tok, "_pycocoevalcap_dir", lambda: None)
    assert "pycocoevalcap" in tok.check_tokenizer("ptb")
    with pytest.raises(RuntimeError, match="pycocoevalcap"):
        tok.tokenize(["x"], "ptb")


# ---------------------------------------------------------------------------------------
# BLEU, ROUGE-L, CIDEr-D against pycocoevalcap
# ---------------------------------------------------------------------------------------


def test_parity_with_pycocoevalcap_hand_written():
    _ngrams.clear_cache()
    refs, cands = zip(*HAND_PAIRS)
    _assert_parity(list(refs), list(cands))


def test_parity_with_pycocoevalcap_example_reports():
    _ngrams.clear_cache()
    pairs = _example_pairs()
    assert len(pairs) >= 200
    refs, cands = zip(*pairs)
    _assert_parity(list(refs), list(cands))


def test_empty_candidates_score_zero():
    refs = ["No acute process.", "Heart size normal.", ""]
    cands = ["", "   ", ""]
    for metric in (CorpusBleu(), RougeL(), CiderD(), RadCliQBleu2()):
        for r in metric.compute(refs, cands).flatten():
            assert r.per_sample == [0.0, 0.0, 0.0], r.name
            assert r.aggregate == 0.0, r.name


def test_rouge_both_empty_is_zero_unlike_pycocoevalcap():
    # pycocoevalcap splits "" into [""] and so scores an empty/empty pair 1.0; we score 0.
    assert RougeL().compute([""], [""]).per_sample == [0.0]


def test_no_pairs():
    for metric in (CorpusBleu(), RougeL(), CiderD(), RadCliQBleu2()):
        res = metric.compute([], [])
        assert res.per_sample == []


def test_mismatched_lengths():
    with pytest.raises(ValueError):
        CorpusBleu().compute(["a b"], ["a b", "c"])


def test_bleu_companions_settings_and_identity_bootstrap():
    refs, cands = zip(*_example_pairs()[:150])
    res = CorpusBleu().compute(list(refs), list(cands))
    names = [r.name for r in res.flatten()]
    assert names == ["bleu-4", "bleu-1", "bleu-2", "bleu-3"]
    idx = np.arange(len(refs))
    for r in res.flatten():
        assert r.corpus_fn is not None
        assert r.corpus_fn(idx) == pytest.approx(r.aggregate, abs=1e-15)
        assert r.settings["tokenizer"] == "basic"
        assert r.settings["tiny"] == 1e-15 and r.settings["small"] == 1e-9
    # A resample with repeats is the corpus BLEU of the repeated pairs.
    rng = np.random.default_rng(0)
    sample = rng.integers(0, len(refs), size=len(refs))
    direct = CorpusBleu().compute([refs[i] for i in sample], [cands[i] for i in sample])
    assert res.corpus_fn(sample) == pytest.approx(direct.aggregate, abs=1e-12)


def test_lcs_equals_dynamic_programme():
    rng = random.Random(0)
    vocab = ["no", "effusion", "the", "heart", "is", "normal", "left", "right", "a"]
    refs, cands = [], []
    for _ in range(300):
        refs.append(" ".join(rng.choices(vocab, k=rng.randint(0, 40))))
        cands.append(" ".join(rng.choices(vocab[: rng.randint(1, 9)], k=rng.randint(0, 40))))
    lcs, cand_len, _ = lcs_lengths(refs, cands, "none")
    want = [lcs_reference(c.split(), r.split()) for r, c in zip(refs, cands)]
    assert lcs.tolist() == want
    assert cand_len.tolist() == [len(c.split()) for c in cands]


def test_fallback_paths_give_identical_numbers(monkeypatch):
    """Small buckets, the argsort path (huge vocabularies) and id-list LCS agree."""
    pairs = _example_pairs()[:120]
    refs, cands = [list(x) for x in zip(*pairs)]
    _ngrams.clear_cache()
    base = _ours(refs, cands, "basic")
    enc = _ngrams.get_corpus(refs, cands, "basic", lambda t: tok.iter_tokenize(t)).enc
    default = _ngrams.ngram_stats(enc, 4, cider=True)
    for kwargs in ({"bucket_size": 7}, {"bucket_size": 1 << 30}):
        other = _ngrams.ngram_stats(enc, 4, cider=True, **kwargs)
        np.testing.assert_array_equal(other.correct, default.correct)
        np.testing.assert_allclose(other.cider, default.cider, atol=1e-12, rtol=0)
    monkeypatch.setattr(_ngrams, "_PACK_BITS", 8)
    monkeypatch.setattr(_ngrams, "_MAX_CODE_POINTS", 3)
    _ngrams.clear_cache()
    forced = _ours(refs, cands, "basic")
    for name, r in base.items():
        np.testing.assert_allclose(forced[name].per_sample, r.per_sample, atol=1e-12, rtol=0)


def test_metrics_share_the_cached_corpus():
    _ngrams.clear_cache()
    refs, cands = zip(*_example_pairs()[:50])
    a = _ngrams.get_corpus(refs, cands, "basic", lambda t: tok.iter_tokenize(t))
    b = _ngrams.get_corpus(list(refs), list(cands), "basic", lambda t: tok.iter_tokenize(t))
    assert a is b
    c = _ngrams.get_corpus(refs, cands, "none", lambda t: tok.iter_tokenize(t, "none"))
    assert c is not a
    _ngrams.clear_cache()


def test_registry_creates_lexical_metrics():
    for name in ("bleu", "rouge-l", "cider-d", "bleu-2-radcliq", "meteor"):
        metric = registry.create(name, tokenizer="none", batch_size=8)
        assert metric.name == name
        if name != "bleu-2-radcliq":
            assert metric.tokenizer == "none"


# ---------------------------------------------------------------------------------------
# RadCliQ BLEU-2 against NLTK
# ---------------------------------------------------------------------------------------


def test_radcliq_tokenization():
    text = "Heart size normal.No  effusion,\nleft-sided (stable)."
    assert radcliq_tokenize(text) == [
        "heart",
        "size",
        "normal",
        ".no",
        "effusion,\nleft-sided",
        "(stable)",
        ".",
    ]


def test_bleu2_radcliq_matches_nltk():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    smoothing = nltk_bleu.SmoothingFunction().method1
    pairs = [*_example_pairs(), *HAND_PAIRS]
    rng = random.Random(1)
    words = ["no", "the", "heart", "is", "normal", "effusion", ".", "left", "right", "small"]
    for _ in range(300):  # short and degenerate texts, where smoothing and BP matter
        pairs.append(
            (
                " ".join(rng.choices(words, k=rng.randint(0, 6))),
                " ".join(rng.choices(words, k=rng.randint(0, 6))),
            )
        )
    refs, cands = [list(x) for x in zip(*pairs)]
    ours = bleu2_radcliq(refs, cands)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = [
            nltk_bleu.sentence_bleu(
                [radcliq_tokenize(r)],
                radcliq_tokenize(c),
                weights=(1 / 2, 1 / 2),
                smoothing_function=smoothing,
            )
            for r, c in zip(refs, cands)
        ]
    np.testing.assert_allclose(ours, want, atol=1e-9, rtol=0)
    res = RadCliQBleu2().compute(refs, cands)
    assert res.aggregate == pytest.approx(float(np.mean(want)), abs=1e-9)
    assert res.settings["weights"] == [0.5, 0.5]


# ---------------------------------------------------------------------------------------
# METEOR 1.5 (the jar)
# ---------------------------------------------------------------------------------------


def test_meteor_check_names_what_is_missing(monkeypatch):
    from radixpert.evaluate.lexical import meteor

    m = meteor.Meteor15()
    monkeypatch.setattr(meteor.shutil, "which", lambda name: None)
    reason = m.check()
    assert reason and ("Java" in reason or "pycocoevalcap" in reason)
    monkeypatch.setattr(meteor, "meteor_jar", lambda: None)
    reason = m.check()
    assert reason and ("meteor-1.5.jar" in reason or "pycocoevalcap" in reason)


@pytest.mark.slow
@needs_java
def test_meteor_matches_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.meteor.meteor import Meteor

    from radixpert.evaluate.lexical.meteor import Meteor15

    pairs = [*HAND_PAIRS, *_example_pairs()[:30]]
    refs, cands = [list(x) for x in zip(*pairs)]
    ours = Meteor15().compute(refs, cands)
    joined_r = [" ".join(t) for t in tok.tokenize(refs, "basic")]
    joined_c = [" ".join(t) for t in tok.tokenize(cands, "basic")]
    scorer = Meteor()
    try:
        agg, per_sample = scorer.compute_score(
            {i: [r] for i, r in enumerate(joined_r)}, {i: [c] for i, c in enumerate(joined_c)}
        )
    finally:
        del scorer
    assert ours.aggregate == pytest.approx(agg, abs=1e-12)
    np.testing.assert_allclose(ours.per_sample, per_sample, atol=1e-12, rtol=0)
    assert ours.per_sample[4] == 0.0  # the empty candidate
    assert ours.per_sample[6] == pytest.approx(1.0)  # the identical pair
    # The corpus score is not the mean; the bootstrap hook reproduces it on the identity.
    idx = np.arange(len(refs))
    assert ours.corpus_fn(idx) == pytest.approx(ours.aggregate, abs=1e-12)
    assert ours.versions["pycocoevalcap"] == "1.2"
    assert ours.settings["command"].endswith("-l en -norm")


def _shipped_example() -> tuple[list[str], list[str]]:
    """The shipped example: IU X-ray findings + impression and a model's reports."""
    from radixpert.evaluate.io import pair_reports, read_reports

    pairs = pair_reports(
        read_reports(EXAMPLES / "references.json", role="references"),
        read_reports(EXAMPLES / "candidates.json", role="candidates"),
    )
    return pairs.references, pairs.candidates


@pytest.mark.parametrize(
    ("name", "rouge_type", "first_three", "mean"),
    [
        ("rouge-1", "rouge1", (0.513514, 0.185185, 0.289474), 0.436043),
        ("rouge-2", "rouge2", (0.222222, 0.038462, 0.053333), 0.182854),
        ("rouge-l-radeval", "rougeL", (0.378378, 0.185185, 0.171053), 0.317866),
    ],
)
def test_rouge_radeval_equals_rouge_score(name, rouge_type, first_three, mean):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    refs, cands = _shipped_example()
    res = registry.create(name, tokenizer="ptb").compute(refs, cands)  # tokenizer: ignored
    # RadEval's RougeMetric: RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True),
    # score(ref, hyp).fmeasure per pair, averaged.
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(r, c)[rouge_type].fmeasure for r, c in zip(refs, cands)]
    assert res.name == name and len(res.per_sample) == len(refs) == 100
    assert res.per_sample == direct
    assert res.aggregate == pytest.approx(float(np.mean(direct)), abs=1e-15)
    assert res.per_sample[:3] == pytest.approx(first_three, abs=5e-7)
    assert res.aggregate == pytest.approx(mean, abs=5e-7)
    assert res.settings["use_stemmer"] is True and res.settings["beta"] == 1.0
    assert res.bounds == (0.0, 1.0)
    assert res.versions["rouge-score"] == "0.1.2"


def test_rouge_radeval_differs_from_pycocoevalcap_rouge_l():
    pytest.importorskip("rouge_score")
    # RadEval stems ("effusions" = "effusion") and weighs P and R equally (beta 1);
    # pycocoevalcap does not stem and weighs recall more (beta 1.2).
    refs, cands = ["Small bilateral pleural effusions."], ["small effusion"]
    radeval = registry.create("rouge-l-radeval").compute(refs, cands)
    coco = RougeL().compute(refs, cands)
    assert radeval.per_sample[0] == pytest.approx(2 / 3)  # LCS 2: P 1, R 1/2
    b2 = 1.2**2  # LCS 1 ("small"): P 1/2, R 1/4
    assert coco.per_sample[0] == pytest.approx((1 + b2) * 0.5 * 0.25 / (0.25 + b2 * 0.5))
    assert registry.REGISTRY["rouge-l-radeval"].variant_of == "rouge-l"


def test_rouge_radeval_empty_and_unavailable(monkeypatch):
    pytest.importorskip("rouge_score")
    res = registry.create("rouge-1").compute(["No effusion.", "Edema."], ["", "edema"])
    assert res.per_sample == [0.0, 1.0]
    import radixpert._optional as optional

    monkeypatch.setattr(optional, "missing", lambda *m: list(m))
    reason = registry.create("rouge-2").check()
    assert reason and "rouge-score==0.1.2" in reason and "radixpert[coco]" in reason
