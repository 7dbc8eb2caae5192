"""RadGraph-F1: the set arithmetic on hand-made annotations, and the whole path on a tiny model.

The tiny model is a random-weight DyGIE++ of the radgraph package's own classes (BERT with
hidden size 16 as the embedder), saved as a `radgraph.tar.gz` laid out like the released
archives (config.json, weights.th, vocabulary/) and loaded by `radgraph.RadGraph` through
`RadGraphF1`'s extraction, backbone and tokenizer handling. Its annotations are noise; the
tests check plumbing, caching and agreement with the package's own `F1RadGraph`.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("radgraph")
pytest.importorskip("transformers")

from radixpert.errors import MetricUnavailable
from radixpert.evaluate import registry
from radixpert.evaluate.clinical import radgraph as rg
from radixpert.weights import WeightsMissing
from tests.evaluate.tiny_models import (
    BACKBONE_ID,
    build_tiny_archive,
    build_tiny_backbone,
)


def ent(tokens: str, label: str, *relations: tuple[str, str]) -> dict:
    return {"tokens": tokens, "label": label, "relations": [list(r) for r in relations]}


REF = {
    "entities": {
        "1": ent("pleural", "ANAT-DP"),
        "2": ent("effusion", "OBS-DP", ("located_at", "1")),
        "3": ent("left", "ANAT-DP", ("modify", "1")),
    }
}
CAND = {
    "entities": {
        "1": ent("pleural", "ANAT-DP"),
        "2": ent("effusion", "OBS-DP", ("located_at", "1")),
        "3": ent("right", "ANAT-DP", ("modify", "1")),
        "4": ent("edema", "OBS-DA"),
    }
}
CAND_WRONG_RELATION = {
    "entities": {
        "1": ent("pleural", "ANAT-DP"),
        "2": ent("effusion", "OBS-DP", ("modify", "1")),
        "3": ent("right", "ANAT-DP", ("modify", "1")),
        "4": ent("edema", "OBS-DA"),
    }
}
EMPTY = {"text": "", "entities": {}}


# -- set arithmetic ------------------------------------------------------------------------


def test_entity_and_relation_sets():
    ents, rels = rg.entity_relation_sets(REF)
    assert ents == {("pleural", "ANAT-DP"), ("effusion", "OBS-DP"), ("left", "ANAT-DP")}
    assert rels == {
        (("effusion", "OBS-DP"), ("pleural", "ANAT-DP"), "located_at"),
        (("left", "ANAT-DP"), ("pleural", "ANAT-DP"), "modify"),
    }


def test_combined_f1_pinned():
    # entities: 2 shared of 3 (reference) and 4 (candidate): P 1/2, R 2/3, F1 4/7.
    # relations: 1 shared of 2 and 2: F1 1/2. combined: (4/7 + 1/2) / 2 = 15/28.
    e, r, c = rg.combined_f1(REF, CAND)
    assert e == pytest.approx(4 / 7)
    assert r == pytest.approx(0.5)
    assert c == pytest.approx(15 / 28)
    e, r, c = rg.combined_f1(REF, CAND_WRONG_RELATION)
    assert (e, r, c) == pytest.approx((4 / 7, 0.0, 2 / 7))


def test_empty_sets_score_zero_as_in_the_reference():
    assert rg.set_f1(set(), set()) == 0.0
    assert rg.set_f1({1}, set()) == 0.0
    assert rg.set_f1(set(), {1}) == 0.0
    assert rg.combined_f1(EMPTY, EMPTY) == (0.0, 0.0, 0.0)
    assert rg.combined_f1(REF, EMPTY) == (0.0, 0.0, 0.0)
    # Identical entities, no relation on either side: relation F1 is 0, not 1.
    no_rel = {"entities": {"1": ent("heart", "ANAT-DP"), "2": ent("normal", "OBS-DP")}}
    assert rg.combined_f1(no_rel, no_rel) == (1.0, 0.0, 0.5)
    assert rg.combined_f1(REF, REF) == (1.0, 1.0, 1.0)


def test_package_rewards_pinned():
    # partial: entities with a relation count as (tokens, label, True);
    # complete: one item per relation (tokens, label, type, target tokens), lower-cased.
    assert rg.rewards(REF, CAND) == pytest.approx((4 / 7, 4 / 7, 4 / 7))
    assert rg.rewards(REF, CAND_WRONG_RELATION) == pytest.approx((4 / 7, 4 / 7, 2 / 7))
    assert rg.rewards(REF, EMPTY) == (0.0, 0.0, 0.0)
    assert rg.rewards(EMPTY, EMPTY) == (0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("radgraph")
    backbone = build_tiny_backbone(root / "backbone")
    build_tiny_archive(root / "radgraph" / "radgraph.tar.gz", backbone, "radgraph")
    build_tiny_archive(root / "radgraph-xl" / "radgraph-xl.tar.gz", backbone, "radgraph-xl", 1)
    return {"root": root, "backbone": backbone}


REFS = [
    "No acute cardiopulmonary process.",
    "Small left pleural effusion. Lungs are clear.",
    "No acute cardiopulmonary process.",
    "",
    "Heart size is normal.",
]
CANDS = [
    "No acute cardiopulmonary process.",
    "Mild edema at the bases, right pleural effusion.",
    "Left lung opacity.",
    "There is a small effusion.",
    "   ",
]


def metric(tiny, **kw) -> rg.RadGraphF1:
    kw.setdefault("model_dir", tiny["root"] / "radgraph")
    return rg.RadGraphF1(backbone_dir=tiny["backbone"], device="cpu", **kw)


@pytest.mark.slow
def test_tiny_archive_end_to_end(tiny):
    m = metric(tiny, batch_size=2)
    res = m.compute(REFS, CANDS)
    assert res.name == "radgraph-f1"
    assert len(res.per_sample) == len(REFS)
    assert all(0.0 <= x <= 1.0 for x in res.per_sample)
    # Empty reference (pair 3) and all-whitespace candidate (pair 4): counted, 0.
    assert res.per_sample[3] == 0.0 and res.per_sample[4] == 0.0
    assert res.detailed["n_empty_references"] == 1
    assert res.detailed["n_empty_candidates"] == 1
    assert res.detailed["n_annotation_failures"] == 0
    assert res.aggregate == pytest.approx(sum(res.per_sample) / len(REFS))
    # Scores are the set arithmetic on the annotations the model produced.
    ann, _ = m.annotate(REFS + CANDS)
    assert ann[REFS[0]]["entities"], "the random model should tag some spans"
    for i, (r, c) in enumerate(zip(REFS, CANDS)):
        e, rel, comb = rg.combined_f1(ann[r], ann[c])
        assert res.per_sample[i] == pytest.approx(comb)
        assert res.per_sample_detailed["entity_f1"][i] == pytest.approx(e)
        assert res.per_sample_detailed["relation_f1"][i] == pytest.approx(rel)
    # Identical reports: entity F1 1; simple reward 1.
    assert res.per_sample_detailed["entity_f1"][0] == 1.0
    assert res.per_sample_detailed["simple"][0] == 1.0
    for key in ("entity_f1", "relation_f1", "reward_simple", "reward_partial", "reward_complete"):
        assert key in res.detailed
    s = res.settings
    assert s["model_type"] == "radgraph" and s["reward_level"] == "combined"
    assert s["archive"] == "radgraph.tar.gz" and len(s["archive_sha256"]) == 64
    assert s["backbone"] == BACKBONE_ID
    assert res.versions["radgraph"] == "0.1.18"


@pytest.mark.slow
def test_agrees_with_the_package_f1radgraph(tiny):
    """Our rewards equal radgraph.F1RadGraph's on the same extracted model."""
    import contextlib
    import io

    from radgraph import F1RadGraph

    m = metric(tiny, cache=False)
    res = m.compute(REFS, CANDS)
    root = m._prepare()["root"]
    with contextlib.redirect_stdout(io.StringIO()):
        pkg = F1RadGraph(
            reward_level="all", model_type="radgraph", model_cache_dir=str(root), cuda=-1
        )
        # The package's own emptiness test is len(text) == 0; give it "" where we see blanks.
        _, (simple, partial, complete), _, _ = pkg(
            refs=[r if r.strip() else "" for r in REFS],
            hyps=[c if c.strip() else "" for c in CANDS],
        )
    assert res.per_sample_detailed["simple"] == pytest.approx(simple)
    assert res.per_sample_detailed["partial"] == pytest.approx(partial)
    assert res.per_sample_detailed["complete"] == pytest.approx(complete)


