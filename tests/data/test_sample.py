"""Stratified subsets (`radixpert data sample`): exact sizes, balance, seeds, the CLI."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from radixpert.cli import main
from radixpert.data.sample import NO_LABEL, sample_studies
from radixpert.data.study import Study, read_studies, write_studies
from radixpert.errors import UsageError
from radixpert.vocab import OBSERVATIONS


def _study(i: int, modality: str = "CXR", positives: tuple[str, ...] = (), **extra) -> Study:
    labels = {o: (1 if o in positives else 0) for o in OBSERVATIONS}
    return Study(id=f"s{i}", dataset="x", modality=modality, labels=labels, extra=extra,
                 findings="f.")  # fmt: skip


def _roco_like() -> list[Study]:
    # 700 CT, 200 X-ray, 60 MRI, 30 ultrasound, 10 PET: a skew like ROCO's.
    sizes = {"CT": 700, "CXR": 200, "MR": 60, "US": 30, "PT": 10}
    out, i = [], 0
    for modality, k in sizes.items():
        for _ in range(k):
            out.append(_study(i, modality))
            i += 1
    return out


def test_modality_shares_are_equal_and_small_modalities_give_all_they_have():
    subset, report = sample_studies(_roco_like(), 200, "modality", seed=0)
    assert len(subset) == 200
    # 200 / 5 = 40 each; PET (10) and US (30) give all; their 40 left go to the other three.
    assert report.drawn == Counter({"PT": 10, "US": 30, "CT": 54, "CXR": 53, "MR": 53})
    assert Counter(s.modality for s in subset) == report.drawn
    assert [s.id for s in subset] == sorted((s.id for s in subset), key=lambda x: int(x[1:]))


def test_the_same_seed_gives_the_same_subset_and_another_seed_another():
    studies = _roco_like()
    a = [s.id for s in sample_studies(studies, 100, "modality", seed=3)[0]]
    b = [s.id for s in sample_studies(studies, 100, "modality", seed=3)[0]]
    c = [s.id for s in sample_studies(studies, 100, "modality", seed=4)[0]]
    assert a == b and a != c


def test_labels_balance_rare_findings_against_common_ones():
    studies = []
    for i in range(600):
        studies.append(_study(i, positives=("Pleural Effusion",)))
    for i in range(600, 640):
        studies.append(_study(i, positives=("Pneumothorax",)))
    for i in range(640, 660):
        studies.append(_study(i, positives=("Pneumothorax", "Pleural Effusion")))
    for i in range(660, 1000):
        studies.append(_study(i, positives=("No Finding",)))
    subset, report = sample_studies(studies, 150, "labels", seed=0)
    assert len(subset) == 150
    # Pneumothorax (60 of 1000 studies) is drawn as often as the common labels: 150 studies,
    # 20 of them carrying two labels, share out as about 56 per label.
    drawn = [report.drawn[k] for k in ("No Finding", "Pleural Effusion", "Pneumothorax")]
    assert max(drawn) - min(drawn) <= 2 and min(drawn) >= 54, report.drawn
    # A uniform draw of the same size would hold about 9 pneumothorax studies.
    uniform, _ = sample_studies(studies, 150, None, seed=0)
    assert sum(1 for s in uniform if s.labels["Pneumothorax"] == 1) < 25


def test_labels_from_an_extra_field_and_studies_without_labels():
    studies = [_study(i, padchest_labels=["normal"]) for i in range(50)]
    studies += [_study(50 + i, padchest_labels=["cardiomegaly"]) for i in range(5)]
    studies += [_study(55 + i, padchest_labels=[]) for i in range(5)]
    _, report = sample_studies(studies, 15, "labels", seed=1, label_field="padchest_labels")
    assert report.drawn == Counter({"cardiomegaly": 5, NO_LABEL: 5, "normal": 5})
    with pytest.raises(UsageError, match="extra\\['nothing'\\]"):
        sample_studies(studies, 5, "labels", label_field="nothing")


def test_asking_for_more_than_there_is_keeps_all_and_bad_n_is_refused():
    studies = _roco_like()[:20]
    subset, report = sample_studies(studies, 50, "modality")
    assert len(subset) == 20 and report.n == 20
    with pytest.raises(UsageError, match="--n 0"):
        sample_studies(studies, 0)


def test_cli_writes_the_subset_and_its_counts(tmp_path, capsys):
    src = tmp_path / "roco.jsonl"
    studies = _roco_like()
    for s in studies:
        s.split = "train" if int(s.id[1:]) % 10 else "test"
    write_studies(studies, src)
    out = tmp_path / "sub.jsonl"
    args = ["data", "sample", str(src), "-o", str(out), "--n", "50", "--stratify", "modality",
            "--seed", "2", "--split", "train"]  # fmt: skip
    assert main(args) == 0
    got = list(read_studies(out))
    assert len(got) == 50 and all(s.split == "train" for s in got)
    stats = json.loads((tmp_path / "sub.sample.json").read_text())
    assert stats["n"] == 50 and stats["seed"] == 2 and stats["stratify"] == "modality"
    assert sum(stats["drawn"].values()) == 50
    printed = capsys.readouterr().out
    assert "50 of 900 studies" in printed and "PT" in printed
