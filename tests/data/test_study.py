"""Study records: validation errors name the field; JSONL and Parquet round trips are lossless."""

from __future__ import annotations

import json

import pytest

from radixpert.data.study import Box, Image, Study, read_studies, write_studies
from radixpert.errors import StudyError
from radixpert.vocab import OBSERVATIONS


def sample(i: int = 0, labelled: bool = True) -> Study:
    labels = {o: None for o in OBSERVATIONS}
    labels.update({"Cardiomegaly": 1, "Pleural Effusion": -1, "Pneumothorax": 0})
    return Study(
        id=f"s{i}",
        dataset="mimic-cxr",
        split="train",
        patient_id=f"p{i // 2}",
        images=[Image("files/p10/p1/s5/a.jpg", "PA"), Image("files/p10/p1/s5/b.jpg", "LATERAL")],
        indication="___-year-old man with dyspnea.",
        findings="Heart is enlarged. Possible small left effusion. Ünïcode ✓",
        impression="Cardiomegaly.",
        labels=labels if labelled else {},
        boxes=[Box("Cardiomegaly", 0.3, 0.4, 0.7, 0.8, phrase="enlarged heart", image=0)],
        extra={"StudyDate": "21800101", "nested": {"a": [1, 2]}},
    )


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_is_lossless(tmp_path, suffix):
    studies = [sample(i, labelled=i % 2 == 0) for i in range(5)]
    studies[3].report_source = "synthesised-from-labels"
    path = tmp_path / f"studies{suffix}"
    assert write_studies(studies, path) == 5
    back = list(read_studies(path))
    assert [s.to_dict() for s in back] == [s.to_dict() for s in studies]


def test_validation_names_the_field(tmp_path):
    with pytest.raises(StudyError, match=r"boxes\[0\]: box field 'x2' = 1.5 is not in \[0, 1\]"):
        Study("a", "d", boxes=[Box("x", 0.1, 0.1, 1.5, 0.2)]).validate()
    with pytest.raises(StudyError, match=r"labels\['Edema'\] = 2"):
        Study("a", "d", labels={o: (2 if o == "Edema" else None) for o in OBSERVATIONS}).validate()
    with pytest.raises(StudyError, match="labels must hold all 14 observations"):
        Study("a", "d", labels={"Edema": 1}).validate()
    with pytest.raises(StudyError, match=r"boxes\[0\].image = 2 but the study has 1 image"):
        Study("a", "d", images=[Image("x.png")], boxes=[Box("x", 0, 0, 1, 1, image=2)]).validate()
    with pytest.raises(StudyError, match="report_source"):
        Study("a", "d", report_source="made-up").validate()


def test_bad_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    good = json.dumps(sample().to_dict())
    p.write_text(good + "\n" + '{"id": "x"}\n')
    with pytest.raises(StudyError, match=r"bad\.jsonl: line 2: missing field 'dataset'"):
        list(read_studies(p))
    p.write_text(good + "\n{oops\n")
    with pytest.raises(StudyError, match=r"bad\.jsonl: line 2: not valid JSON"):
        list(read_studies(p))
    p.write_text('{"id": "x", "dataset": "d", "colour": "red"}\n')
    with pytest.raises(StudyError, match=r"line 1: unknown field\(s\) colour"):
        list(read_studies(p))


def test_failed_write_leaves_no_file(tmp_path):
    bad = Study("a", "d", boxes=[Box("x", 0.5, 0.5, 0.2, 0.9)])
    with pytest.raises(StudyError):
        write_studies([sample(), bad], tmp_path / "out.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_parquet_streams_in_row_groups(tmp_path):
    import pyarrow.parquet as pq

    studies = [sample(i) for i in range(7)]
    path = tmp_path / "s.parquet"
    assert write_studies(iter(studies), path, row_group=3) == 7
    assert pq.ParquetFile(path).num_row_groups == 3
    assert [s.to_dict() for s in read_studies(path)] == [s.to_dict() for s in studies]
    assert write_studies([], tmp_path / "empty.parquet") == 0
    assert list(read_studies(tmp_path / "empty.parquet")) == []