def test_cache_and_single_extraction(tiny):
    texts = ["Right lung base opacity.", "No effusion."]
    first = metric(tiny).compute(texts, texts[::-1])
    assert first.detailed["n_texts_annotated"] == 2
    extracted = tiny["root"] / "radgraph" / "extracted" / "radgraph"
    marker = (extracted / rg._MARKER).stat().st_mtime_ns
    again = metric(tiny)
    second = again.compute(texts, texts[::-1])
    assert second.detailed["n_texts_annotated"] == 0
    assert second.detailed["n_texts_cached"] == 2
    assert again._model is None, "everything came from the cache: no model was built"
    assert second.per_sample == first.per_sample
    assert (extracted / rg._MARKER).stat().st_mtime_ns == marker
    # The extracted config points at the backbone actually used.
    config = json.loads((extracted / "config.json").read_text())
    assert config["model"]["embedder"]["token_embedders"]["bert"]["model_name"] == str(
        tiny["backbone"]
    )


@pytest.mark.slow
def test_xl_partial_variant_through_the_registry(tiny):
    m = registry.create(
        "radgraph-xl-partial",
        model_dir=tiny["root"] / "radgraph-xl",
        backbone_dir=tiny["backbone"],
        device="cpu",
        unknown_option=1,
    )
    assert m.name == "radgraph-xl-partial"
    res = m.compute(REFS[:3], CANDS[:3])
    assert res.name == "radgraph-xl-partial"
    assert res.settings["model_type"] == "radgraph-xl"
    assert res.settings["reward_level"] == "partial"
    # The ranked series is the partial reward; the others come alongside.
    assert res.aggregate == pytest.approx(res.detailed["reward_partial"])
    assert "partial" not in res.per_sample_detailed
    assert {"combined", "simple", "complete"} <= set(res.per_sample_detailed)


