"""A user's labelled-image CSV mapped to the 14 observations, with template reports."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from radixpert.cli import main
from radixpert.data.readers import SkipLog, labelled_csv
from radixpert.data.study import Image, read_studies
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


NIH = Path(__file__).parent / "fixtures" / "labelled-csv" / "nih"
NIH_OPTIONS = {
    "csv": "Data_Entry_2017.csv",
    "path_column": "Image Index",
    "patient_column": "Patient ID",
    "view_column": "View Position",
    "labels_column": "Finding Labels",
    "image_folder": "images_*/images",
    "map": "Effusion:Pleural Effusion;Mass:Lung Lesion;Nodule:Lung Lesion",
    "dataset": "nih",
}


def _nih(tmp_path):
    """The real rows, with images in Kaggle's images_00N/images/ layout (tiny PNGs)."""
    from PIL import Image as PILImage

    shutil.copy(NIH / "Data_Entry_2017.csv", tmp_path)
    names = [
        line.split(",")[0] for line in (NIH / "Data_Entry_2017.csv").read_text().splitlines()[1:]
    ]
    for i, name in enumerate(names):
        folder = tmp_path / f"images_00{1 + i // 3}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        PILImage.new("L", (4, 4)).save(folder / name)
    return tmp_path


def test_nih_data_entry_with_pipe_joined_finding_labels(tmp_path):
    log = SkipLog()
    studies = {s.id: s for s in log.studies(labelled_csv.read(_nih(tmp_path), **NIH_OPTIONS))}
    assert len(studies) == 6
    s = studies["nih-00000001_002"]
    assert s.images == [Image("images_001/images/00000001_002.png", "PA")]
    assert s.patient_id == "1" and s.extra["findings"] == ["Cardiomegaly", "Effusion"]
    assert s.labels["Cardiomegaly"] == 1 and s.labels["Pleural Effusion"] == 1
    assert s.labels["Lung Lesion"] == 0  # Mass / Nodule not listed: the list is complete
    assert s.labels["No Finding"] is None
    # Only the observations the file's names feed are labelled; the others stay unknown.
    assert s.labels["Pneumothorax"] is None and s.labels["Support Devices"] is None
    normal = studies["nih-00000002_000"]
    assert normal.labels["No Finding"] == 1 and normal.labels["Cardiomegaly"] == 0
    assert studies["nih-00000003_003"].images[0].path == "images_002/images/00000003_003.png"
    assert studies["nih-00000003_003"].extra["findings"] == ["Hernia", "Infiltration"]
    assert log.counts == {("label", "finding name feeds no observation"): 3}  # Emphysema, ...


def test_nih_image_not_in_the_folders_is_counted(tmp_path):
    root = _nih(tmp_path)
    (root / "images_001" / "images" / "00000001_000.png").unlink()
    log = SkipLog()
    assert len(list(log.studies(labelled_csv.read(root, **NIH_OPTIONS)))) == 5
    assert log.counts[("study", "image not in image_folder")] == 1
    with pytest.raises(ReaderError, match="no folder matches image_folder='nope/\\*'"):
        list(labelled_csv.read(root, **{**NIH_OPTIONS, "image_folder": "nope/*"}))


def test_nih_through_the_cli_as_documented(tmp_path):
    root = _nih(tmp_path)
    out = tmp_path / "nih.jsonl"
    options = [f"{k}={v}" for k, v in NIH_OPTIONS.items()]  # dataset= is a reader option too
    assert main(["data", "prepare", "labelled-csv", "--root", str(root), "-o", str(out),
                 *options]) == 0  # fmt: skip
    assert {s.dataset for s in read_studies(out)} == {"nih"}
