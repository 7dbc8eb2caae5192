"""A user's labelled-image CSV mapped to the 14 observations, with template reports."""

from __future__ import annotations

import pytest

from radixpert.cli import main
from radixpert.data.readers import labelled_csv
from radixpert.data.study import read_studies
from radixpert.errors import ReaderError


def make(root):
    (root / "labels.csv").write_text(
        "Image,PatientID,Effusion,Mass,Nodule,Cardiomegaly\na/1.png,p1,1,,-1,0\na/2.png,p2,0,0,0,\n"
    )
    return root


def test_mapping_combines_and_synthesises(tmp_path):
    s1, s2 = labelled_csv.read(
        make(tmp_path), csv="labels.csv", path_column="Image", patient_column="PatientID",
        map="Effusion:Pleural Effusion;Mass:Lung Lesion;Nodule:Lung Lesion",
    )  # fmt: skip
    assert s1.labels["Pleural Effusion"] == 1 and s1.labels["Lung Lesion"] == -1
    assert s1.labels["Cardiomegaly"] == 0  # maps itself by name
    assert s1.labels["Edema"] is None
    assert s1.report_source == "synthesised-from-labels" and (s1.findings or s1.impression)
    assert s2.labels["Cardiomegaly"] is None and s2.patient_id == "p2"


def test_bad_map_and_value(tmp_path):
    make(tmp_path)
    with pytest.raises(ReaderError, match="not column:Observation"):
        list(labelled_csv.read(tmp_path, path_column="Image", map="Effusion:Wet lung"))
    (tmp_path / "labels.csv").write_text("Image,Effusion\nx.png,yes\n")
    with pytest.raises(ReaderError, match=r"line 2: column 'Effusion' = 'yes'"):
        list(labelled_csv.read(tmp_path, path_column="Image", map="Effusion:Pleural Effusion"))


def test_cli_options(tmp_path):
    make(tmp_path)
    out = tmp_path / "s.jsonl"
    assert (
        main(
            [
                "data",
                "prepare",
                "labelled-csv",
                "--root",
                str(tmp_path),
                "--out",
                str(out),
                "path_column=Image",
                "map=Effusion:Pleural Effusion",
                "--no-check-images",  # the CSV's images are not written here
            ]
        )
        == 0
    )
    assert len(list(read_studies(out))) == 2