def test_missing_weights_and_backbone(tiny, tmp_path):
    m = rg.RadGraphF1(model_dir=tmp_path / "nothing")
    reason = m.check()
    assert "radgraph.tar.gz" in reason and "radixpert weights pull radgraph" in reason
    with pytest.raises(MetricUnavailable, match=r"radgraph\.tar\.gz"):
        m.compute(["a"], ["b"])
    # The archive is there but its backbone is nowhere to be found offline.
    no_backbone = rg.RadGraphF1(model_dir=tiny["root"] / "radgraph", device="cpu")
    with pytest.raises(WeightsMissing, match="BiomedBERT"):
        no_backbone.compute(["No effusion."], ["No effusion."])


def test_archive_with_legacy_bert_buffers_loads(tiny):
    folder = tiny["root"] / "legacy"
    build_tiny_archive(
        folder / "radgraph.tar.gz", tiny["backbone"], "radgraph", legacy_buffers=True
    )
    res = metric(tiny, model_dir=folder, cache=False).compute(REFS[:2], CANDS[:2])
    assert len(res.per_sample) == 2
    marker = json.loads((folder / "extracted" / "radgraph" / rg._MARKER).read_text())
    assert marker["dropped_buffers"] == [
        "_embedder.token_embedder_bert.transformer_model.embeddings.position_ids"
    ]


def test_bad_arguments():
    with pytest.raises(ValueError):
        rg.RadGraphF1(model_type="echograph")
    with pytest.raises(ValueError):
        rg.RadGraphF1(reward_level="all")
