"""Tests for radixpert.data.splits: patient-level assignment, official splits, leakage check."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixpert.data.splits import (
    SPLITS,
    any_positive,
    assign_splits,
    check_no_leakage,
    normalise_split,
)
from radixpert.data.study import Image, Study
from radixpert.errors import SplitError
from radixpert.vocab import OBSERVATIONS


def make_studies(
    n_studies: int, n_patients: int, seed: int = 0, positive_rate: float = 0.0
) -> list[Study]:
    """Synthetic studies: patients get 1+ studies, uneven; optional positive labels."""
    rng = random.Random(seed)
    out = []
    for i in range(n_studies):
        pid = f"p{rng.randrange(n_patients)}" if i >= n_patients else f"p{i}"
        labels: dict[str, int | None] = {}
        if positive_rate:
            labels = dict.fromkeys(OBSERVATIONS, 0)
            labels["Pneumonia"] = 1 if rng.random() < positive_rate else 0
        out.append(Study(id=f"s{i}", dataset="synth", patient_id=pid, labels=labels))
    return out


def splits_of_patients(studies: list[Study]) -> dict[tuple[str, str], set[str]]:
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in studies:
        seen[(s.dataset, s.patient_id)].add(s.split)
    return seen


@settings(max_examples=100, deadline=None)
@given(
    structure=st.lists(
        st.tuples(
            st.integers(0, 15),  # patient
            st.sampled_from(["", "", "", "train", "val", "test"]),  # official split
            st.booleans(),  # positive
            st.sampled_from(["a", "b"]),  # dataset
        ),
        min_size=1,
        max_size=60,
    ),
    seed=st.integers(0, 2**16),
    stratify=st.booleans(),
)
def test_no_patient_in_two_splits(structure, seed, stratify):
    # The publisher's splits are themselves leak-free here: one official split per patient.
    official_of = {}
    studies = []
    for i, (p, split, positive, ds) in enumerate(structure):
        official = official_of.setdefault((ds, p), split) if split else ""
        labels = dict.fromkeys(OBSERVATIONS, 0)
        labels["Edema"] = int(positive)
        studies.append(
            Study(id=f"s{i}", dataset=ds, patient_id=f"p{p}", split=official, labels=labels)
        )
    out = assign_splits(studies, seed=seed, stratify_by=any_positive if stratify else None)
    assert [s.id for s in out] == [s.id for s in studies]
    assert all(s.split in SPLITS for s in out)
    assert all(len(v) == 1 for v in splits_of_patients(out).values())
    check_no_leakage(out)
    for before, after in zip(studies, out):
        if before.split:
            assert after.split == normalise_split(before.split)


def test_deterministic_by_seed_and_input_order():
    studies = make_studies(500, 200)
    a = [s.split for s in assign_splits(studies, seed=3)]
    assert a == [s.split for s in assign_splits(studies, seed=3)]
    assert a != [s.split for s in assign_splits(studies, seed=4)]
    rev = assign_splits(studies[::-1], seed=3)
    assert {s.id: s.split for s in rev} == {s.id: s.split for s in assign_splits(studies, seed=3)}


def test_inputs_not_modified():
    studies = make_studies(20, 10)
    assign_splits(studies)
    assert all(s.split == "" for s in studies)


@pytest.mark.slow
@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.7, 0.15, 0.15), (0.9, 0.1, 0.0)])
def test_fractions_within_tolerance_10000_studies(fractions):
    studies = make_studies(10_000, 3_000, seed=1)
    out = assign_splits(studies, fractions=fractions, seed=0)
    counts = Counter(s.split for s in out)
    for name, f in zip(SPLITS, fractions):
        assert abs(counts[name] / 10_000 - f) < 0.005, (name, counts)
    assert all(len(v) == 1 for v in splits_of_patients(out).values())


def test_official_splits_kept_and_normalised():
    studies = [
        Study(id="a", dataset="d", patient_id="p1", split="valid"),
        Study(id="b", dataset="d", patient_id="p1", split=""),  # follows p1's official split
        Study(id="c", dataset="d", patient_id="p2", split="TEST"),
        Study(id="d", dataset="d", patient_id="p3", split="training"),
        Study(id="e", dataset="d", patient_id="p4", split="val"),
    ]
    out = assign_splits(studies, fractions=(1.0, 0.0, 0.0))
    assert [s.split for s in out] == ["validate", "validate", "test", "train", "validate"]
    out = assign_splits(studies, fractions=(1.0, 0.0, 0.0), keep_official=False)
    assert [s.split for s in out] == ["train"] * 5


def test_patient_with_conflicting_official_splits_is_an_error():
    studies = [
        Study(id="a", dataset="d", patient_id="p1", split="train"),
        Study(id="b", dataset="d", patient_id="p1", split="test"),
        Study(id="c", dataset="d", patient_id="p1", split=""),
    ]
    with pytest.raises(SplitError, match=r"'p1'.*test, train.*'c'"):
        assign_splits(studies)


def _rate_deviation(studies: list[Study], out: list[Study]) -> float:
    """Largest gap between a split's positive rate and the overall rate."""
    overall = sum(any_positive(s) for s in studies) / len(studies)
    gaps = []
    for name in SPLITS:
        part = [s for s in out if s.split == name]
        gaps.append(abs(sum(any_positive(s) for s in part) / len(part) - overall))
    return max(gaps)


