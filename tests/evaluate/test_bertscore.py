"""BERTScore on a tiny random distilroberta-base saved to disk and loaded by the real code.

Parity with the bert-score package, the settings of ReXrank/RadCliQ (layer 5, baseline,
idf), pair-level caching, batch independence and the missing-weights message.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest

from radixpert import weights
from radixpert.evaluate import registry
from radixpert.evaluate.semantic import bertscore as bs
from tests.evaluate.tiny_models import build_tiny_distilroberta

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("bert_score")

REFS = [
    "No acute cardiopulmonary process.",
    "There is a small  left pleural effusion.",
    "Heart size is normal. Lungs are clear.",
    "Mild cardiomegaly with pulmonary edema.",
]
CANDS = [
    "No acute process.",
    "Small left effusion.",
    "Heart size is normal. Lungs are clear.",
    "Right lower lobe consolidation concerning for pneumonia.",
]
B_F = 0.8473319  # bert-score's baseline F of distilroberta-base, layer 5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_distilroberta(tmp_path_factory.mktemp("distilroberta-base"))


@pytest.fixture(scope="module")
def package_dir(model_dir, tmp_path_factory):
    """The same model with a tokenizer_config.json that bert-score can use as it is.

    bert-score 0.3.13 asks the tokenizer for a prefix space and for model_max_length at
    encode time; transformers 5 honours neither unless they are set at load time.
    """
    folder = tmp_path_factory.mktemp("distilroberta-for-package")
    shutil.copytree(model_dir, folder, dirs_exist_ok=True)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"add_prefix_space": True, "model_max_length": 512})
    )
    return folder


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIXPERT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _package_score(folder, refs, cands, **kw):
    import bert_score

    p, r, f = bert_score.score(
        cands,
        refs,
        model_type=str(folder),
        num_layers=5,
        lang="en",
        rescale_with_baseline=True,
        baseline_path=str(bs.baseline_file()),
        device="cpu",
        **kw,
    )
    return p.tolist(), r.tolist(), f.tolist()


@pytest.mark.slow
def test_equals_bert_score_package(model_dir, package_dir, fresh_home):
    metric = bs.BertScore(model_dir=model_dir, device="cpu")
    result = metric.compute(REFS, CANDS)
    refs = [bs.collapse_spaces(r) for r in REFS]
    p, r, f = _package_score(package_dir, refs, CANDS)
    assert result.per_sample == pytest.approx(f, abs=1e-6)
    assert result.per_sample_detailed["precision"] == pytest.approx(p, abs=1e-6)
    assert result.per_sample_detailed["recall"] == pytest.approx(r, abs=1e-6)
    assert result.aggregate == pytest.approx(sum(f) / len(f), abs=1e-6)
    assert result.per_sample[2] == pytest.approx(1.0, abs=1e-6)  # identical texts
    assert result.name == "bertscore" and result.higher_is_better
    s = result.settings
    assert (s["model"], s["num_layers"], s["idf"], s["rescale_with_baseline"]) == (
        "distilroberta-base",
        5,
        False,
        True,
    )
    assert s["baseline_prf"][2] == pytest.approx(B_F)


@pytest.mark.slow
def test_idf_equals_bert_score_package(model_dir, package_dir, fresh_home):
    from bert_score.utils import get_idf_dict
    from transformers import AutoTokenizer

    result = registry.create("bertscore-idf", model_dir=model_dir, device="cpu").compute(
        REFS, CANDS
    )
    assert result.name == "bertscore-idf"
    refs = [bs.collapse_spaces(r) for r in REFS]
    _, _, f = _package_score(package_dir, refs, CANDS, idf=True, nthreads=0)
    assert result.per_sample == pytest.approx(f, abs=1e-6)
    # our idf table is the package's: document frequencies over the references
    tok = AutoTokenizer.from_pretrained(str(package_dir))
    theirs = get_idf_dict(refs, tok, nthreads=0)
    ours = bs.BertScore(idf=True, model_dir=model_dir)._idf_dict(tok, refs)
    assert {k: ours[k] for k in theirs} == pytest.approx(dict(theirs))
    assert ours[10**6] == pytest.approx(math.log(len(refs) + 1))  # a token in no reference


@pytest.mark.slow
def test_tokenizer_files_in_the_folder_do_not_change_scores(model_dir, tmp_path, fresh_home):
    # A folder may also hold tokenizer.json / tokenizer_config.json (without prefix space,
    # without a length limit): the loader must still give bert-score's tokenisation.
    from transformers import AutoTokenizer

    folder = tmp_path / "with-tokenizer-files"
    shutil.copytree(model_dir, folder)
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    assert (folder / "tokenizer.json").is_file()
    assert '"add_prefix_space": false' in (folder / "tokenizer_config.json").read_text()
    plain = bs.BertScore(model_dir=model_dir, cache=False).compute(REFS, CANDS)
    other = bs.BertScore(model_dir=folder, cache=False).compute(REFS, CANDS)
    assert other.per_sample == plain.per_sample


@pytest.mark.slow
def test_pair_score_does_not_depend_on_the_batch(model_dir, fresh_home):
    metric = bs.BertScore(model_dir=model_dir, batch_size=3, cache=False)
    together = metric.compute(REFS, CANDS).per_sample
    alone = [metric.compute([r], [c]).per_sample[0] for r, c in zip(REFS, CANDS)]
    reordered = metric.compute(REFS[::-1], CANDS[::-1]).per_sample[::-1]
    assert together == pytest.approx(alone, abs=1e-6)
    assert together == pytest.approx(reordered, abs=1e-6)


def test_pairs_are_cached_with_idf_off_only(model_dir, fresh_home, monkeypatch):
    first = bs.BertScore(model_dir=model_dir).compute(REFS, CANDS)
    assert list((fresh_home / "cache" / "metrics").glob("bertscore.sqlite"))

    def fail(*a, **k):
        raise AssertionError("scored again")

    monkeypatch.setattr(bs.BertScore, "_score_pairs", fail)
    second = bs.BertScore(model_dir=model_dir).compute(REFS, CANDS)
    assert second.per_sample == first.per_sample
    assert second.per_sample_detailed == first.per_sample_detailed
    with pytest.raises(AssertionError, match="scored again"):
        bs.BertScore(model_dir=model_dir, idf=True).compute(REFS, CANDS)
    with pytest.raises(AssertionError, match="scored again"):
        bs.BertScore(model_dir=model_dir, cache=False).compute(REFS, CANDS)


def test_spaces_collapsed_empty_and_long_texts(model_dir, fresh_home):
    metric = bs.BertScore(model_dir=model_dir, cache=False)
    a, b, empty, long = metric.compute(
        ["Heart   size is normal.", "Heart size is normal.", "No effusion.", "edema " * 700],
        ["Lungs  are clear.", "Lungs are clear.", "", "edema " * 600],
    ).per_sample
    assert a == b
    # as bert-score: an empty text scores raw 0, rescaled (0 - b) / (1 - b)
    assert empty == pytest.approx(-B_F / (1 - B_F), abs=1e-5)
    assert math.isfinite(long)  # cut to 512 tokens, within the 514 positions


def test_missing_weights_name_files_and_pull_command(tmp_path, fresh_home, monkeypatch):
    metric = bs.BertScore(model_dir=tmp_path / "nowhere")
    reason = metric.check()
    assert "config.json" in reason and "vocab.json" in reason and "merges.txt" in reason
    with pytest.raises(weights.WeightsMissing) as err:
        metric.compute(["a"], ["b"])
    msg = str(err.value)
    assert "radixpert weights pull distilroberta-base" in msg
    assert "model.safetensors|pytorch_model.bin" in msg
    # the default folder is looked up under RADIXPERT_HOME
    assert str(fresh_home / "models" / "distilroberta-base") in bs.BertScore().check()


@pytest.mark.slow
def test_weights_folder_from_environment(model_dir, fresh_home, monkeypatch):
    monkeypatch.setenv("RADIXPERT_WEIGHTS_DISTILROBERTA_BASE", str(model_dir))
    metric = registry.create("bertscore", device="cpu")
    assert metric.check() is None
    result = metric.compute(REFS[:1], CANDS[:1])
    direct = bs.BertScore(model_dir=model_dir, cache=False).compute(REFS[:1], CANDS[:1])
    assert result.per_sample == pytest.approx(direct.per_sample, abs=1e-7)
    with pytest.raises(ValueError, match="2 references but 1 candidates"):
        metric.compute(REFS[:2], CANDS[:1])


@pytest.mark.slow
def test_idf_from_one_reference_degenerates_as_documented(model_dir, fresh_home):
    # With one reference every token it holds gets idf log(2/2) = 0: an exact match has
    # all-zero weights, precision and recall 0/0 and F1 0, i.e. about -5.55 rescaled.
    text = "Heart size is normal."
    result = bs.BertScore(idf=True, model_dir=model_dir).compute([text], [text])
    assert result.per_sample[0] == pytest.approx(-B_F / (1 - B_F), abs=1e-5)
    assert math.isnan(result.per_sample_detailed["precision"][0])
    # idf off scores the same pair 1
    assert bs.BertScore(model_dir=model_dir).compute([text], [text]).per_sample[0] == (
        pytest.approx(1.0, abs=1e-6)
    )