@pytest.mark.slow
def test_stratification_keeps_positive_rates_close():
    # Patients with several studies make labels and patient size correlate, as in real data.
    studies = make_studies(10_000, 6_000, seed=2, positive_rate=0.1)
    strat = [_rate_deviation(studies, assign_splits(studies, seed=k, stratify_by=any_positive))
             for k in range(4)]  # fmt: skip
    plain = [_rate_deviation(studies, assign_splits(studies, seed=k)) for k in range(4)]
    assert max(strat) < 0.006, strat
    assert sum(strat) < sum(plain), (strat, plain)
    # a label name means "that observation is positive"
    by_name = assign_splits(studies, seed=0, stratify_by="Pneumonia")
    expected = assign_splits(studies, seed=0, stratify_by=any_positive)
    assert [s.split for s in by_name] == [s.split for s in expected]


def test_missing_patient_id_names_the_study():
    studies = [Study(id="s1", dataset="d", patient_id="p1"), Study(id="lonely", dataset="d")]
    with pytest.raises(SplitError, match=r"'lonely'.*patient_fallback"):
        assign_splits(studies)
    out = assign_splits(studies, patient_fallback="study", fractions=(0.5, 0.5, 0.0))
    assert sorted(s.split for s in out) == ["train", "validate"]
    # a study with an official split needs no patient id
    assert assign_splits([Study(id="x", dataset="d", split="test")])[0].split == "test"


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1)])
def test_bad_fractions(fractions):
    with pytest.raises(SplitError, match="fractions"):
        assign_splits(make_studies(5, 5), fractions=fractions)


def test_unknown_split_name():
    with pytest.raises(SplitError, match="holdout"):
        assign_splits([Study(id="a", dataset="d", patient_id="p", split="holdout")])
    assert normalise_split(" Validation ") == "validate" and normalise_split("") == ""


def test_check_no_leakage_names_patients_and_splits():
    studies = [
        Study(id="a", dataset="d", patient_id="p1", split="train"),
        Study(id="b", dataset="d", patient_id="p1", split="val"),
        Study(id="c", dataset="d", patient_id="p1", split="train"),
        Study(id="e", dataset="d", patient_id="p2", split="validate"),
        Study(id="f", dataset="d", patient_id="p2", split="valid"),  # the same split
        Study(id="g", dataset="other", patient_id="p1", split="test"),  # another dataset
    ]
    leak = r"(?s)1 patient.*'p1' \(d\): train \(d 2\), validate \(d 1\)"
    with pytest.raises(SplitError, match=leak):
        check_no_leakage(studies)
    check_no_leakage(studies[3:])


def test_leakage_across_datasets_of_one_source():
    """MIMIC-CXR, MS-CXR, Chest ImaGenome and ReXrank's MIMIC test set share patients."""
    from radixpert.data.splits import avoided, leaks, patient_key, patient_splits

    mimic = [Study(id="s1", dataset="mimic-cxr", patient_id="10000032", split="train",
                   images=[Image("files/p10/p10000032/s1/abc-1.jpg")])]  # fmt: skip
    rexrank = [Study(id="s2", dataset="rexrank-mimic-cxr", patient_id="10000032", split="test")]
    chexpert = [Study(id="s3", dataset="chexpert", patient_id="10000032", split="test")]
    ms_cxr = [Study(id="s4", dataset="ms-cxr", patient_id="p10000032", split="")]
    assert patient_key(ms_cxr[0]) == patient_key(mimic[0]) == ("mimic-cxr", "10000032")
    found = leaks(mimic + rexrank + chexpert)
    assert [(leak.source, leak.patient_id) for leak in found] == [("mimic-cxr", "10000032")]
    assert found[0].describe() == (
        "patient '10000032' (mimic-cxr): train (mimic-cxr 1), test (rexrank-mimic-cxr 1)"
    )
    with pytest.raises(SplitError, match="rexrank-mimic-cxr"):
        check_no_leakage(mimic + rexrank)
    # A patient's split elsewhere fixes it here.
    placed = assign_splits(ms_cxr, seed=0, fixed=patient_splits(rexrank))
    assert placed[0].split == "test"
    # Excluded images (ImaGenome's gold standard) outside the test split are found by id.
    assert [(s.id, ids) for s, ids in avoided(mimic, {"abc-1"})] == [("s1", ["abc-1"])]
